"""Training: Adam with warmup, gradient clipping, optional k annealing, metrics, exact resume.

A step's batch is a pure function of (seed, step): rows come from a per-epoch permutation seeded
by (seed, epoch), so resuming from a checkpoint replays exactly the batches an uninterrupted run
would have seen.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from safetensors import safe_open
from safetensors.torch import save_file
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from diffeval.crosscoders.architectures import build_crosscoder
from diffeval.crosscoders.base import CrossCoderBase
from diffeval.crosscoders.config import CrossCoderConfig
from diffeval.crosscoders.data import as_source
from diffeval.crosscoders.distributed import rank_world
from diffeval.crosscoders.files import CHECKPOINT_FILE, METRICS_FILE
from diffeval.crosscoders.stream import RowStream

log = logging.getLogger(__name__)

INIT_ROWS = 4096


def current_k(cfg: CrossCoderConfig, step: int) -> int:
    """k, annealed linearly from 4k down to k over the first k_anneal_steps (if any)."""
    if cfg.k_anneal_steps == 0 or step >= cfg.k_anneal_steps:
        return cfg.k
    start = min(4 * cfg.k, cfg.n_latents - 1)
    return round(start - (start - cfg.k) * step / cfg.k_anneal_steps)


def batch_indices(cfg: CrossCoderConfig, step: int, n_rows: int, rank: int = 0, world: int = 1) -> torch.Tensor:
    """Row indices of `step`'s batch (this rank's share of it when data-parallel)."""
    per_epoch = max(1, n_rows // cfg.batch_size)
    epoch, pos = divmod(step, per_epoch)
    perm = torch.randperm(n_rows, generator=torch.Generator().manual_seed(cfg.seed * 100003 + epoch))
    batch = perm[pos * cfg.batch_size:(pos + 1) * cfg.batch_size]
    return batch.chunk(world)[rank] if world > 1 else batch


def first_rows(source: Any, n: int) -> torch.Tensor:
    """The source's first `n` rows (fewer if it has fewer), for the data-dependent initialisation."""
    if isinstance(source, RowStream):
        return source.head(n)
    return source[torch.arange(min(n, len(source)))]


def next_batch(source: Any, cfg: CrossCoderConfig, step: int) -> torch.Tensor:
    """`step`'s batch: this rank's share of a cache's batch order, or the stream's next draw."""
    if isinstance(source, RowStream):
        return source.draw(cfg.batch_size)
    rank, world = rank_world()
    return source[batch_indices(cfg, step, len(source), rank, world)]


def lr_factor(cfg: CrossCoderConfig, step: int) -> float:
    return min(1.0, (step + 1) / max(1, cfg.warmup_steps))


def fve(recon: torch.Tensor, target: torch.Tensor, n_models: int) -> list[float]:
    """Fraction of variance explained, per model, on one batch."""
    r = recon.reshape(recon.shape[0], n_models, -1)
    t = target.reshape(target.shape[0], n_models, -1)
    resid = (r - t).pow(2).sum((0, 2))
    total = (t - t.mean(0)).pow(2).sum((0, 2)).clamp_min(1e-12)
    return (1 - resid / total).tolist()


def train_crosscoder(cfg: CrossCoderConfig, acts: Any, out: str | Path | None = None,
                     resume: bool = True, progress: bool = True,
                     on_metrics: Callable[[dict], None] | None = None) -> CrossCoderBase:
    """Train a crosscoder on `acts`: an [N, n_models, d_model] tensor, an activation directory, or a RowStream
    (activations computed on the fly). `on_metrics` receives every metrics row (every cfg.log_every steps)."""

    source = as_source(acts, cfg)
    model = build_crosscoder(cfg).to(cfg.device)
    sample = first_rows(source, INIT_ROWS).to(cfg.device)
    model.init_from_data(sample)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=(0.9, 0.999), fused=True)
    since_fired = torch.zeros(cfg.n_latents, dtype=torch.long, device=cfg.device)
    out = Path(out) if out else None
    if out:
        out.mkdir(parents=True, exist_ok=True)
    start = 0
    if out and resume and (out / CHECKPOINT_FILE).exists():
        start, since_fired = load_checkpoint(out, model, opt)
        log.info("resuming from step %d", start)
    ddp = _ddp_wrap(model)
    t0, rows_seen = time.perf_counter(), 0
    bar = tqdm(range(start, cfg.n_steps), desc="crosscoder", disable=None if progress else True,
               initial=start, total=cfg.n_steps)
    for step in bar:
        info = train_step(model, ddp, opt, source, cfg, step, since_fired)
        rows_seen += cfg.batch_size
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.n_steps:
            row = metrics_row(cfg, step, info, since_fired, rows_seen / (time.perf_counter() - t0))
            bar.set_postfix(loss=f"{row['loss']:.4f}", fve=f"{min(row['fve']):.3f}", l0=f"{row['l0']:.1f}")
            if out and _is_main():
                _append_jsonl(out / METRICS_FILE, row)
            if on_metrics is not None and _is_main():
                on_metrics(row)
        if out and cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0 and _is_main():
            save_checkpoint(out, model, opt, step + 1, since_fired)
    if out and _is_main():
        model.save(out)
    return model


