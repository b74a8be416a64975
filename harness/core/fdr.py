"""Benjamini–Hochberg false discovery rate control, shared by the stages and the report."""

from __future__ import annotations

from typing import Any

import numpy as np


def benjamini_hochberg(p: Any) -> np.ndarray:
    """BH-adjusted q-values of any-shaped p-values (NaN treated as 1)."""
    flat = np.nan_to_num(np.asarray(p, dtype=np.float64).ravel(), nan=1.0)
    if flat.size == 0:
        return np.zeros(np.shape(p))
    order = np.argsort(flat)
    ranked = flat[order] * len(flat) / np.arange(1, len(flat) + 1)
    q = np.minimum.accumulate(ranked[::-1])[::-1].clip(max=1.0)
    out = np.empty_like(flat)
    out[order] = q
    return out.reshape(np.shape(p))
