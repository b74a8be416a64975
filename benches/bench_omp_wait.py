"""Training steps under OpenMP's waiting settings, on an idle machine and beside `--busy N` processes that keep
the cores loaded: OpenMP's default (workers spin about 300 000 times after each parallel region), PASSIVE
(they sleep at once) and a short spin (`GOMP_SPINCOUNT`, what `import diffeval` sets unless told otherwise).

Two kinds of step: the crosscoder's (d_model 576, 4096 latents, k 32, batch 1024, a third of the latents dead
so that the auxiliary loss runs) and a toy organism's language-model step (hidden 96, 3 blocks, batch 64 of
padded rows up to 46 tokens: many small kernels with short gaps between them).

The settings are read when torch loads OpenMP, so each runs in a child process of its own (which imports torch
before diffeval, so the environment given is the one OpenMP sees). They alternate (A B C A B C …, `--repeats`
rounds) so they share the machine's noise, and the parent prints each one's median step time and its ratio to
the default's.

    python -m benches.bench_omp_wait [--steps 20] [--repeats 3] [--busy 2] [--job crosscoder|lm|both]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

CROSSCODER = r"""
from diffeval.crosscoders import CrossCoderConfig
from diffeval.crosscoders.train import build_crosscoder
torch.manual_seed(0)
cfg = CrossCoderConfig(d_model=576, n_models=2, n_latents=4096, k=32, batch_size=1024, dtype="float32")
basis, z = torch.randn(64, 576), torch.randn(8192, 64)
data = torch.stack([z @ basis + 0.3 * torch.randn(8192, 576), z @ basis + 0.3 * torch.randn(8192, 576)], 1)
model = build_crosscoder(cfg)
model.init_from_data(data[:4096])
opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
dead = torch.zeros(cfg.n_latents, dtype=torch.bool)
dead[::3] = True  # the auxiliary loss runs as in training once latents die

def step_loss(step):
    return model.training_loss(data[(step * 1024) % (len(data) - 1024):][:1024], cfg.k, dead)[0]
"""

LANGUAGE_MODEL = r"""
from diffeval.harness.organisms.tiny import tiny_llama
model = tiny_llama(384, 0, hidden=96, layers=3, heads=4).train()
opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
g = torch.Generator().manual_seed(0)
ids = torch.randint(3, 384, (64, 46), generator=g)
mask = (torch.arange(46)[None] < torch.randint(8, 47, (64,), generator=g)[:, None]).long()

def step_loss(step):
    return model(input_ids=ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100)).loss
"""

# what each job's child runs around its setup: torch first (so the environment given is the one OpenMP sees),
# then the job's `model`, `opt` and `step_loss`, then the timed training steps
PROLOGUE = "import json, statistics, sys, time, torch\nsteps = int(sys.argv[1])\n"
TIMED_STEPS = r"""
times = []
for step in range(steps + 3):
    t0 = time.perf_counter()
    loss = step_loss(step)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    times.append(time.perf_counter() - t0)
print(json.dumps({"step_s": statistics.median(times[3:])}))
"""

JOBS = {"crosscoder": CROSSCODER, "lm": LANGUAGE_MODEL}
SETTINGS = {
    "OpenMP default": {},
    "OMP_WAIT_POLICY=PASSIVE": {"OMP_WAIT_POLICY": "PASSIVE"},
    "GOMP_SPINCOUNT=1000 (diffeval's)": {"GOMP_SPINCOUNT": "1000"},
    "GOMP_SPINCOUNT=10000": {"GOMP_SPINCOUNT": "10000"},
}
LOAD = "import torch\na, b = torch.randn(768, 768), torch.randn(768, 768)\nwhile True:\n    a @ b\n"


def child(code: str, env_extra: dict[str, str], steps: int) -> float:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")} | env_extra
    out = subprocess.run([sys.executable, "-c", PROLOGUE + code + TIMED_STEPS, str(steps)], env=env, capture_output=True,
                         text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["step_s"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--busy", type=int, default=0, help="processes that keep the cores loaded meanwhile")
    ap.add_argument("--job", choices=[*JOBS, "both"], default="both")
    args = ap.parse_args()
    jobs = list(JOBS) if args.job == "both" else [args.job]
    load = [subprocess.Popen([sys.executable, "-c", LOAD], env={**os.environ, "OMP_NUM_THREADS": "1"})
            for _ in range(args.busy)]
    try:
        time.sleep(1 if load else 0)
        runs = {(job, name): [] for job in jobs for name in SETTINGS}
        for _ in range(args.repeats):
            for job in jobs:
                for name, env in SETTINGS.items():
                    runs[job, name].append(child(JOBS[job], env, args.steps))
    finally:
        for p in load:
            p.kill()
    print(f"{os.cpu_count()} cores, {args.busy} busy processes beside, median of {args.repeats} runs of {args.steps} steps")
    for job in jobs:
        default = statistics.median(runs[job, "OpenMP default"])
        for name in SETTINGS:
            t = statistics.median(runs[job, name])
            print(f"{job:<10} {name:<34} {1000 * t:8.1f} ms/step   speed-up over the default {default / t:.2f}x")


if __name__ == "__main__":
    main()
