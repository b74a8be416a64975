"""Boards in a git repository: publish to a local bare repository, retry on a concurrent push."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from diffeval.leaderboards import BoardError, publish, render, show
from diffeval.leaderboards.gitboard import is_git_board, with_git_board
from diffeval.leaderboards.store import publish_dir, read_submission
from diffeval.reports.schema import ReportError


def git(*args: str, cwd: Path) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout


@pytest.fixture
def bare(tmp_path) -> Path:
    repo = tmp_path / "board.git"
    subprocess.run(["git", "init", "--quiet", "--bare", "--initial-branch=main", str(repo)], check=True)
    return repo


def checkout(bare: Path, where: Path) -> Path:
    subprocess.run(["git", "clone", "--quiet", str(bare), str(where)], check=True)
    return where


def test_git_board_detection(tmp_path, bare):
    plain = tmp_path / "plain"
    plain.mkdir()
    assert is_git_board(bare) and is_git_board(f"file://{bare}") and is_git_board("git@host:org/board.git")
    assert is_git_board("https://example.org/board") and is_git_board(tmp_path / "not-yet.git")
    assert not is_git_board(plain) and not is_git_board(tmp_path / "new-board")


def test_publish_to_bare_repository_commits_and_pushes(tmp_path, bare, make_run):
    first = publish(make_run("a"), bare)
    second = publish(make_run("b", tuned="org/other"), f"file://{bare}")

    clone = checkout(bare, tmp_path / "check")
    assert sorted(json.loads((clone / "board.json").read_text())["entries"]) == sorted([first, second])
    assert (clone / "entries" / first / "report.json").is_file()
    assert "org/other" in (clone / "LEADERBOARD.md").read_text()
    tracked = git("ls-files", cwd=clone).split()
    assert ".lock" not in tracked and not any(t.startswith(".staging") for t in tracked)
    assert git("log", "--format=%s", cwd=clone).split("\n")[:2] == [f"publish {second}", f"publish {first}"]


def test_rejected_push_is_retried_on_top_of_the_other_publish(tmp_path, bare, make_run):
    """Another publisher pushes between our clone and our push: our push is rejected, we retry, both survive."""
    ours = read_submission(make_run("ours"))
    theirs = make_run("theirs", tuned="org/theirs")
    calls = []

    def change(clone: Path) -> str:
        if not calls:
            publish(theirs, bare)  # lands first, while our clone is stale
        calls.append(clone)
        return publish_dir(ours, clone)

    with_git_board(str(bare), change, f"publish {ours.entry_id}")
    assert len(calls) == 2  # applied, rejected, re-applied on the fresh remote state

    clone = checkout(bare, tmp_path / "check")
    entries = json.loads((clone / "board.json").read_text())["entries"]
    assert ours.entry_id in entries and any(e["tuned"] == "org/theirs" for e in entries.values())
    assert len(git("log", "--format=%H", cwd=clone).split()) == 2


def test_concurrent_publishers_to_one_bare_repository(tmp_path, bare, make_run):
    runs = [make_run(f"r{i}", tuned=f"org/tuned-{i}") for i in range(4)]
    start = time.time() + 2.0
    code = (
        "import sys, time; from diffeval.leaderboards import publish; "
        "time.sleep(max(0.0, float(sys.argv[3]) - time.time())); print(publish(sys.argv[1], sys.argv[2]))"
    )
    procs = [subprocess.Popen([sys.executable, "-c", code, str(r), str(bare), str(start)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              cwd=Path(__file__).parents[2]) for r in runs]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, [err for _, err in outs]

    clone = checkout(bare, tmp_path / "check")
    ids = sorted(out.strip() for out, _ in outs)
    assert sorted(json.loads((clone / "board.json").read_text())["entries"]) == ids
    assert sorted(p.name for p in (clone / "entries").iterdir()) == ids


def test_malformed_report_pushes_nothing(tmp_path, bare, make_run):
    publish(make_run("a"), bare)
    before = git("rev-parse", "main", cwd=bare)
    with pytest.raises(ReportError):
        publish(make_run("bad", report="{}"), bare)
    assert git("rev-parse", "main", cwd=bare) == before


def test_show_and_render_on_a_git_board(tmp_path, bare, make_run):
    publish(make_run("a"), bare)
    assert "org/base-1b-simpo" in show(bare)
    assert render(bare) == [Path("LEADERBOARD.md"), Path("index.html")]
    # views were already current: render made no commit
    assert len(git("log", "--format=%H", "main", cwd=bare).split()) == 1


def test_unreachable_repository_is_a_clear_error(tmp_path, make_run):
    with pytest.raises(BoardError, match="git clone"):
        publish(make_run("a"), tmp_path / "missing.git")
