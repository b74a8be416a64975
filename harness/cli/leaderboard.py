"""`diffeval leaderboard …`: publish a run, show the board, render its pages. A thin wrapper over leaderboards.api.

No heavy import here (no torch): publishing and rendering never need a model.
"""

from __future__ import annotations

import logging

import click

from diffeval.harness.cli.common import user_errors
from diffeval.leaderboards.api import publish as publish_run
from diffeval.leaderboards.api import render as render_board
from diffeval.leaderboards.api import show as show_board

BOARD_HELP = "board folder, or git repository (URL, *.git path or bare repository)"


@click.group()
@click.option("-v", "--verbose", is_flag=True, help="log each step (git pushes and retries included)")
def leaderboard(verbose: bool) -> None:
    """Publish attribution reports of model pairs to a board and render it."""
    if verbose:
        logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")


@leaderboard.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--board", required=True, help=BOARD_HELP)
@click.option("--entry-id", help="entry name on the board (default: derived from the models and tasks)")
@user_errors
def publish(run_dir: str, board: str, entry_id: str | None) -> None:
    """Validate RUN_DIR/report.json and publish it (re-publishing replaces the entry, keeping history)."""

    published = publish_run(run_dir, board, entry_id=entry_id)
    click.echo(f"published {published} to {board}")


@leaderboard.command()
@click.option("--board", required=True, help=BOARD_HELP)
@user_errors
def show(board: str) -> None:
    """Print the board as a table."""

    click.echo(show_board(board))


@leaderboard.command()
@click.option("--board", required=True, help=BOARD_HELP)
@user_errors
def render(board: str) -> None:
    """Re-render LEADERBOARD.md and index.html (a git board gets them committed and pushed)."""

    for path in render_board(board):
        click.echo(f"wrote {path}")