def train_step(model: CrossCoderBase, ddp: Any, opt: torch.optim.Optimizer, source: Any, cfg: CrossCoderConfig,
               step: int, since_fired: torch.Tensor) -> dict:
    x = next_batch(source, cfg, step).to(cfg.device)
    for group in opt.param_groups:
        group["lr"] = cfg.lr * lr_factor(cfg, step)
    dead = since_fired >= cfg.dead_after
    loss, info = (ddp or model)(x, current_k(cfg, step), dead)
    if not torch.isfinite(loss):
        raise FloatingPointError(
            f"crosscoder loss became {loss.item()} at step {step}: lower lr (now {cfg.lr}) or check the "
            "activations for inf/NaN"
        )
    opt.zero_grad(set_to_none=True)
    loss.backward()  # DDP averages gradients across ranks here
    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    opt.step()
    model.mask_padding()
    fired = torch.zeros_like(dead)
    fired[info["fired"]] = True
    _all_reduce_fired(fired)
    since_fired.add_(1).masked_fill_(fired, 0)
    info["loss"] = loss.detach()
    return info


def metrics_row(cfg: CrossCoderConfig, step: int, info: dict, since_fired: torch.Tensor, rows_per_s: float) -> dict:
    return {
        "step": step + 1, "loss": float(info["loss"]), "mse": float(info["mse"]), "aux": float(info["aux"]),
        "fve": fve(info["recon"].float(), info["target"].float(), cfg.n_models), "l0": float(info["l0"]),
        "k": current_k(cfg, step), "dead_fraction": float((since_fired >= cfg.dead_after).float().mean()),
        "rows_per_s": round(rows_per_s, 1),
    }


def _append_jsonl(path: Path, row: dict) -> None:
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")


# -- checkpoints ---------------------------------------------------------------------------------------
def save_checkpoint(out: Path, model: CrossCoderBase, opt: torch.optim.Optimizer, step: int,
                    since_fired: torch.Tensor) -> None:
    """Model, Adam moments and counters in one safetensors file (written atomically)."""

    tensors = {f"model.{k}": v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    names = {id(p): n for n, p in model.named_parameters()}
    for p, state in opt.state.items():
        for key, value in state.items():
            tensors[f"opt.{names[id(p)]}.{key}"] = torch.as_tensor(value).contiguous().cpu()
    tensors["since_fired"] = since_fired.cpu()
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".{CHECKPOINT_FILE}.tmp"
    save_file(tensors, str(tmp), metadata={"step": str(step)})
    tmp.replace(out / CHECKPOINT_FILE)


def load_checkpoint(out: Path, model: CrossCoderBase, opt: torch.optim.Optimizer) -> tuple[int, torch.Tensor]:
    path = out / CHECKPOINT_FILE
    try:
        with safe_open(str(path), "pt") as f:
            step = int(f.metadata()["step"])
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no items()
    except Exception as e:
        raise ValueError(f"checkpoint {path} is corrupt ({e}); delete it to start over") from None
    device = next(model.parameters()).device
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    params = dict(model.named_parameters())
    for name, p in params.items():
        state = {key.rsplit(".", 1)[1]: v.to(device) for key, v in tensors.items()
                 if key.startswith(f"opt.{name}.") and key.count(".") == name.count(".") + 2}
        if state:
            state["step"] = state["step"].cpu()
            opt.state[p] = state
    return step, tensors["since_fired"].to(device)


# -- data parallel (torchrun) ------------------------------------------------------------------------
def _is_main() -> bool:
    return rank_world()[0] == 0


def _ddp_wrap(model: CrossCoderBase) -> Any:
    """DistributedDataParallel under torchrun (gloo on CPU, NCCL on GPU); None in one process."""
    if rank_world()[1] == 1:
        return None

    device_ids = [model.b_enc.device.index] if model.b_enc.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids, broadcast_buffers=False)


def _all_reduce_fired(fired: torch.Tensor) -> None:
    if rank_world()[1] > 1:
        as_int = fired.to(torch.int32)
        dist.all_reduce(as_int, op=dist.ReduceOp.MAX)
        fired.copy_(as_int.bool())
