"""The causal check: remove a category's latents' fine-tuning change and re-score a task.

At the crosscoder's layer, a forward hook on the tuned model replaces its hidden state h_T by

    ablate:  h_T − Σ_{j∈S} f_j(x) · W_dec[j, tuned] / act_scale[tuned]
    revert:  h_T − Σ_{j∈S} f_j(x) · (W_dec[j, tuned] / act_scale[tuned] − W_dec[j, base] / act_scale[base])

at every position, where f = encode((h_B, h_T)) and h_B is the base model's hidden state at the same
block for the same token ids. `ablate` removes the latents' decoded contribution (right for a latent only
the tuned model has); `revert` swaps it for what the base model writes for the same latent activation,
undoing the change fine-tuning made to those latents — right for latents both models have but whose
decoder direction fine-tuning rotated, and equal to `ablate` for a latent with no base decoder. Only the
chosen latents' contribution changes, so the crosscoder's reconstruction error stays in the residual stream
(the error-preserving form): with S = ∅ the model is unchanged bit for bit. The task is then re-scored by
lm-eval on the modified tuned model and

    delta_removed = 1 − (tuned_ablated − base) / (tuned − base)

is the share of the task's delta that disappears, with a paired bootstrap CI over documents.
Results go to `<run>/causal/<task>__<category>.json` (lm-eval's logs beside it) and are reused on
re-run while every input is unchanged.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from diffeval.crosscoders import load_crosscoder
from diffeval.crosscoders.files import file_sha256
from diffeval.harness.core import files, models
from diffeval.harness.core.config import BenchConfig, from_dict
from diffeval.harness.core.errors import DiffevalError, RunDirError
from diffeval.harness.core.files import check_name
from diffeval.harness.core.io import atomic_write_json, read_json
from diffeval.harness.core.runconfig import CAUSAL_MODES, RunConfig
from diffeval.harness.core.rundir import RunDir
from diffeval.harness.core.stageconfig import CausalConfig, stage_key
from diffeval.harness.stages.attribution import category_members, specific_sets
from diffeval.harness.stages.bench import evaluate_lm, headline_metric, per_doc_scores
from diffeval.harness.stages.intervention import ablated_model, check_latents
from diffeval.harness.stages.latents import read_latents
from diffeval.harness.suite import registry as taskreg

log = logging.getLogger(__name__)

CAUSAL_VERSION = 1


# -- scoring ------------------------------------------------------------------------------------------
def ablation_summary(base: np.ndarray, tuned: np.ndarray, ablated: np.ndarray, n_boot: int = 2000,
                     seed: int = 0) -> dict[str, Any]:
    """delta, delta_ablated, delta_removed and its paired-bootstrap 95 % CI from per-document scores."""
    base, tuned, ablated = (np.asarray(a, dtype=float) for a in (base, tuned, ablated))
    if not base.shape == tuned.shape == ablated.shape or base.ndim != 1 or not len(base):
        raise DiffevalError(f"per-document scores must be three equal, non-empty vectors (got shapes "
                            f"{base.shape}, {tuned.shape}, {ablated.shape})")
    if n_boot < 100:
        raise DiffevalError(f"n_boot must be >= 100, got {n_boot}")
    d, da = tuned - base, ablated - base  # paired per-document differences
    delta, delta_ablated = float(d.mean()), float(da.mean())
    out: dict[str, Any] = {"n": len(d), "delta": delta, "delta_ablated": delta_ablated,
                           "delta_removed": None, "ci_low": None, "ci_high": None, "note": None}
    if delta == 0:
        out["note"] = "the task's delta is 0, so the share removed is undefined"
        return out
    out["delta_removed"] = 1 - delta_ablated / delta
    idx = np.random.default_rng(seed).integers(0, len(d), size=(n_boot, len(d)))
    d_b, da_b = d[idx].mean(1), da[idx].mean(1)
    ok = d_b != 0
    ratios = 1 - da_b[ok] / d_b[ok]
    out["n_boot_valid"] = int(ok.sum())
    if ok.sum() < 0.5 * n_boot:
        out["note"] = f"only {int(ok.sum())} of {n_boot} resamples have a non-zero delta; no CI"
        return out
    out["ci_low"], out["ci_high"] = (float(v) for v in np.percentile(ratios, [2.5, 97.5]))
    return out


# -- the run-directory check ------------------------------------------------------------------------
def causal_check(run_dir: str | Path, task: str, category: str, latents: Iterable[int], *, n_boot: int = 2000,
                 seed: int = 0, mode: str = "ablate", bench: BenchConfig | None = None) -> dict[str, Any]:
    """Re-score `task` on the tuned model with `latents` (a category's latents) ablated or reverted (`mode`).

    Needs the run's bench stage (per-document scores of both models), its crosscoder stage and the
    activation manifest (which block the crosscoder reads). Returns and writes
    `causal/<task>__<category>.json` with task, category, n_latents, delta, delta_ablated,
    delta_removed, ci_low, ci_high (and provenance); reuses it while the inputs are unchanged. Re-scoring
    uses `bench` (the bench stage's settings), or, when not given, those in the run's config.json.
    """

    run = Path(run_dir)
    check_name("category", category)
    check_name("task", task)
    cfg, metric, flt = _bench_inputs(run, task, bench)
    cc_dir, layer = _crosscoder_inputs(run)
    n_latents = _read_cfg(cc_dir)["n_latents"]
    ids = check_latents(latents, n_latents)
    if not ids:
        raise DiffevalError(f"no latents to ablate for category {category!r} on task {task}: pass at least one id")

    specs = [models.resolve_spec(cfg.base), models.resolve_spec(cfg.tuned)]
    if mode not in CAUSAL_MODES:
        raise DiffevalError(f"ablation mode {mode!r} is not one of {', '.join(CAUSAL_MODES)}")
    key = stage_key(cfg, task, category, ids, layer, n_boot, seed, mode, [models.describe(s) for s in specs],
                      file_sha256(cc_dir / files.CROSSCODER_WEIGHTS)[:16],
                      [file_sha256(_samples(run, role, task))[:16] for role in ("base", "tuned")])
    out = run / files.CAUSAL_DIR / f"{task}__{category}.json"
    if out.exists():
        old = read_json(out)
        if old.get("input_hash") == key:
            log.info("causal %s / %s: unchanged, reusing %s", task, category, out)
            return old
    ablated_dir = run / files.CAUSAL_DIR / f"{task}__{category}"
    _evaluate_ablated(cfg, specs, task, cc_dir, layer, ids, ablated_dir, mode)

    scores = [per_doc_scores(p, metric, flt) for p in
              (_samples(run, "base", task), _samples(run, "tuned", task), ablated_dir / "samples" / f"{task}.jsonl")]
    docs = sorted(set(scores[0]) & set(scores[1]) & set(scores[2]))
    if not docs:
        raise DiffevalError(f"task {task}: the ablated run shares no documents with the bench stage ('{metric}')")
    base, tuned, ablated = (np.array([s[d] for d in docs]) for s in scores)
    summary = ablation_summary(base, tuned, ablated, n_boot=n_boot, seed=seed)
    result = {
        "format_version": CAUSAL_VERSION, "task": task, "category": category, "mode": mode, "n_latents": len(ids),
        **{k: summary[k] for k in ("delta", "delta_ablated", "delta_removed", "ci_low", "ci_high")},
        "metric": metric, "filter": flt, "n": summary["n"], "base": float(base.mean()),
        "tuned": float(tuned.mean()), "tuned_ablated": float(ablated.mean()), "latents": ids, "layer": layer,
        "n_boot": n_boot, "seed": seed, "note": summary["note"], "input_hash": key,
    }
    atomic_write_json(out, result)
    return result


def _evaluate_ablated(cfg: Any, specs: list[Any], task: str, cc_dir: Path, layer: list[int], latents: list[int],
                      out: Path, mode: str) -> None:
    """lm-eval on the tuned model with the ablation, per-document logs under `out`."""

    models.check_device(cfg.device)
    tok = models.load_tokenizer(specs[1])
    base_model, tuned_model = (models.load_model(s, cfg.dtype, cfg.device) for s in specs)
    try:
        crosscoder = load_crosscoder(cc_dir, device=cfg.device)
    except ValueError as e:
        raise RunDirError(f"the crosscoder stage of {cc_dir.parent} is unreadable: {e}") from None
    skip = [tok.bos_token_id] if tok.bos_token_id is not None else []  # collection drops BOS rows
    defs = taskreg.resolve([task], cfg.tasks_dir)
    log.info("causal check: %s with %d latents (%s) at block %s", task, len(latents), mode, layer)
    with ablated_model(base_model, tuned_model, crosscoder, layer, latents, skip_token_ids=skip, mode=mode) as model:
        evaluate_lm(model, tok, defs, cfg, out)


def _bench_inputs(run: Path, task: str, bench: BenchConfig | None = None) -> tuple[BenchConfig, str, str]:
    """The bench settings and the task's headline (metric, filter); errors name the missing stage."""

    for rel in (files.CONFIG, files.DELTAS, files.bench_results("tuned")):
        if not (run / rel).is_file():
            raise RunDirError(f"run directory {run} has no finished bench stage ({rel} is missing); "
                              "run `diffeval bench` (or `diffeval run`) into it first")
    rows = {r["task"]: r for r in read_json(run / files.DELTAS)["tasks"] if r.get("source") == "lm-eval"}
    if task not in rows:
        raise DiffevalError(f"task {task!r} is not among the bench stage's lm-eval tasks in {run}; "
                            f"available: {', '.join(sorted(rows)) or 'none'}")
    for role in ("base", "tuned"):
        if not _samples(run, role, task).is_file():
            raise RunDirError(f"run directory {run}: the bench stage has no per-document log "
                              f"{_samples(run, role, task).relative_to(run)}; re-run `diffeval bench`")
    # the run's own configuration (a bench-only run holds just BenchConfig's keys); .bench() applies bench_seed
    cfg = bench or from_dict(RunConfig, read_json(run / files.CONFIG), source=str(run / files.CONFIG)).bench()
    metric, flt = headline_metric(read_json(run / files.bench_results("tuned"))["configs"][task])
    return cfg, metric, flt


def _crosscoder_inputs(run: Path) -> tuple[Path, list[int]]:
    """The crosscoder directory and the (base, tuned) block it reads, from the activation manifest."""

    cc_dir = run / "crosscoder"
    for name in (files.CROSSCODER_CFG, files.CROSSCODER_WEIGHTS):
        if not (cc_dir / name).is_file():
            raise RunDirError(f"run directory {run} has no crosscoder stage (crosscoder/{name} is missing); "
                              f"run `diffeval crosscoder train ACTS --out {cc_dir}` first")
    manifest = run / files.ACTS_MANIFEST
    if not manifest.is_file():
        raise RunDirError(f"run directory {run} has no activations stage (activations/manifest.json is missing), "
                          "so the crosscoder's layer is unknown; collect activations into it first")
    layer = read_json(manifest).get("layer")
    layer = [layer, layer] if isinstance(layer, int) else layer
    if not (isinstance(layer, list) and len(layer) == 2 and all(isinstance(v, int) for v in layer)):
        raise RunDirError(f"{manifest}: 'layer' must be a block index or [base, tuned] indices, got {layer!r}")
    return cc_dir, layer


def _read_cfg(cc_dir: Path) -> dict[str, Any]:
    cfg = read_json(cc_dir / files.CROSSCODER_CFG)
    if not isinstance(cfg.get("n_latents"), int):
        raise RunDirError(f"{cc_dir / 'cfg.json'} has no integer n_latents; re-train the crosscoder")
    return cfg


def _samples(run: Path, role: str, task: str) -> Path:
    return run / files.bench_samples(role, task)


def control_null(run: RunDir, task: dict[str, Any], ids: list[int], others: list[int], cfg: CausalConfig,
                 rng: np.random.Generator, removed: float | None) -> dict[str, Any]:
    """Revert `cfg.controls` random sets of as many latents from outside the category: the null distribution
    of the share removed, and control_p, the chance that a random set removes at least as much."""
    shares = []
    for k in range(cfg.controls):
        control = sorted(int(j) for j in rng.choice(others, size=len(ids), replace=False))
        ctl = causal_check(run.path, task["task"], f"{task['category']}.control{k}", control,
                           n_boot=cfg.bench.bootstrap_iters, seed=cfg.seed, mode=cfg.mode, bench=cfg.bench)
        if ctl.get("delta_removed") is not None:
            shares.append(float(ctl["delta_removed"]))
    if not shares:
        return {"control_removed": None, "control_p": None, "n_controls": 0}
    null = np.array(shares)
    p = None if removed is None else float((1 + np.sum(null >= removed)) / (len(null) + 1))
    return {"control_removed": float(np.median(null)), "control_q90": float(np.quantile(null, 0.9)),
            "control_p": p, "n_controls": len(null)}


def stage_causal(run: RunDir, cfg: CausalConfig) -> Path:
    """Re-score each task with its category's latents reverted (or ablated); add the results to attribution.json.

    revert (default): all of the category's live latents (`category_members`) get the base model's decoder
    back, and `cfg.controls` sets of as many live latents drawn at random from outside it are reverted the same
    way: their shares removed are the null distribution, and control_p = (1 + #{sets removing at least as much})
    / (1 + sets), so "the category carries the delta" can be told from "any latents this many carry it".
    ablate: the category's tuned-specific latents are removed (the study's form); no control.
    Tasks with nothing to change or a delta of 0 are listed as skipped. (`causal_check` caches each result
    under causal/ by its own input hash.)
    """

    path = run.path / files.ATTRIBUTION
    doc = read_json(path)
    latents = read_latents(run.path / files.LATENTS)
    if cfg.mode == "revert":
        pool = [r for r in latents if r["class"] != "dead"]
    else:
        pool = specific_sets(latents, cfg.specific_by)[0]
    rng = np.random.default_rng(cfg.seed)
    rows, skipped = [], []
    for t in doc["attribution"]["per_task"]:
        ids = category_members(pool, t["category"])
        if not ids or t["delta"] == 0:
            what = "live" if cfg.mode == "revert" else "tuned-specific"
            skipped.append({"task": t["task"], "category": t["category"],
                            "reason": f"no {what} latent in its category" if not ids else "delta is 0"})
            continue
        keep = ("task", "category", "mode", "n_latents", "delta", "delta_ablated", "delta_removed", "ci_low", "ci_high")
        res = causal_check(run.path, t["task"], t["category"], ids, n_boot=cfg.bench.bootstrap_iters, seed=cfg.seed,
                           mode=cfg.mode, bench=cfg.bench)
        row = {k: res.get(k) for k in keep}
        others = sorted(set(r["latent"] for r in pool) - set(ids))
        if cfg.mode == "revert" and len(others) >= len(ids) and cfg.controls:
            row.update(control_null(run, t, ids, others, cfg, rng, res.get("delta_removed")))
        rows.append(row)
    doc["causal"], doc["causal_skipped"] = rows, skipped
    atomic_write_json(path, doc)
    run.rehash("attribution")  # attribution.json now holds the causal rows too
    return path
