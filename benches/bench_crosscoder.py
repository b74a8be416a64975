"""Crosscoder training throughput: diffeval's sparse BatchTopK path vs a plain dense BatchTopK.

Both train from the same initialisation on the same batches (d_model 576, 2 models, 4096 latents,
k 32, batch 1024, fp32, no auxiliary loss so the two compute the same objective), side by side
in one process. Prints rows/s for each, the ratio, and both final losses.

    python -m benches.bench_crosscoder [--steps 60] [--rows 65536] [--device cuda]
"""

from __future__ import annotations

import copy
import dataclasses
import time

import torch

from benches.common import parse, sync
from diffeval.crosscoders import CrossCoderConfig
from diffeval.crosscoders.config import encoder_dtype
from diffeval.crosscoders.train import build_crosscoder, current_k, lr_factor


def dense_loss(model, x: torch.Tensor, k: int) -> torch.Tensor:
    """The textbook BatchTopK forward: dense pre-activations, dense mask, dense decode."""
    xf = model.flat_in(x)
    pre = torch.relu(xf @ model.enc_matrix().t() + model.b_enc)  # [B, L]
    scores = pre * model.dec_norms().sum(-1)
    flat = scores.flatten()
    mask = torch.zeros_like(flat, dtype=torch.bool)
    mask[flat.topk(k * x.shape[0]).indices] = True
    f = pre * mask.view_as(pre)
    recon = f @ model.W_dec.reshape(f.shape[1], -1) + model.b_dec.reshape(1, -1)
    return (recon - xf).pow(2).sum(-1).mean()


def run(model, cfg, data: torch.Tensor, steps: int, dense: bool) -> tuple[float, float]:
    # the baseline uses torch's default Adam; diffeval's trainer uses the fused one
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, fused=not dense)
    losses = []
    sync(data.device)
    t0 = time.perf_counter()
    for step in range(steps):
        x = data[(step * cfg.batch_size) % (len(data) - cfg.batch_size):][: cfg.batch_size]
        for g in opt.param_groups:
            g["lr"] = cfg.lr * lr_factor(cfg, step)
        k = current_k(cfg, step)
        loss = dense_loss(model, x, k) if dense else model.training_loss(x, k, None)[0]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        losses.append(loss.detach())
    sync(data.device)
    seconds = time.perf_counter() - t0
    losses = [x.item() for x in losses]
    tail = losses[-max(1, steps // 10):]
    return steps * cfg.batch_size / seconds, sum(tail) / len(tail)


def main() -> None:
    args, device = parse(__doc__, {"steps": 60, "rows": 65_536, "d_model": 576, "n_latents": 4096})
    cfg = CrossCoderConfig(d_model=args.d_model, n_models=2, n_latents=args.n_latents, k=32, batch_size=1024,
                           n_steps=args.steps, lr=1e-3, warmup_steps=5)
    # correlated synthetic activations: a shared low-rank part plus model-specific noise
    basis = torch.randn(64, args.d_model)
    z = torch.randn(args.rows, 64)
    data = torch.stack([z @ basis + 0.3 * torch.randn(args.rows, args.d_model),
                        z @ basis + 0.3 * torch.randn(args.rows, args.d_model)], 1)
    data = data.to(device)
    init = build_crosscoder(cfg).to(device)
    init.init_from_data(data[:4096])
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.get_num_threads()} threads"
    print(f"torch {torch.__version__}, {where}, d_model {args.d_model}, "
          f"{args.n_latents} latents, k 32, batch 1024, fp32 weights and data, {args.steps} steps")
    rate_d, loss_d = run(copy.deepcopy(init), cfg, data, args.steps, dense=True)
    print(f"dense BatchTopK (baseline)          {rate_d:8.0f} rows/s   final loss {loss_d:.4f}")
    print(f"dtype auto picks {encoder_dtype(args.device)} on this device")
    for dtype in ("float32", "bfloat16"):
        fast = copy.deepcopy(init)
        fast.cfg = dataclasses.replace(cfg, dtype=dtype)
        rate, loss = run(fast, fast.cfg, data, args.steps, dense=False)
        print(f"diffeval sparse, encoder in {dtype:<8} {rate:8.0f} rows/s   final loss {loss:.4f}   "
              f"speed-up {rate / rate_d:.2f}x   loss {100 * (loss - loss_d) / loss_d:+.2f} %")


if __name__ == "__main__":
    main()
