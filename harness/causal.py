"""The causal check (issue 6, item 5): remove a category's latents' fine-tuning change and re-score a task.

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

import hashlib
import logging
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from harness.errors import DiffevalError, RunDirError

log = logging.getLogger(__name__)

CAUSAL_DIR = "causal"
CAUSAL_VERSION = 1
MODES = ("ablate", "revert")
ENCODE_CHUNK = 4096  # rows per crosscoder encode call: bounds the [rows, n_latents] buffer
_SAFE_NAME = re.compile(r"^[A-Za-z0-9._-]+$")


class LatentAblation:
    """Hooks that ablate (or revert) `latents` in the tuned model's residual stream at one block.

    Use as a context manager: inside it the tuned model (returned by `__enter__`) runs with the
    ablation; on exit the hooks are removed. Generation with a KV cache works: the tokens seen so far
    are kept, so the base model (which has no cache here) always sees the whole sequence.
    """

    def __init__(self, base_model: Any, tuned_model: Any, crosscoder: Any, layer: int | Sequence[int],
                 latents: Iterable[int], skip_token_ids: Iterable[int] = (), mode: str = "ablate") -> None:
        import torch

        from harness.activations import decoder_blocks

        if base_model is tuned_model:
            raise DiffevalError("ablated_model needs two distinct model objects (base and tuned)")
        if crosscoder.cfg.n_models != 2:
            raise DiffevalError(f"the crosscoder covers {crosscoder.cfg.n_models} models; the causal check needs 2 "
                                "(model 0 base, model 1 tuned)")
        self.base_model, self.tuned_model, self.crosscoder = base_model, tuned_model, crosscoder
        self.layers = (int(layer), int(layer)) if isinstance(layer, int) else tuple(int(v) for v in layer)
        self.blocks = (decoder_blocks(base_model), decoder_blocks(tuned_model))
        for blocks, at, role in zip(self.blocks, self.layers, ("base", "tuned"), strict=True):
            if not 0 <= at < len(blocks):
                raise DiffevalError(f"layer {at} is out of range for the {role} model ({len(blocks)} blocks)")
        self.latents = check_latents(latents, crosscoder.cfg.n_latents)
        if mode not in MODES:
            raise DiffevalError(f"ablation mode {mode!r} is not one of {', '.join(MODES)}")
        dims = crosscoder.cfg.d_models
        if mode == "revert" and dims is not None and len(set(dims)) > 1:
            raise DiffevalError(f"mode 'revert' writes the base model's decoder into the tuned model, which needs one "
                                f"hidden size; these models have {dims[0]} and {dims[1]} (use mode 'ablate')")
        self.mode = mode
        self.skip_token_ids = torch.tensor(sorted(set(skip_token_ids)), dtype=torch.long)
        if getattr(crosscoder, "threshold", None) is not None and float(crosscoder.threshold) < 0:
            log.warning("the BatchTopK crosscoder has no inference threshold: latent activations will depend "
                        "on the batch")
        self.calls = 0  # block outputs ablated so far (tests check the hook really ran)
        self._handles: list[Any] = []
        self._ids = self._pos = self._new_ids = self._h_base = None
        self._W: tuple[Any, Any] | None = None

    def __enter__(self) -> Any:
        self._handles = [
            self.tuned_model.register_forward_pre_hook(self._stash_inputs, with_kwargs=True),
            self.blocks[1][self.layers[1]].register_forward_hook(self._ablate),
        ]
        return self.tuned_model

    def __exit__(self, *exc: Any) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._ids = self._pos = self._new_ids = self._h_base = None

    # -- hooks -----------------------------------------------------------------------------------
    def _stash_inputs(self, _module: Any, args: tuple, kwargs: dict) -> None:
        """Before each tuned forward: the base hidden state for the same tokens."""
        import torch

        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is None:
            raise DiffevalError("the ablated model needs input_ids (inputs_embeds are not supported)")
        mask, pos = kwargs.get("attention_mask"), kwargs.get("position_ids")
        past = _cached_length(kwargs, ids, mask)
        if past == 0:
            self._ids, self._pos = ids, pos
        else:  # a generation step: extend what the cache has seen
            if self._ids is None or self._ids.shape[1] != past:
                raise DiffevalError(f"ablation hook: the tuned model's cache holds {past} tokens but the hook saw "
                                    f"{None if self._ids is None else self._ids.shape[1]}; start a new generation")
            self._ids = torch.cat([self._ids, ids], 1)
            self._pos = None if pos is None or self._pos is None else torch.cat([self._pos, pos], 1)
        self._new_ids = ids
        self._h_base = self._base_hidden(mask)[:, -ids.shape[1]:]

    def _base_hidden(self, mask: Any) -> Any:
        import torch

        from harness.activations import truncated_hidden

        pos = self._pos

        def base(**kwargs: Any) -> Any:  # same position ids as the tuned model got (absolute-position models)
            return self.base_model(**kwargs, **({} if pos is None else {"position_ids": pos}))

        with torch.no_grad():
            return truncated_hidden(base, self.blocks[0], self.layers[0], self._ids, mask)

    def _ablate(self, _module: Any, _inputs: Any, output: Any) -> Any:
        """After the tuned block: subtract the ablated latents' decoded contribution."""
        h = output[0] if isinstance(output, tuple) else output  # [batch, seq, d_tuned]
        if self._h_base is None or self._h_base.shape[:2] != h.shape[:2]:
            raise DiffevalError("ablation hook: the tuned block ran without a matching base hidden state "
                                "(was the block called outside the model's forward?)")
        drop = self.contribution(self._h_base, h)
        if len(self.skip_token_ids):
            keep = ~_isin(self._new_ids, self.skip_token_ids)
            drop = drop * keep[..., None].to(drop.dtype)
        self.calls += 1
        new = h - drop.to(h.dtype)
        return (new, *output[1:]) if isinstance(output, tuple) else new

    # -- the ablation itself -----------------------------------------------------------------------
    def contribution(self, h_base: Any, h_tuned: Any) -> Any:
        """What the hook subtracts, in the tuned model's raw units: Σ_{j∈S} f_j · W_dec[j, tuned] / act_scale[tuned]
        (ablate), minus the same with the base decoder and scale (revert).

        h_base [batch, seq, d_base], h_tuned [batch, seq, d_tuned] → [batch, seq, d_tuned] (float32).
        """
        import torch

        cc = self.crosscoder
        d, d_tuned = cc.cfg.d_model, h_tuned.shape[-1]
        dev = cc.W_dec.device
        with torch.no_grad():
            x = torch.stack([_pad(h_base.float(), d), _pad(h_tuned.float(), d)], dim=-2)  # [batch, seq, 2, d]
            x = x.reshape(-1, 2, d).to(dev)
            idx, W = self._decoder(d_tuned)
            f = torch.cat([cc.encode(chunk)[:, idx] for chunk in x.split(ENCODE_CHUNK)])  # [rows, |S|]
            return (f @ W).reshape(*h_tuned.shape[:-1], d_tuned).to(h_tuned.device)

    def _decoder(self, d_tuned: int) -> tuple[Any, Any]:
        """(latent ids, [|S|, d_tuned] what one unit of each latent adds in raw units), built once per width."""
        import torch

        if self._W is None or self._W[1].shape[1] != d_tuned:
            cc = self.crosscoder
            idx = torch.tensor(self.latents, dtype=torch.long, device=cc.W_dec.device)
            W = cc.W_dec[idx, 1, :d_tuned] / cc.act_scale[1]
            if self.mode == "revert":
                W = W - cc.W_dec[idx, 0, :d_tuned] / cc.act_scale[0]
            self._W = (idx, W.detach())
        return self._W


