"""Publishing to a board folder: layout, replacement with history, rejection without a trace, concurrency."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from diffeval.leaderboards import BoardError, publish
from diffeval.leaderboards.board import entry_id_for
from diffeval.reports.render import render_report
from diffeval.reports.schema import SCHEMA_VERSION, ReportError
from tests.leaderboards.conftest import PNG, build_report, snapshot
from tests.reports.conftest import write_run_dir


def test_publish_writes_entry_index_and_views(tmp_path, make_run):
    board = tmp_path / "board"
    entry_id = publish(make_run("a"), board)

    assert entry_id == entry_id_for("org/base-1b", "org/base-1b-simpo", None, ["ifeval_lite", "gsm_lite"],
                                    build_report()["run_config"])
    entry = board / "entries" / entry_id
    assert json.loads((entry / "report.json").read_text()) == build_report()
    assert (entry / "report.md").read_text().endswith("planted text\n")
    assert (entry / "figures" / "shifts.png").read_bytes() == PNG
    meta = json.loads((entry / "entry.json").read_text())
    assert meta["version"] == 1 and meta["source"] == "a"
    index = json.loads((board / "board.json").read_text())
    assert index["format_version"] == 1
    assert index["entries"][entry_id]["tuned"] == "org/base-1b-simpo"
    assert (board / "LEADERBOARD.md").is_file() and (board / "index.html").is_file()
    assert not (board / ".staging").exists() or not any((board / ".staging").iterdir())


def test_republish_replaces_entry_and_keeps_old_version_in_history(tmp_path, make_run):
    board = tmp_path / "board"
    first = publish(make_run("a", spearman=0.1), board)
    second = publish(make_run("a2", spearman=0.9), board)  # same models and tasks: same entry

    assert first == second
    current = json.loads((board / "entries" / first / "report.json").read_text())
    assert current["attribution"]["spearman"] == 0.9
    versions = sorted((board / "history" / first).iterdir())
    assert len(versions) == 1
    old = json.loads((versions[0] / "report.json").read_text())
    assert old["attribution"]["spearman"] == 0.1
    assert json.loads((versions[0] / "entry.json").read_text())["version"] == 1
    assert json.loads((board / "board.json").read_text())["entries"][first]["version"] == 2

    publish(make_run("a3", spearman=0.5), board)
    assert len(list((board / "history" / first).iterdir())) == 2
    assert len(list((board / "entries").iterdir())) == 1


def _nan_report() -> str:
    report = build_report()
    report["attribution"]["spearman"] = math.nan
    return json.dumps(report)  # writes NaN, which is not JSON


def _missing_key() -> dict:
    report = build_report()
    del report["categories"][0]["N_base"]
    return report


@pytest.mark.parametrize(
    "report, message",
    [
        ("{ not json", "not valid JSON"),
        (_missing_key(), "categories[0] lacks required key(s) N_base"),
        ({**build_report(), "schema_version": SCHEMA_VERSION + 1}, "newer diffeval"),
        (_nan_report(), "NaN"),
        ([1, 2], "expected an object"),
    ],
    ids=["syntax", "missing-key", "newer-schema", "nan", "not-object"],
)
def test_bad_report_is_rejected_and_board_is_byte_identical(tmp_path, make_run, report, message):
    board = tmp_path / "board"
    publish(make_run("good"), board)
    before = snapshot(board)

    with pytest.raises(ReportError, match=message.replace("[", r"\[").replace("]", r"\]").replace("(", r"\(").replace(")", r"\)")):
        publish(make_run("bad", report=report if isinstance(report, str) else json.dumps(report)), board)
    assert snapshot(board) == before


def test_run_without_report_md_or_with_linked_figure_is_rejected_unchanged(tmp_path, make_run):
    board = tmp_path / "board"
    publish(make_run("good"), board)
    before = snapshot(board)

    no_md = make_run("no-md", tasks={"other": 0.1})
    (no_md / "report.md").unlink()
    with pytest.raises(BoardError, match="report.md does not exist"):
        publish(no_md, board)

    secret = tmp_path / "secret.png"
    secret.write_bytes(b"not for publishing")
    linked = make_run("linked", tasks={"other": 0.1})
    (linked / "figures" / "leak.png").symlink_to(secret)
    with pytest.raises(BoardError, match="not a regular file"):
        publish(linked, board)
    assert snapshot(board) == before


@pytest.mark.parametrize("bad_id", ["..", "../escape", "a/b", "/tmp/abs", "", ".hidden", "x" * 300, "a..b"])
def test_entry_id_that_would_escape_the_board_is_rejected(tmp_path, make_run, bad_id):
    board = tmp_path / "board"
    publish(make_run("good"), board)
    before = snapshot(board)
    with pytest.raises(BoardError, match="would not stay inside the board"):
        publish(make_run("evil"), board, entry_id=bad_id)
    assert snapshot(board) == before
    assert not (tmp_path / "escape").exists()


def test_hostile_model_specs_give_a_safe_entry_id(tmp_path, make_run):
    board = tmp_path / "board"
    entry_id = publish(make_run("evil", base="../../../etc/passwd", tuned="/abs/..\\..//x", reference="a/../../b"), board)
    assert "/" not in entry_id and ".." not in entry_id
    assert (board / "entries" / entry_id).is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["board", "runs"]


def test_symlinks_inside_the_board_are_refused(tmp_path, make_run):
    outside = tmp_path / "outside"
    outside.mkdir()
    board = tmp_path / "board"
    publish(make_run("good"), board)
    (board / "history").symlink_to(outside)  # a replaced entry would be moved out of the board
    before = snapshot(board)
    with pytest.raises(BoardError, match="symbolic link"):
        publish(make_run("again"), board)
    assert list(outside.iterdir()) == []
    assert snapshot(board) == before

    link_board = tmp_path / "link-board"
    link_board.symlink_to(board)
    with pytest.raises(BoardError, match="symbolic link"):
        publish(make_run("again"), link_board)


def test_board_that_is_a_file_or_a_foreign_folder_is_refused(tmp_path, make_run):
    (tmp_path / "file").write_text("x")
    with pytest.raises(BoardError, match="is a file"):
        publish(make_run("a"), tmp_path / "file")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(BoardError, match="without board.json"):
        publish(make_run("a"), foreign)
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]


def test_eight_concurrent_publishes_keep_every_entry(tmp_path, make_run):
    board = tmp_path / "board"
    runs = [make_run(f"r{i}", tuned=f"org/tuned-{i}") for i in range(8)]
    start = time.time() + 2.0  # every process waits for the same instant, then publishes
    code = (
        "import sys, time; from diffeval.leaderboards import publish; "
        "time.sleep(max(0.0, float(sys.argv[3]) - time.time())); print(publish(sys.argv[1], sys.argv[2]))"
    )
    procs = [subprocess.Popen([sys.executable, "-c", code, str(r), str(board), str(start)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              cwd=Path(__file__).parents[2]) for r in runs]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0] * 8, [err for _, err in outs]

    ids = sorted(out.strip() for out, _ in outs)
    assert len(set(ids)) == 8
    assert sorted(json.loads((board / "board.json").read_text())["entries"]) == ids
    assert sorted(p.name for p in (board / "entries").iterdir()) == ids
    for entry_id in ids:
        json.loads((board / "entries" / entry_id / "report.json").read_text())
    md = (board / "LEADERBOARD.md").read_text()
    rows = [line for line in md.splitlines() if line.startswith("| org-base")]
    assert sorted(line.split(" | ")[1] for line in rows) == [f"org/base-1b → org/tuned-{i}" for i in range(8)]
    assert not list(board.rglob("*.tmp"))


def test_publishes_a_report_rendered_by_the_reports_package(tmp_path):
    """The real producer of report.json (reports.render on a planted run directory) feeds a board."""

    run = write_run_dir(tmp_path / "run")
    render_report(run)
    board = tmp_path / "board"
    entry = board / "entries" / publish(run, board)

    assert json.loads((entry / "report.json").read_text()) == json.loads((run / "report.json").read_text())
    links = re.findall(r"\]\((figures/[^)]+\.png)\)", (entry / "report.md").read_text())
    assert links and all((entry / link).is_file() for link in links)  # report.md's figures travel with it
    # the self-contained report.html travels too, and the board links it
    assert (entry / "report.html").read_text() == (run / "report.html").read_text()
    assert f'href="entries/{entry.name}/report.html"' in (board / "index.html").read_text()
