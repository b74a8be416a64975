"""The report stage: report.md, report.json and figures, re-rendered on every run (it reads only files)."""

from __future__ import annotations

import logging
from pathlib import Path

from diffeval.harness.core.rundir import RunDir
from diffeval.reports.render import render_report

log = logging.getLogger(__name__)


def stage_report(run: RunDir) -> list[Path]:
    """report.md, report.json and figures (re-rendered on every run: it is cheap and reads only files)."""

    return render_report(run.path)
