"""Paired statistics for per-document scores of two models on the same documents."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats


@dataclass(frozen=True)
class PairedResult:
    n: int
    base: float
    tuned: float
    delta: float
    ci_low: float
    ci_high: float
    p_value: float
    test: str


def is_binary(*arrays: np.ndarray) -> bool:
    return all(np.isin(a, (0.0, 1.0)).all() for a in arrays)


def paired_bootstrap_ci(
    base: np.ndarray, tuned: np.ndarray, iters: int = 2000, alpha: float = 0.05, seed: int = 0
) -> tuple[float, float]:
    """Percentile CI of mean(tuned - base), resampling documents (pairs stay together)."""
    diff = np.asarray(tuned, float) - np.asarray(base, float)
    if len(diff) < 2 or np.all(diff == diff[0]):
        # every resample has the same mean; scipy rightly refuses a degenerate distribution
        d = float(diff.mean()) if len(diff) else float("nan")
        return d, d
    res = stats.bootstrap(
        (diff,), np.mean, n_resamples=iters, confidence_level=1 - alpha,
        method="percentile", random_state=np.random.default_rng(seed),
    )
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def mcnemar_p(base: np.ndarray, tuned: np.ndarray) -> float:
    """Exact McNemar test: a two-sided binomial test on the discordant pairs."""
    b = int(((base == 1) & (tuned == 0)).sum())
    c = int(((base == 0) & (tuned == 1)).sum())
    if b + c == 0:
        return 1.0
    return float(stats.binomtest(c, b + c, 0.5).pvalue)


def paired_permutation_p(base: np.ndarray, tuned: np.ndarray, iters: int = 2000, seed: int = 0) -> float:
    """Two-sided paired permutation test (random sign flips of the per-document differences)."""
    diff = np.asarray(tuned, float) - np.asarray(base, float)
    if np.all(diff == 0):
        return 1.0
    res = stats.permutation_test(
        (diff,), np.mean, permutation_type="samples", n_resamples=iters,
        alternative="two-sided", random_state=np.random.default_rng(seed),
    )
    return float(min(1.0, res.pvalue))


def paired_compare(base: np.ndarray, tuned: np.ndarray, iters: int = 2000, seed: int = 0) -> PairedResult:
    """Delta, paired bootstrap CI and the paired test suited to the metric (0/1 or continuous)."""
    base = np.asarray(base, float)
    tuned = np.asarray(tuned, float)
    if base.shape != tuned.shape or base.ndim != 1:
        raise ValueError(f"paired scores need equal 1-d shapes, got {base.shape} and {tuned.shape}")
    lo, hi = paired_bootstrap_ci(base, tuned, iters=iters, seed=seed)
    if is_binary(base, tuned):
        p, test = mcnemar_p(base, tuned), "mcnemar"
    else:
        p, test = paired_permutation_p(base, tuned, iters=iters, seed=seed), "paired_permutation"
    return PairedResult(
        n=len(base), base=float(base.mean()), tuned=float(tuned.mean()),
        delta=float(tuned.mean() - base.mean()), ci_low=lo, ci_high=hi, p_value=p, test=test,
    )