def ablated_model(base_model: Any, tuned_model: Any, crosscoder: Any, layer: int | Sequence[int],
                  latents: Iterable[int], *, skip_token_ids: Iterable[int] = (), mode: str = "ablate") -> LatentAblation:
    """A context manager yielding `tuned_model` with `latents` ablated (or reverted, `mode`) at block `layer`.

    `layer` is one block index or (base_block, tuned_block). Positions holding a token in
    `skip_token_ids` (e.g. BOS, which activation collection drops) are left alone. The yielded
    model can be handed to lm-eval: `HFLM(pretrained=model, tokenizer=tok)`.
    """
    return LatentAblation(base_model, tuned_model, crosscoder, layer, latents, skip_token_ids, mode)


def check_latents(latents: Iterable[int], n_latents: int) -> list[int]:
    """Sorted, unique latent ids, each in 0..n_latents-1."""
    try:
        ids = sorted({int(j) for j in latents})
    except (TypeError, ValueError):
        raise DiffevalError(f"latents must be integer ids, got {latents!r}") from None
    bad = [j for j in ids if not 0 <= j < n_latents]
    if bad:
        raise DiffevalError(f"latent ids {bad[:5]} are out of range: the crosscoder has latents 0..{n_latents - 1}")
    return ids


def _cached_length(kwargs: dict, ids: Any, mask: Any) -> int:
    """Tokens already in the KV cache (0 for a fresh forward)."""
    for name in ("past_key_values", "cache"):  # the keyword changed across transformers versions
        cache = kwargs.get(name)
        if cache is not None and hasattr(cache, "get_seq_length"):
            return int(cache.get_seq_length())
    return 0 if mask is None else max(0, mask.shape[1] - ids.shape[1])


