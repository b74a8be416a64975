"""Rendering of report.md, report.json and figures from a run directory.

`render_report(run_dir)` writes everything; `build_report(run_dir)` returns report.json as a dict;
`reports.schema` holds the report.json contract, `validate_report` and `load_report`.
"""
