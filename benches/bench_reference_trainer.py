"""Crosscoder training throughput against the field's reference trainer: science-of-finetuning's
`dictionary_learning` BatchTopKCrossCoderTrainer, imported from a checkout of it, on the same shapes and
batches (d_model 576, 2 models, 4096 latents, k 32, batch 1024), alternating step by step in one process.
Prints rows/s of each, the ratio, and each one's held-out FVE after the same steps (batch top-k selection).

    git clone https://github.com/science-of-finetuning/dictionary_learning /path/dl   # and: pip install einops zstandard
    python -m benches.bench_reference_trainer --dictionary-learning /path/dl [--steps 200]

diffeval's trainer runs with its defaults (the bfloat16 selection forward, fused Adam); the reference with
lr 1e-3 and warmup 10 like ours. `import diffeval` comes first, as in any use of diffeval, so OpenMP's wait
waiting is diffeval's default for both (a short spin); `--torch-first` imports torch first (OpenMP's own default).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
import types
from pathlib import Path

ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ap.add_argument("--dictionary-learning", type=Path, required=True, help="a checkout of dictionary_learning")
ap.add_argument("--steps", type=int, default=200)
ap.add_argument("--torch-first", action="store_true", help="import torch before diffeval")
args = ap.parse_args()
# the first import decides OpenMP's wait policy: diffeval sets its default unless torch was loaded before it
importlib.import_module("torch" if args.torch_first else "diffeval")
import torch  # noqa: E402

from diffeval.crosscoders import CrossCoderConfig  # noqa: E402
from diffeval.crosscoders.train import build_crosscoder, fve, lr_factor  # noqa: E402

D, L, K, B = 576, 4096, 32, 1024


def reference_trainer(root: Path) -> type:
    """The reference trainer class, imported without running the package's __init__ (which needs nnsight)."""
    for name, sub in (("dictionary_learning", ""), ("dictionary_learning.trainers", "trainers")):
        module = types.ModuleType(name)
        module.__path__ = [str(root / "dictionary_learning" / sub)]
        sys.modules[name] = module
    return importlib.import_module("dictionary_learning.trainers.crosscoder").BatchTopKCrossCoderTrainer


def main() -> None:
    trainer_cls = reference_trainer(args.dictionary_learning.resolve())
    steps = args.steps
    torch.manual_seed(0)
    basis, z = torch.randn(64, D), torch.randn(steps * B + 8 * B, 64)
    data = torch.stack([z @ basis + 0.3 * torch.randn(len(z), D), z @ basis + 0.3 * torch.randn(len(z), D)], 1)
    held, data = data[-8 * B:], data[:-8 * B]
    cfg = CrossCoderConfig(d_model=D, n_models=2, n_latents=L, k=K, batch_size=B, n_steps=steps, warmup_steps=10)
    ours = build_crosscoder(cfg)
    ours.init_from_data(data[:4096])
    opt = torch.optim.Adam(ours.parameters(), lr=cfg.lr, fused=True)
    ref = trainer_cls(steps=steps, activation_dim=D, dict_size=L, k=K, layer=0, lm_name="bench", num_layers=2,
                      lr=cfg.lr, warmup_steps=10, device="cpu", seed=0)
    t_ours = t_ref = 0.0
    for step in range(steps):
        x = data[step * B:(step + 1) * B]
        t0 = time.perf_counter()
        for group in opt.param_groups:
            group["lr"] = cfg.lr * lr_factor(cfg, step)
        loss = ours.training_loss(x, K, None)[0]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(ours.parameters(), cfg.grad_clip)
        opt.step()
        t_ours += time.perf_counter() - t0
        t0 = time.perf_counter()
        ref.update(step, x.clone())  # the reference normalises its input in place
        t_ref += time.perf_counter() - t0
    with torch.no_grad():
        f_ours, f_ref = torch.zeros(2), torch.zeros(2)
        for start in range(0, len(held), B):
            xb = held[start:start + B]
            info = ours.training_loss(xb, K, None)[1]
            f_ours += torch.tensor(fve(info["recon"], info["target"], 2))
            recon = ref.ae.decode(ref.ae.encode(xb.clone(), use_threshold=False))
            f_ref += torch.tensor(fve(recon.reshape(B, -1), xb.reshape(B, -1), 2))
        f_ours, f_ref = f_ours / (len(held) // B), f_ref / (len(held) // B)
    waits = ", ".join(f"{v}={os.environ.get(v, 'unset')}" for v in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT"))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {waits}, {steps} steps of {B} rows")
    print(f"dictionary_learning BatchTopKCrossCoderTrainer {steps * B / t_ref:8.0f} rows/s   held-out FVE "
          f"{f_ref[0]:.3f} / {f_ref[1]:.3f}")
    print(f"diffeval                                       {steps * B / t_ours:8.0f} rows/s   held-out FVE "
          f"{f_ours[0]:.3f} / {f_ours[1]:.3f}   speed-up {t_ref / t_ours:.2f}x")


if __name__ == "__main__":
    main()
