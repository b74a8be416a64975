"""`diffeval run --dry-run`: which stages would run or be reused, and what they would cost."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tabulate import tabulate

from diffeval.crosscoders.config import (
    DENSE_AUX_DENSITY,
    STREAM_BUFFER_ROWS,
    CrossCoderConfig,
    aux_runs_dense,
)
from diffeval.harness.core import files, models
from diffeval.harness.core.io import read_json
from diffeval.harness.core.progress import duration
from diffeval.harness.core.runconfig import STREAM_CACHE_ROWS, RunConfig, n_latents_for

STAGE_NAMES = ("bench.base", "bench.tuned", "bench.deltas", "activations", "crosscoder", "transcripts", "probes",
               "latents", "attribution", "causal", "report")


@dataclass(frozen=True)
class Rates:
    """What a device does per second, measured on this project's machines (benches/bench_plan.py compares the
    estimates they give with finished runs; docs/development.md has the ratios)."""

    forward_flops: float      # model forward, FLOP/s (2 FLOPs per non-embedding parameter per token)
    row_s: float              # per collected row beside the forward: tokenising, the outlier filter, the shard writes
    gguf_load_s: float        # seconds per parameter to de-quantise a GGUF model
    step_fixed_s: float       # crosscoder step cost that does not grow with its size (data, selection, aux loss, Adam)
    step_flops: float         # the dense encoder forward that selects the active latents, FLOP/s
    aux_pair_s: float         # the auxiliary loss' sparse encode + decode, per (row, dead latent) pair and dimension
    aux_dense_flops: float    # the auxiliary loss' dense path over few dead latents, FLOP/s


RATES = {
    # 2 CPU cores: the quick start's crosscoder (33-41 ms a step at d 96 with the dense auxiliary loss) and
    # collection (1-2 s for 50 000 rows of a tiny pair: row_s); benches/bench_crosscoder.py (d 576, 4096
    # latents); benches/bench_aux.py (38-57 GFLOP/s on the dense auxiliary path); the Gemma-3-270M organism's
    # collection (50 000 rows), streamed crosscoder (1 M rows, about 250 row pairs a second) and
    # de-quantisation (docs/real-pairs.md)
    "cpu": Rates(forward_flops=55e9, row_s=2e-5, gguf_load_s=1.3e-7, step_fixed_s=0.035, step_flops=150e9,
                 aux_pair_s=1.5e-9, aux_dense_flops=50e9),
    # one H200: benches/bench_crosscoder.py --device cuda (d 576 and 2304); the forward, per-row and
    # auxiliary-loss rates are round figures that no measurement here has checked
    "cuda": Rates(forward_flops=100e12, row_s=0.0, gguf_load_s=1.3e-7, step_fixed_s=0.004, step_flops=20e12,
                  aux_pair_s=1e-12, aux_dense_flops=20e12),
}
BATCH, AUX_K = CrossCoderConfig.batch_size, CrossCoderConfig.aux_k  # rows per step, auxiliary-loss latents per row


@dataclass(frozen=True)
class Size:
    d_model: int
    n_params: int       # all parameters of one model
    body_params: int    # without the embedding matrices (what a forward multiplies by)
    n_layers: int
    gguf: bool


def estimates(cfg: RunConfig, size: Size) -> dict[str, float]:
    """Seconds for the activation collection and the crosscoder training, and bytes for the cache and memory."""
    rates = RATES["cpu" if cfg.device == "cpu" else "cuda"]
    n_latents = n_latents_for(cfg.n_latents, size.d_model)
    depth = (cfg.layer if 0 < cfg.layer < 1 else (cfg.layer + 1) / max(size.n_layers, 1)) if size.n_layers else 1.0
    load_s = 2 * size.n_params * (rates.gguf_load_s if size.gguf else 0.0)
    per_token_s = 2 * 2 * size.body_params * depth / rates.forward_flops + rates.row_s
    step_s = rates.step_fixed_s + 2 * BATCH * 2 * size.d_model * n_latents / rates.step_flops
    aux_s = aux_step_s(rates, n_latents, size.d_model)
    steps = 0 if cfg.crosscoder else cfg.n_steps
    streamed = cfg.streams()
    cache_rows = min(cfg.tokens, STREAM_CACHE_ROWS) if streamed else cfg.tokens
    # a streamed crosscoder computes the models' forward passes again for every row it draws
    stream_s = (load_s + steps * BATCH * per_token_s) if streamed else 0.0
    return {"activations_s": load_s + cache_rows * per_token_s, "crosscoder_s": steps * step_s + stream_s,
            "crosscoder_max_s": steps * (step_s + aux_s) + stream_s,
            "cache_bytes": cache_rows * 2 * size.d_model * DTYPE_BYTES[cfg.store_dtype()],
            "buffer_bytes": min(cfg.tokens, STREAM_BUFFER_ROWS) * 2 * size.d_model * 4 if streamed else 0,
            "models_bytes": 2 * size.n_params * DTYPE_BYTES.get(cfg.dtype, 4),
            "crosscoder_bytes": 4 * 2 * n_latents * 2 * size.d_model * 4, "n_latents": n_latents}


def aux_step_s(rates: Rates, n_latents: int, d_model: int) -> float:
    """The auxiliary loss' cost a step at worst while latents are dead. A dictionary whose every latent may
    be dead and still decoded densely (`aux_runs_dense`) costs that dense decode of all its latents; a larger
    one the dearer of the largest dense decode and the sparse path's aux_k (row, latent) pairs a row."""
    def dense(n_dead: int) -> float:  # five products over [batch, n_dead] × [n_dead, 2 d]: two forward, three backward
        return 5 * 2 * BATCH * n_dead * 2 * d_model / rates.aux_dense_flops

    if aux_runs_dense(n_latents, AUX_K):
        return dense(n_latents)
    return max(dense(AUX_K * DENSE_AUX_DENSITY), BATCH * AUX_K * 2 * d_model * rates.aux_pair_s)


DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


def plan(cfg: RunConfig, run_dir: Path) -> str:
    """A table of stages (reuse or run) and a disk, memory and time estimate, touching no model weights."""

    manifest_path = run_dir / files.MANIFEST
    done = {}
    if manifest_path.exists():
        done = {k: v.get("status") for k, v in read_json(manifest_path).get("stages", {}).items()}
    size = pair_size(cfg.tuned)
    est = estimates(cfg, size)
    rows = []
    for name in STAGE_NAMES:
        if (name == "causal" and not cfg.causal) or (name == "transcripts" and not cfg.probe_responses):
            continue
        state = done.get(name)
        rows.append([name, "reuse if inputs unchanged" if state == "done" else f"run ({state})" if state else "run"])
    where = "CPU" if cfg.device == "cpu" else "GPU"
    estimate = [[f"disk: activation cache ({cfg.store_dtype()})", _gb(est["cache_bytes"])],
                [f"memory: both models ({cfg.dtype})", _gb(est["models_bytes"])],
                ["memory: crosscoder training", _gb(est["crosscoder_bytes"])],
                *([["memory: the stream's shuffle buffer", _gb(est["buffer_bytes"])]] if est["buffer_bytes"] else []),
                [f"time: activation collection ({where})", duration(est["activations_s"])],
                [f"time: crosscoder training ({where}{', streamed: the forward passes included' if cfg.streams() else ''})",
                 "none (--crosscoder given)" if cfg.crosscoder else _span(est["crosscoder_s"], est["crosscoder_max_s"])]]
    preset = f"preset {cfg.preset}: " if cfg.preset else ""
    return (f"run directory: {run_dir}\n" + tabulate(rows, headers=["stage", "plan"]) + "\n\n"
            + tabulate(estimate, headers=["estimate", "value"])
            + f"\n({preset}{cfg.tokens} tokens, {est['n_latents']} latents, k {cfg.k}, {cfg.n_steps} steps; hidden size "
            f"{size.d_model}, {size.n_params / 1e6:.1f} M parameters per model; the benchmarks' time depends on the "
            "tasks and is not estimated)")


def pair_size(tuned: str) -> Size:
    """The tuned model's size from its config alone (both models of a pair share it); zeros when unknown."""
    spec = models.resolve_spec(tuned)
    d, n_params, body, layers = model_size(spec, detail=True)
    base = spec
    while getattr(base, "adapter_base", None) is not None:
        base = base.adapter_base
    return Size(d, n_params, body, layers, gguf=bool(getattr(base, "gguf_file", None)))


def _span(low: float, high: float) -> str:
    """The training time from no dead latent to the auxiliary loss at full cost (one figure when they agree)."""
    if duration(low) == duration(high):
        return duration(low)
    return f"{duration(low)} to {duration(high)} (the upper figure while many latents are dead: the auxiliary loss)"


def model_size(spec: Any, detail: bool = False) -> tuple[int, ...]:
    """(hidden size, parameter count) from the model's config alone; with `detail`, also the parameters
    without the embeddings and the number of blocks. Zeros when the config cannot be read."""
    from transformers import AutoConfig

    while getattr(spec, "adapter_base", None) is not None:  # a PEFT adapter: its base model's config
        spec = spec.adapter_base
    kw = {"gguf_file": spec.gguf_file} if getattr(spec, "gguf_file", None) else {}
    try:
        conf = AutoConfig.from_pretrained(str(spec.path), **kw)
    except (OSError, ValueError):
        return (0, 0, 0, 0) if detail else (0, 0)
    conf = getattr(conf, "text_config", conf)
    d, layers = conf.hidden_size, conf.num_hidden_layers
    inter = getattr(conf, "intermediate_size", 4 * d)
    body = layers * (4 * d * d + 3 * d * inter)
    total = body + conf.vocab_size * d
    return (d, total, body, layers) if detail else (d, total)


def _gb(n: float) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"
