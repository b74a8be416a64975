"""The report stage: report.md, report.html, report.json and figures, re-rendered on every run (it reads
only files)."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from diffeval.harness.core import progress
from diffeval.harness.core.rundir import RunDir
from diffeval.reports.render import render_report

log = logging.getLogger(__name__)


def stage_report(run: RunDir) -> list[Path]:
    """report.md, report.html, report.json and figures (re-rendered on every run: it is cheap and reads only
    files)."""
    t0 = time.perf_counter()
    paths = render_report(run.path)
    progress.stage_done("report", time.perf_counter() - t0)
    return paths
