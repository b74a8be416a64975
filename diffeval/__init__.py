"""diffeval: explain why a fine-tuned language model scores differently from the model it came from.

The public API (loaded on first use, so `import diffeval` and `diffeval --help` stay instant)::

    import diffeval
    run_dir = diffeval.run(diffeval.RunConfig(base="org/model", tuned="org/model-it"), "runs/x")
    report = diffeval.load_report(run_dir / "report.json")

Subpackages: `diffeval.harness` (configuration, stages, pipeline, CLI, organisms), `diffeval.crosscoders`
(a crosscoder library of its own), `diffeval.tasks` (shipped lm-eval tasks, taxonomy, probe corpora),
`diffeval.reports` and `diffeval.leaderboards`.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

__version__ = "0.1.0"

# OpenMP worker threads spin for a while after each parallel region (about 300 000 times by default). Beside
# other processes that spinning takes the cores from the main thread's sequential work (a sort of the active
# latents, an embedding_bag backward); workers that sleep at once (OMP_WAIT_POLICY=PASSIVE) then wake too
# late for the next of a small model's many short kernels, and a toy organism's training step takes 1.6x as
# long on an idle machine. A short spin keeps most of both: benches/bench_omp_wait.py measures the settings on
# both kinds of work, idle and busy (docs/development.md has the numbers). Set before torch loads OpenMP,
# and never over a user's own setting of either variable.
if "torch" not in sys.modules and not {"OMP_WAIT_POLICY", "GOMP_SPINCOUNT"} & set(os.environ):
    os.environ["GOMP_SPINCOUNT"] = "1000"

# public name -> module that defines it
_API = {
    "run": "diffeval.harness.pipeline.chain",
    "RunConfig": "diffeval.harness.core.runconfig",
    "BenchConfig": "diffeval.harness.core.config",
    "DiffevalError": "diffeval.harness.core.errors",
    "CrossCoderConfig": "diffeval.crosscoders.config",
    "train_crosscoder": "diffeval.crosscoders.train",
    "load_crosscoder": "diffeval.crosscoders.architectures",
    "render_report": "diffeval.reports.render",
    "load_report": "diffeval.reports.schema",
    "publish": "diffeval.leaderboards.api",
}

__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name not in _API:
        raise AttributeError(f"module 'diffeval' has no attribute {name!r}")
    value = getattr(importlib.import_module(_API[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
