"""`diffeval run --dry-run`: which stages would run or be reused, and what they would cost."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tabulate import tabulate

from diffeval.harness.core import files, models
from diffeval.harness.core.io import read_json
from diffeval.harness.core.runconfig import RunConfig, n_latents_for

STAGE_NAMES = ("bench.base", "bench.tuned", "bench.deltas", "activations", "crosscoder", "transcripts", "probes",
               "latents", "attribution", "causal", "report")


def plan(cfg: RunConfig, run_dir: Path) -> str:
    """A table of stages (reuse or run) and a rough disk, memory and time estimate, touching no model weights."""

    manifest_path = run_dir / files.MANIFEST
    done = {}
    if manifest_path.exists():
        done = {k: v.get("status") for k, v in read_json(manifest_path).get("stages", {}).items()}
    d_model, n_params = _model_size(models.resolve_spec(cfg.tuned))
    n_latents = n_latents_for(cfg.n_latents, d_model)
    act_bytes = cfg.tokens * 2 * d_model * 4
    cc_bytes = n_latents * 2 * d_model * 4 * 2 * 4  # W_enc + W_dec, fp32, with Adam's two moments
    model_bytes = 2 * n_params * 4
    rows = []
    for name in STAGE_NAMES:
        if (name == "causal" and not cfg.causal) or (name == "transcripts" and not cfg.probe_responses):
            continue
        state = done.get(name)
        rows.append([name, "reuse if inputs unchanged" if state == "done" else f"run ({state})" if state else "run"])
    # rough CPU throughput from this project's benches: a forward of ~2·params FLOPs per token at ~20 GFLOP/s
    fwd_s = 2 * (cfg.tokens * 2) * 2 * n_params / 20e9
    # crosscoder step on 2 CPU cores (benches/bench_crosscoder.py, a 96-wide organism): ~30 ms of fixed
    # cost plus the dense encoder selection at ~150 GFLOP/s
    train_s = cfg.n_steps * (0.03 + 1024 * 2 * d_model * n_latents * 2 / 150e9)
    estimate = [["disk: activation cache", _gb(act_bytes)], ["memory: both models (fp32)", _gb(model_bytes)],
                ["memory: crosscoder training", _gb(cc_bytes)], ["time: collection (CPU, rough)", f"{fwd_s / 60:.1f} min"],
                ["time: crosscoder training (CPU, rough)", f"{train_s / 60:.1f} min"]]
    return (f"run directory: {run_dir}\n" + tabulate(rows, headers=["stage", "plan"]) + "\n\n"
            + tabulate(estimate, headers=["estimate", "value"]) + f"\n(hidden size {d_model}, {n_latents} latents, "
            f"{n_params / 1e6:.1f} M parameters per model; benchmark time depends on the tasks)")


def _model_size(spec: Any) -> tuple[int, int]:
    """(hidden size, parameter count) from the model's config alone."""
    from transformers import AutoConfig

    while getattr(spec, "adapter_base", None) is not None:  # a PEFT adapter: its base model's config
        spec = spec.adapter_base
    kw = {"gguf_file": spec.gguf_file} if getattr(spec, "gguf_file", None) else {}
    try:
        conf = AutoConfig.from_pretrained(str(spec.path), **kw)
    except (OSError, ValueError):
        return 0, 0
    conf = getattr(conf, "text_config", conf)
    d, layers = conf.hidden_size, conf.num_hidden_layers
    inter = getattr(conf, "intermediate_size", 4 * d)
    return d, layers * (4 * d * d + 3 * d * inter) + conf.vocab_size * d


def _gb(n: float) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"