def _pad(h: Any, d: int) -> Any:
    """Zero-pad the last dimension to d (a smaller model inside a crosscoder of width d)."""
    import torch

    if h.shape[-1] > d:
        raise DiffevalError(f"hidden size {h.shape[-1]} exceeds the crosscoder's d_model {d}")
    return h if h.shape[-1] == d else torch.nn.functional.pad(h, (0, d - h.shape[-1]))


def _isin(ids: Any, values: Any) -> Any:
    import torch

    return torch.isin(ids, values.to(ids.device))


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
                 seed: int = 0, mode: str = "ablate") -> dict[str, Any]:
    """Re-score `task` on the tuned model with `latents` (a category's latents) ablated or reverted (`mode`).

    Needs the run's bench stage (per-document scores of both models), its crosscoder stage and the
    activation manifest (which block the crosscoder reads). Returns and writes
    `causal/<task>__<category>.json` with task, category, n_latents, delta, delta_ablated,
    delta_removed, ci_low, ci_high (and provenance); reuses it while the inputs are unchanged.
    """
    from harness.config import config_hash
    from harness.io import atomic_write_json, read_json

    run = Path(run_dir)
    if not _SAFE_NAME.match(category or ""):
        raise DiffevalError(f"category {category!r} must be a non-empty name of letters, digits, '.', '_' or '-'")
    cfg, metric, flt = _bench_inputs(run, task)
    cc_dir, layer = _crosscoder_inputs(run)
    n_latents = _read_cfg(cc_dir)["n_latents"]
    ids = check_latents(latents, n_latents)
    if not ids:
        raise DiffevalError(f"no latents to ablate for category {category!r} on task {task}: pass at least one id")
    from harness import models

    specs = [models.resolve_spec(cfg.base), models.resolve_spec(cfg.tuned)]
    if mode not in MODES:
        raise DiffevalError(f"ablation mode {mode!r} is not one of {', '.join(MODES)}")
    key = config_hash(cfg, task, category, ids, layer, n_boot, seed, mode, [models.describe(s) for s in specs],
                      _sha256(cc_dir / "crosscoder.safetensors"),
                      [_sha256(_samples(run, role, task)) for role in ("base", "tuned")])
    out = run / CAUSAL_DIR / f"{task}__{category}.json"
    if out.exists():
        old = read_json(out)
        if old.get("input_hash") == key:
            log.info("causal %s / %s: unchanged, reusing %s", task, category, out)
            return old
    ablated_dir = run / CAUSAL_DIR / f"{task}__{category}"
    _evaluate_ablated(cfg, specs, task, cc_dir, layer, ids, ablated_dir, mode)
    from harness.bench import per_doc_scores

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
    from crosscoders.base import CrossCoderBase
    from harness import models, taskreg
    from harness.bench import evaluate_lm

    models.check_device(cfg.device)
    tok = models.load_tokenizer(specs[1])
    base_model, tuned_model = (models.load_model(s, cfg.dtype, cfg.device) for s in specs)
    try:
        crosscoder = CrossCoderBase.load(cc_dir, device=cfg.device)
    except ValueError as e:
        raise RunDirError(f"the crosscoder stage of {cc_dir.parent} is unreadable: {e}") from None
    skip = [tok.bos_token_id] if tok.bos_token_id is not None else []  # collection drops BOS rows
    defs = taskreg.resolve([task], cfg.tasks_dir)
    log.info("causal check: %s with %d latents (%s) at block %s", task, len(latents), mode, layer)
    with ablated_model(base_model, tuned_model, crosscoder, layer, latents, skip_token_ids=skip, mode=mode) as model:
        evaluate_lm(model, tok, defs, cfg, out)


