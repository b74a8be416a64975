"""The `leaderboard` click group, tested in-process with CliRunner (the lead registers it under `diffeval`)."""

from __future__ import annotations

from click.testing import CliRunner

from diffeval.harness.cli.leaderboard import leaderboard
from tests.leaderboards.conftest import snapshot


def test_publish_show_render(tmp_path, make_run):
    board = tmp_path / "board"
    runner = CliRunner()
    result = runner.invoke(leaderboard, ["publish", str(make_run("a")), "--board", str(board)])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("published org-base-1b--vs--org-base-1b-simpo--")

    result = runner.invoke(leaderboard, ["show", "--board", str(board)])
    assert result.exit_code == 0 and "org/base-1b-simpo" in result.output

    result = runner.invoke(leaderboard, ["render", "--board", str(board)])
    assert result.exit_code == 0
    assert result.output.splitlines() == [f"wrote {board / 'LEADERBOARD.md'}", f"wrote {board / 'index.html'}"]


def test_user_errors_are_one_line_with_exit_status_2(tmp_path, make_run):
    board = tmp_path / "board"
    runner = CliRunner()
    runner.invoke(leaderboard, ["publish", str(make_run("a")), "--board", str(board)])
    before = snapshot(board)
    cases = [
        ["publish", str(make_run("bad", report='{"schema_version": 1}')), "--board", str(board)],
        ["publish", str(tmp_path / "no-such-run"), "--board", str(board)],
        ["publish", str(make_run("b")), "--board", str(board), "--entry-id", "../../x"],
        ["show", "--board", str(tmp_path / "empty")],
        ["publish", str(make_run("c")), "--board", str(tmp_path / "a-file" / "board")],  # OSError, no traceback
    ]
    (tmp_path / "a-file").write_text("not a folder")
    for args in cases:
        result = runner.invoke(leaderboard, args)
        assert result.exit_code == 2, (args, result.output)
        assert len(result.output.strip().splitlines()) == 1 and result.output.startswith("Error: "), result.output
        assert result.exception is None or isinstance(result.exception, SystemExit)
    assert snapshot(board) == before
