"""The pipeline that chains the stages of shared/DESIGN.md over one run directory.

bench → activations → crosscoder → latents → attribution (→ causal with --causal) → report. Each stage
is skipped when its inputs are unchanged and resumes when it was interrupted, so a killed run, re-run
with the same arguments, continues and ends with the same results.
"""

from __future__ import annotations

import logging
from pathlib import Path

from harness.bench import run_bench
from harness.runconfig import RunConfig
from harness.rundir import RunDir

log = logging.getLogger(__name__)

def run_pipeline(cfg: RunConfig, out: str | Path) -> Path:
    """Run every stage into `out`; returns the run directory."""
    from harness import stages

    run_bench(cfg.bench(), out)
    run = RunDir(out)
    run.write_config(cfg)  # the full configuration (bench wrote only its own part)
    stages.stage_activations(run, cfg)
    stages.stage_crosscoder(run, cfg)
    stages.stage_latents(run, cfg)
    if cfg.reference:
        stages.stage_reference(run, cfg)
    stages.stage_attribution(run, cfg)
    if cfg.causal:
        stages.stage_causal(run, cfg)
    stages.stage_report(run)
    return run.path