def _bench_inputs(run: Path, task: str) -> tuple[Any, str, str]:
    """The bench settings and the task's headline (metric, filter); errors name the missing stage."""
    import dataclasses

    from harness.bench import DELTAS_FILE, headline_metric
    from harness.config import BenchConfig
    from harness.io import read_json

    for rel in ("config.json", DELTAS_FILE, "bench/tuned/results.json"):
        if not (run / rel).is_file():
            raise RunDirError(f"run directory {run} has no finished bench stage ({rel} is missing); "
                              "run `diffeval bench` (or `diffeval run`) into it first")
    rows = {r["task"]: r for r in read_json(run / DELTAS_FILE)["tasks"] if r.get("source") == "lm-eval"}
    if task not in rows:
        raise DiffevalError(f"task {task!r} is not among the bench stage's lm-eval tasks in {run}; "
                            f"available: {', '.join(sorted(rows)) or 'none'}")
    for role in ("base", "tuned"):
        if not _samples(run, role, task).is_file():
            raise RunDirError(f"run directory {run}: the bench stage has no per-document log "
                              f"{_samples(run, role, task).relative_to(run)}; re-run `diffeval bench`")
    fields = {f.name for f in dataclasses.fields(BenchConfig)}
    cfg = BenchConfig(**{k: tuple(v) if isinstance(v, list) else v
                         for k, v in read_json(run / "config.json").items() if k in fields})
    metric, flt = headline_metric(read_json(run / "bench/tuned/results.json")["configs"][task])
    return cfg, metric, flt


def _crosscoder_inputs(run: Path) -> tuple[Path, list[int]]:
    """The crosscoder directory and the (base, tuned) block it reads, from the activation manifest."""
    from harness.io import read_json

    cc_dir = run / "crosscoder"
    for name in ("cfg.json", "crosscoder.safetensors"):
        if not (cc_dir / name).is_file():
            raise RunDirError(f"run directory {run} has no crosscoder stage (crosscoder/{name} is missing); "
                              f"run `diffeval crosscoder train ACTS --out {cc_dir}` first")
    manifest = run / "activations" / "manifest.json"
    if not manifest.is_file():
        raise RunDirError(f"run directory {run} has no activations stage (activations/manifest.json is missing), "
                          "so the crosscoder's layer is unknown; collect activations into it first")
    layer = read_json(manifest).get("layer")
    layer = [layer, layer] if isinstance(layer, int) else layer
    if not (isinstance(layer, list) and len(layer) == 2 and all(isinstance(v, int) for v in layer)):
        raise RunDirError(f"{manifest}: 'layer' must be a block index or [base, tuned] indices, got {layer!r}")
    return cc_dir, layer


def _read_cfg(cc_dir: Path) -> dict[str, Any]:
    from harness.io import read_json

    cfg = read_json(cc_dir / "cfg.json")
    if not isinstance(cfg.get("n_latents"), int):
        raise RunDirError(f"{cc_dir / 'cfg.json'} has no integer n_latents; re-train the crosscoder")
    return cfg


def _samples(run: Path, role: str, task: str) -> Path:
    return run / "bench" / role / "samples" / f"{task}.jsonl"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]
