"""Crosscoder training steps with OpenMP's default waiting (workers spin a while after each parallel region:
OMP_WAIT_POLICY unset) vs workers that sleep at once (PASSIVE, what `import diffeval` sets unless told
otherwise), on an idle machine and beside `--busy N` processes that keep the cores loaded.

The policy is read when torch loads OpenMP, so each setting runs in a child process of its own (which imports
torch before diffeval, so the unset case stays unset); the two
alternate (A B A B …, `--repeats` pairs) so they share the machine's noise, and the parent prints each
one's median step time and the ratio.

    python -m benches.bench_omp_wait [--steps 30] [--repeats 3] [--busy 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

CHILD = r"""
import json, sys, time, torch
from diffeval.crosscoders import CrossCoderConfig
from diffeval.crosscoders.train import build_crosscoder
steps = int(sys.argv[1])
torch.manual_seed(0)
cfg = CrossCoderConfig(d_model=576, n_models=2, n_latents=4096, k=32, batch_size=1024, dtype="float32")
basis, z = torch.randn(64, 576), torch.randn(8192, 64)
data = torch.stack([z @ basis + 0.3 * torch.randn(8192, 576), z @ basis + 0.3 * torch.randn(8192, 576)], 1)
model = build_crosscoder(cfg)
model.init_from_data(data[:4096])
opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
dead = torch.zeros(cfg.n_latents, dtype=torch.bool)
dead[::8] = True  # the auxiliary loss runs as in training once latents die
times = []
for step in range(steps + 3):
    x = data[(step * 1024) % (len(data) - 1024):][:1024]
    t0 = time.perf_counter()
    loss = model.training_loss(x, cfg.k, dead)[0]
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    times.append(time.perf_counter() - t0)
print(json.dumps({"step_s": sorted(times[3:])[len(times[3:]) // 2], "threads": torch.get_num_threads()}))
"""

LOAD = "import torch\na, b = torch.randn(768, 768), torch.randn(768, 768)\nwhile True:\n    a @ b\n"


def child(policy: str | None, steps: int) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"} | ({"OMP_WAIT_POLICY": policy} if policy else {})
    out = subprocess.run([sys.executable, "-c", CHILD, str(steps)], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--busy", type=int, default=0, help="processes that keep the cores loaded meanwhile")
    args = ap.parse_args()
    load = [subprocess.Popen([sys.executable, "-c", LOAD], env={**os.environ, "OMP_NUM_THREADS": "1"})
            for _ in range(args.busy)]
    try:
        time.sleep(1 if load else 0)
        runs: dict[str, list[float]] = {"default": [], "PASSIVE": []}
        for _ in range(args.repeats):
            for policy in runs:
                runs[policy].append(child(None if policy == "default" else policy, args.steps)["step_s"])
    finally:
        for p in load:
            p.kill()
    default, passive = (statistics.median(runs[p]) for p in ("default", "PASSIVE"))
    print(f"{os.cpu_count()} cores, {args.busy} busy processes beside, d_model 576, 4096 latents, k 32, batch 1024")
    print(f"OMP_WAIT_POLICY unset    {1000 * default:7.1f} ms/step")
    print(f"OMP_WAIT_POLICY=PASSIVE  {1000 * passive:7.1f} ms/step   speed-up {default / passive:.2f}x")


if __name__ == "__main__":
    main()
