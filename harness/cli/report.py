"""`diffeval report RUN_DIR`: re-render a run's report from its files (no model, no GPU, no torch)."""

from __future__ import annotations

import click

from diffeval.harness.cli.common import user_errors
from diffeval.reports.render import report_main


@click.command("report")
@click.argument("run_dir", type=click.Path(file_okay=False))
@user_errors
def report(run_dir: str) -> None:
    """Re-render report.md, report.html, report.json and figures/ of RUN_DIR (no model, no GPU)."""
    paths = report_main(run_dir)
    click.echo(f"wrote {paths[0]} and {paths[1]} ({len(paths) - 3} figures, report.json validated)")
