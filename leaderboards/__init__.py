"""The leaderboard: publish validated run reports to a board (a folder or a git repository) and render it."""

from diffeval.leaderboards.api import publish, render, show
from diffeval.leaderboards.board import BoardError

__all__ = ["BoardError", "publish", "render", "show"]
