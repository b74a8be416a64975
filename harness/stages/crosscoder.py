"""The crosscoder stage: train on the run's paired activation cache (resuming a checkpoint of the same inputs)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from diffeval.crosscoders import load_crosscoder, train_crosscoder
from diffeval.crosscoders.data import ActivationDirError, ActivationStore, crosscoder_config, read_manifest
from diffeval.crosscoders.files import file_sha256, write_json_atomic
from diffeval.harness.core import files, progress
from diffeval.harness.core.config import config_hash
from diffeval.harness.core.errors import DiffevalError, RunDirError
from diffeval.harness.core.runconfig import n_latents_for
from diffeval.harness.core.rundir import RunDir, fresh_stage_dir
from diffeval.harness.core.stageconfig import CrosscoderStageConfig
from diffeval.harness.stages.activations import resolve_collection
from diffeval.harness.stages.stream import paired_stream

log = logging.getLogger(__name__)


def stage_crosscoder(run: RunDir, cfg: CrosscoderStageConfig) -> Path:
    """Train the crosscoder on the run's activations; its key hashes the full CrossCoderConfig (these
    settings completed with the cache's hidden sizes) and the activations stage's key. With `cfg.stream`, it
    trains on that collection's rows computed on the fly (harness.stages.stream) rather than on the cache.
    With `cfg.source`, use that trained crosscoder instead (`use_trained`)."""
    acts = run.path / files.ACTS_DIR
    manifest = read_manifest(acts)
    if cfg.source is not None:
        return use_trained(run, Path(cfg.source), acts, manifest, cfg.device)
    try:
        cc_cfg = crosscoder_config(manifest, n_latents=n_latents_for(cfg.n_latents, manifest["d_model"]),
                                   k=cfg.k, n_steps=cfg.n_steps, architecture=cfg.architecture, seed=cfg.seed,
                                   device=cfg.device, checkpoint_every=max(cfg.n_steps // 4, 1))
    except ValueError as e:
        raise DiffevalError(f"crosscoder configuration: {e}") from None
    stream = resolve_collection(run, cfg.stream) if cfg.stream else None
    key = config_hash(cc_cfg, run.key("activations"), stream[1] if stream else None)
    out = run.path / files.CROSSCODER_DIR
    if not run.is_done("crosscoder", key):
        fresh_stage_dir(out, key)  # a checkpoint of these inputs resumes; any other configuration's is cleared
        with run.stage("crosscoder", key) as rec:
            try:
                beat = progress.Heartbeat("crosscoder", cc_cfg.n_steps, "steps")
                train_crosscoder(cc_cfg, paired_stream(stream[0], seed=cfg.seed) if stream else acts, out=out,
                                 on_metrics=lambda row: beat.beat(row["step"], metrics_summary(row)))
            except (ActivationDirError, FloatingPointError, ValueError) as e:
                raise DiffevalError(str(e)) from None
            rec["outputs"] = [out / files.CROSSCODER_WEIGHTS, out / files.CROSSCODER_CFG, out / files.CROSSCODER_METRICS]
    return out


def metrics_summary(row: dict) -> str:
    """One training metrics row as a person reads it in a log: loss, FVE per model, dead share, throughput."""
    fve = "/".join(f"{v:.2f}" for v in row["fve"])
    return f"loss {row['loss']:.3g}, FVE {fve}, {100 * row['dead_fraction']:.0f} % dead, {row['rows_per_s']:.0f} rows/s"


def open_crosscoder(run_path: Path, device: str = "cpu") -> Any:
    """The run's trained crosscoder; a missing or corrupt cfg.json or weights file, or another format
    version, is an error naming the file and how to recompute it."""
    try:
        return load_crosscoder(run_path / files.CROSSCODER_DIR, device=device)
    except ValueError as e:
        raise RunDirError(f"{e}; delete {run_path / files.CROSSCODER_DIR} and re-run to train it again") from None


EVAL_ROWS = 8192  # activation rows a given crosscoder is evaluated on (evenly spaced through the cache)
SOURCE_FILE = "source.json"  # where a given crosscoder came from (beside its weights)


def use_trained(run: RunDir, source: Path, acts: Path, manifest: dict[str, Any], device: str = "cpu") -> Path:
    """The crosscoder stage for a crosscoder trained elsewhere: checked against the run's activations (number
    of models, hidden size), saved in diffeval's format, and evaluated on the run's activations (FVE per model,
    L0, the fraction of latents that never fire there) into metrics.jsonl as step 0. Its key hashes the source's
    files, not their path."""
    key = config_hash({"source": source_fingerprint(source)}, run.key("activations"))
    out = run.path / files.CROSSCODER_DIR
    if run.is_done("crosscoder", key):
        return out
    fresh_stage_dir(out, key)
    with run.stage("crosscoder", key) as rec:
        try:
            model = load_crosscoder(source, device=device)
        except ValueError as e:
            raise DiffevalError(f"--crosscoder: {e}") from None
        dims = tuple(manifest.get("d_models") or [manifest["d_model"]] * int(manifest.get("n_models", 2)))
        if model.cfg.model_dims() != dims:
            raise DiffevalError(f"--crosscoder {source} reads {model.cfg.n_models} models of hidden size "
                                f"{model.cfg.model_dims()}, but this run's activations have {dims}: pass a crosscoder "
                                "trained on these two models")
        model.save(out)
        (out / files.CROSSCODER_METRICS).write_text(json.dumps(evaluate(model, acts)) + "\n")
        write_json_atomic(out / SOURCE_FILE, {"source": str(source.resolve()), "files": source_fingerprint(source),
                                              "architecture": model.architecture})
        rec["outputs"] = [out / files.CROSSCODER_WEIGHTS, out / files.CROSSCODER_CFG, out / files.CROSSCODER_METRICS,
                          out / SOURCE_FILE]
    return out


def source_fingerprint(source: Path) -> dict[str, str]:
    """sha256 of a crosscoder file, or of every file in a crosscoder folder (by name)."""
    paths = [source] if source.is_file() else sorted(p for p in source.iterdir() if p.is_file())
    return {p.name: file_sha256(p) for p in paths}


def evaluate(model: Any, acts: Path, rows: int = EVAL_ROWS, batch: int = 1024) -> dict[str, Any]:
    """A metrics.jsonl row for a crosscoder on `rows` evenly spaced rows of an activation cache: FVE per model
    (as training reports it), mean L0, and the fraction of latents that fire on none of these rows."""
    import torch

    with torch.no_grad():
        return _evaluate(model, ActivationStore(acts), rows, batch)


def _evaluate(model: Any, store: ActivationStore, rows: int, batch: int) -> dict[str, Any]:
    import torch

    x = store[torch.linspace(0, len(store) - 1, min(rows, len(store))).long().unique()]  # [rows, n, d]
    resid = torch.zeros(x.shape[1])
    fired = torch.zeros(model.cfg.n_latents, dtype=torch.bool)
    active = 0
    for start in range(0, len(x), batch):
        xb = x[start:start + batch].to(model.W_dec.device)
        f = model.encode(xb)
        resid += (model.reconstruct(xb) - xb).pow(2).sum((0, 2)).cpu()
        fired |= (f > 0).any(0).cpu()
        active += int((f > 0).sum())
    total = (x - x.mean(0)).pow(2).sum((0, 2)).clamp_min(1e-12)
    return {"step": 0, "fve": (1 - resid / total).tolist(), "l0": active / len(x),
            "dead_fraction": float((~fired).float().mean()), "eval_rows": len(x)}
