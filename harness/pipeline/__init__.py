"""Chaining the stages over a run directory, `plan`'s estimate of what a run will cost, and the stage entry
points that the CLI and the organisms call one at a time (they reach the stages only through here).

Names load on first use, so a command's `--help` does not import the stages (and torch) behind them.
"""

from __future__ import annotations

import importlib
from typing import Any

_API = {
    "run": "chain", "run_from_latents": "chain",
    "collect_activations": "diffeval.harness.stages.activations",
    "deltas_table": "diffeval.harness.stages.bench", "load_deltas": "diffeval.harness.stages.bench",
    "run_bench": "diffeval.harness.stages.bench",
    "write_latents": "diffeval.harness.stages.latents",
}

__all__ = list(_API)


def __getattr__(name: str) -> Any:
    if name not in _API:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = _API[name] if "." in _API[name] else f"{__name__}.{_API[name]}"
    return getattr(importlib.import_module(module), name)
