"""The leaderboard: publish validated run reports to a board (a folder or a git repository) and render it."""

from leaderboards.api import publish, render, show
from leaderboards.board import BoardError

__all__ = ["BoardError", "publish", "render", "show"]
