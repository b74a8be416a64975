"""The three things a user does with a board: publish a run, render the views, show the table.

`board` is a folder or a git repository (URL, `*.git` path, or a bare repository); the same calls
work on both.
"""

from __future__ import annotations

from pathlib import Path

from diffeval.leaderboards.board import (
    BOARD_JSON,
    INDEX_HTML,
    LEADERBOARD_MD,
    BoardError,
    board_lock,
    check_board_dir,
    read_board,
)
from diffeval.leaderboards.gitboard import is_git_board, with_git_board
from diffeval.leaderboards.store import publish_dir, read_submission
from diffeval.leaderboards.views import render_views, show_table


def publish(run_dir: str | Path, board: str | Path, entry_id: str | None = None) -> str:
    """Validate `<run_dir>/report.json` and publish it to `board`; return the entry id.

    A report that fails validation raises before the board is touched. Re-publishing the same
    (base, tuned, reference, tasks) replaces the entry and moves the old one to history/.
    """
    sub = read_submission(run_dir, entry_id)
    if is_git_board(board):
        return with_git_board(str(board), lambda clone: publish_dir(sub, clone), f"publish {sub.entry_id}")
    return publish_dir(sub, board)


def render(board: str | Path) -> list[Path]:
    """Re-render LEADERBOARD.md and index.html; a git board gets them committed and pushed.

    Returns the written paths (for a git board: their paths inside the repository).
    """
    if is_git_board(board):
        with_git_board(str(board), _render_dir, "render leaderboard")
        return [Path(LEADERBOARD_MD), Path(INDEX_HTML)]
    return _render_dir(Path(board))


def show(board: str | Path) -> str:
    """The board as a terminal table."""
    if is_git_board(board):
        return with_git_board(str(board), _show_dir, "", push=False)
    return _show_dir(Path(board))


def _render_dir(board: Path) -> list[Path]:
    board = _existing_board(board)
    with board_lock(board):
        return render_views(board)


def _show_dir(board: Path) -> str:
    return show_table(_existing_board(board))


def _existing_board(board: Path) -> Path:
    board = check_board_dir(board)
    if not (board / BOARD_JSON).is_file():
        raise BoardError(f"{board} is not a board (no {BOARD_JSON}); publish a run to it first")
    read_board(board)  # checks the format version
    return board
