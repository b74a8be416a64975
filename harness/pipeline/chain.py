"""The pipeline: the stages chained over one run directory.

bench → activations → crosscoder → latents → attribution (→ causal with --causal) → report. Each stage
is skipped when its inputs are unchanged and resumes when it was interrupted, so a killed run, re-run
with the same arguments, continues and ends with the same results.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from diffeval.harness.core import files
from diffeval.harness.core.runconfig import RunConfig
from diffeval.harness.core.rundir import RunDir
from diffeval.harness.stages.activations import stage_activations
from diffeval.harness.stages.attribution import stage_attribution
from diffeval.harness.stages.bench import run_bench
from diffeval.harness.stages.causal import stage_causal
from diffeval.harness.stages.crosscoder import stage_crosscoder
from diffeval.harness.stages.inputs import probe_inputs
from diffeval.harness.stages.latents import stage_latents
from diffeval.harness.stages.report import stage_report

log = logging.getLogger(__name__)


def run(cfg: RunConfig, out: str | Path) -> Path:
    """Run every stage into `out`; returns the run directory.

    Each stage gets its own config from `cfg.stages()`. The taxonomy and every probe corpus are read first,
    so a bad --categories file or probe directory is an error before any model runs or any file is written."""
    stages = cfg.stages()
    probe_inputs(stages.latents.probes)
    run_bench(stages.bench, out)
    run_dir = RunDir(out)
    run_dir.write_config(cfg)  # the full configuration (bench wrote only its own part)
    stage_activations(run_dir, stages.activations)
    stage_crosscoder(run_dir, stages.crosscoder)
    return run_from_latents(run_dir, cfg)


def run_from_latents(run_dir: RunDir, cfg: RunConfig) -> Path:
    """The pipeline's tail, from the latents stage on (what `diffeval attribute` re-runs)."""
    stages = cfg.stages()
    stage_latents(run_dir, stages.latents)
    if cfg.reference:
        stage_reference(run_dir, cfg)
    stage_attribution(run_dir, stages.attribution)
    if stages.causal:
        stage_causal(run_dir, stages.causal)
    stage_report(run_dir)
    return run_dir.path


def stage_reference(run_dir: RunDir, cfg: RunConfig) -> None:
    """With --reference R: crosscoders of (R, tuned) and (R, base), each with its annotated latents.

    In each, model 0 is R, so "tuned-specific" latents are those specific to the compared model against R.
    """
    for side, sub in files.REFERENCE_DIRS.items():
        model = cfg.tuned if side == "tuned" else cfg.base
        stages = dataclasses.replace(cfg, base=cfg.reference, tuned=model, reference=None).stages()
        sub_run = RunDir(run_dir.path / sub)
        stage_activations(sub_run, stages.activations)
        stage_crosscoder(sub_run, stages.crosscoder)
        stage_latents(sub_run, stages.latents)
