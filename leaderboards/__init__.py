"""The leaderboard store, publishing and rendering (issue 7: not implemented yet)."""
