"""The auxiliary dead-latent loss: its sparse path against its dense one, over the share of dead latents that
its top aux_k keeps (k_aux / n_dead, the density that `crosscoders.config.DENSE_AUX_DENSITY` switches on).

Per size and dead count, both paths compute the same loss and gradients from the same model and batch
(tests/crosscoders/test_sparse.py checks that they agree); they alternate step by step in one process, and the
bench prints each one's median time for the loss's forward and backward and the dense path's speed-up. The
first size is the quick start's crosscoder (toyworld: hidden 96, 768 latents; 150 to 400 of them dead through
most of its training).

    python -m benches.bench_aux [--steps 20] [--device cpu]
"""

from __future__ import annotations

import statistics
import time

import torch

from benches.common import parse, sync
from diffeval.crosscoders import CrossCoderConfig, config
from diffeval.crosscoders.train import build_crosscoder

CASES = [(96, 768, 270), (96, 768, 2000 // 3), (576, 4096, 512), (576, 4096, 1024), (576, 4096, 2048)]


def aux_time(model, x: torch.Tensor, dead: torch.Tensor, density: int, device: torch.device) -> float:
    config.DENSE_AUX_DENSITY = density
    model.zero_grad(set_to_none=True)
    sync(device)
    t0 = time.perf_counter()
    xf = model.flat_in(x)
    with torch.no_grad():
        pre = torch.addmm(model.b_enc, xf, model.enc_matrix().t()).relu_()
    model._aux_loss(pre, xf, torch.randn_like(xf), dead).backward()
    sync(device)
    return time.perf_counter() - t0


def main() -> None:
    args, device = parse(__doc__, {"steps": 20})
    saved = config.DENSE_AUX_DENSITY
    print(f"{torch.get_num_threads()} threads, {device}, batch 1024, aux_k 256")
    print(f"{'d_model':>7} {'latents':>7} {'dead':>5} {'density':>7} {'sparse ms':>9} {'dense ms':>9} {'dense speed-up':>14}")
    try:
        for d, L, n_dead in CASES:
            cfg = CrossCoderConfig(d_model=d, n_models=2, n_latents=L, k=32, batch_size=1024, device=str(device))
            model = build_crosscoder(cfg).to(device)
            x = torch.randn(1024, 2, d, device=device)
            model.init_from_data(x)
            dead = torch.zeros(L, dtype=torch.bool, device=device)
            dead[torch.randperm(L, device=device)[:n_dead]] = True
            times = {"sparse": [], "dense": []}
            for _ in range(args.steps + 2):
                times["sparse"].append(aux_time(model, x, dead, 0, device))
                times["dense"].append(aux_time(model, x, dead, 10**9, device))
            sparse, dense = (1000 * statistics.median(t[2:]) for t in (times["sparse"], times["dense"]))
            density = min(cfg.aux_k, n_dead) / n_dead
            print(f"{d:>7} {L:>7} {n_dead:>5} {density:>7.2f} {sparse:>9.1f} {dense:>9.1f} {sparse / dense:>13.2f}x")
    finally:
        config.DENSE_AUX_DENSITY = saved
    print(f"diffeval runs the dense path where the density is at least 1/{saved}")


if __name__ == "__main__":
    main()
