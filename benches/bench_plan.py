"""`diffeval plan`'s time estimates against finished runs: for each run directory, the estimated and the measured
seconds of the activation collection and the crosscoder training (from the run's manifest), and their ratio. The
crosscoder's estimate is a range (no dead latent to the auxiliary loss at full cost): a time inside it prints
"in range", one outside it its ratio to the nearer end.

    python -m benches.bench_plan RUN_DIR [RUN_DIR ...]

The estimate is read from the run's own config.json and models, so it is what `plan` printed before the run.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from diffeval.harness.core.config import from_dict
from diffeval.harness.core.runconfig import RunConfig
from diffeval.harness.pipeline.plan import estimates, pair_size

STAGES = {"activations": ("activations_s", "activations_s"), "crosscoder": ("crosscoder_s", "crosscoder_max_s")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path)
    args = ap.parse_args()
    print(f"{'run':<32} {'stage':<12} {'estimate':>17} {'measured':>9} {'measured / estimate':>20}")
    for run in args.runs:
        cfg = from_dict(RunConfig, json.loads((run / "config.json").read_text()), source=str(run / "config.json"))
        est = estimates(cfg, pair_size(cfg.tuned))
        stages = json.loads((run / "manifest.json").read_text())["stages"]
        for stage, (low, high) in STAGES.items():
            seconds = (stages.get(stage) or {}).get("seconds")
            if seconds is None or not est[low]:
                continue
            span = f"{est[low]:.0f}" + (f"-{est[high]:.0f}" if est[high] != est[low] else "")
            ratio = (f"{seconds / est[low]:.2f}" if seconds <= est[low] or est[high] == est[low] else
                     "within" if seconds <= est[high] else f"{seconds / est[high]:.2f}") + "x"
            print(f"{run.name[:32]:<32} {stage:<12} {span + ' s':>17} {seconds:8.0f}s {ratio.replace('withinx', 'in range'):>20}")


if __name__ == "__main__":
    main()
