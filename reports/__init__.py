"""Rendering of report.md, report.json and figures from a run directory (issue 7: not implemented yet)."""
