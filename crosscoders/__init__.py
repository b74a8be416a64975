"""Crosscoders for model diffing: models, training, latent statistics. Usable on its own:

    from diffeval.crosscoders import CrossCoderConfig, train_crosscoder
    cc = train_crosscoder(CrossCoderConfig(d_model=64, n_models=2, n_latents=512, k=8), acts)
    rows = cc.latent_stats(acts)

Names load on first use, so `diffeval.crosscoders.config` (no torch) is cheap to import.
"""

from __future__ import annotations

import importlib
from typing import Any

_API = {
    "ARCHITECTURES": "config", "CrossCoderConfig": "config",
    "CrossCoderBase": "base", "BatchTopKCrossCoder": "batchtopk", "L1CrossCoder": "l1",
    "build_crosscoder": "architectures", "load_crosscoder": "architectures", "train_crosscoder": "train",
    "from_dictionary_learning": "interop", "to_dictionary_learning": "interop",
}

__all__ = list(_API)


def __getattr__(name: str) -> Any:
    if name not in _API:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_API[name]}"), name)
