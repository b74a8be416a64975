"""The crosscoder stage: train on the run's paired activation cache (resuming a checkpoint of the same inputs)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from diffeval.crosscoders import load_crosscoder, train_crosscoder
from diffeval.crosscoders.data import ActivationDirError, crosscoder_config, read_manifest
from diffeval.harness.core import files
from diffeval.harness.core.config import config_hash
from diffeval.harness.core.errors import DiffevalError, RunDirError
from diffeval.harness.core.runconfig import n_latents_for
from diffeval.harness.core.rundir import RunDir, fresh_stage_dir
from diffeval.harness.core.stageconfig import CrosscoderStageConfig

log = logging.getLogger(__name__)


def stage_crosscoder(run: RunDir, cfg: CrosscoderStageConfig) -> Path:
    """Train the crosscoder on the run's activations; its key hashes the full CrossCoderConfig (these
    settings completed with the cache's hidden sizes) and the activations stage's key."""
    acts = run.path / files.ACTS_DIR
    manifest = read_manifest(acts)
    try:
        cc_cfg = crosscoder_config(manifest, n_latents=n_latents_for(cfg.n_latents, manifest["d_model"]),
                                   k=cfg.k, n_steps=cfg.n_steps, architecture=cfg.architecture, seed=cfg.seed,
                                   device=cfg.device, checkpoint_every=max(cfg.n_steps // 4, 1))
    except ValueError as e:
        raise DiffevalError(f"crosscoder configuration: {e}") from None
    key = config_hash(cc_cfg, run.key("activations"))
    out = run.path / files.CROSSCODER_DIR
    if not run.is_done("crosscoder", key):
        fresh_stage_dir(out, key)  # a checkpoint of these inputs resumes; any other configuration's is cleared
        with run.stage("crosscoder", key) as rec:
            try:
                train_crosscoder(cc_cfg, acts, out=out)
            except (ActivationDirError, FloatingPointError) as e:
                raise DiffevalError(str(e)) from None
            rec["outputs"] = [out / files.CROSSCODER_WEIGHTS, out / files.CROSSCODER_CFG, out / files.CROSSCODER_METRICS]
    return out


def open_crosscoder(run_path: Path, device: str = "cpu") -> Any:
    """The run's trained crosscoder; a missing or corrupt cfg.json or weights file, or another format
    version, is an error naming the file and how to recompute it."""
    try:
        return load_crosscoder(run_path / files.CROSSCODER_DIR, device=device)
    except ValueError as e:
        raise RunDirError(f"{e}; delete {run_path / files.CROSSCODER_DIR} and re-run to train it again") from None
