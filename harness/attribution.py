"""Category shifts, task exposure and the attribution of benchmark deltas (shared/DESIGN.md).

Category shift (paper-compatible, Boughorbel et al. 2025): over tuned-specific (T) and base-specific (B)
latents, shift_c = (n_c^T/N^T)/(n_c^B/N^B) − 1, always with its four counts, Fisher's exact p and a
bootstrap CI (latents resampled within T and within B). It is undefined when n_c^B = 0; for the
attribution we then use a smoothed log share ratio, log((n_c^T+½)/(N^T+1)) − log((n_c^B+½)/(N^B+1)),
which is finite, symmetric in T and B, and equals log(1 + shift_c) for large counts.
Mass shift: Σ_{j∈c} f_j‖d_j^T‖ / Σ_{j∈c} f_j‖d_j^B‖ − 1 over all of c's latents on the evaluation
corpus, CI by resampling sequences.
Exposure: w_{t,c} = max(0, a_{t,c}/a_c − 1), where a is category c's mean latent activation per token on
task t's prompts and on the whole corpus (how much more than usual the task engages c's latents).
Predicted Δ_t = Σ_c w_{t,c}·s_c; Spearman against the observed deltas with an exact or Monte-Carlo
permutation p-value.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

MIN_COUNT = 10     # n_c^T + n_c^B below this: too few latents to support a claim
MIN_SPECIFIC = 10  # N^T or N^B below this: too few model-specific latents for share ratios


@dataclass(frozen=True)
class ShareCounts:
    n_tuned: int
    N_tuned: int
    n_base: int
    N_base: int


def share_shift(c: ShareCounts) -> float | None:
    """(n_T/N_T)/(n_B/N_B) − 1, or None where it is undefined."""
    if c.N_tuned == 0 or c.N_base == 0 or c.n_base == 0:
        return None
    return (c.n_tuned / c.N_tuned) / (c.n_base / c.N_base) - 1


def log_share_ratio(c: ShareCounts) -> float:
    """Smoothed log share ratio (finite for any counts; ≈ log(1 + shift) for large counts)."""
    return math.log((c.n_tuned + 0.5) / (c.N_tuned + 1)) - math.log((c.n_base + 0.5) / (c.N_base + 1))


def fisher_p(c: ShareCounts) -> float | None:
    from scipy.stats import fisher_exact

    if c.N_tuned == 0 or c.N_base == 0:
        return None
    return float(fisher_exact([[c.n_tuned, c.N_tuned - c.n_tuned], [c.n_base, c.N_base - c.n_base]]).pvalue)


def shift_ci(c: ShareCounts, n_boot: int = 4000, level: float = 0.95, seed: int = 0) -> tuple[float | None, float | None]:
    """Percentile bootstrap CI of share_shift, resampling latents within T and within B.

    An infinite bootstrap replicate (no base-specific latent of c drawn) makes the upper end unbounded (None).
    """
    if c.N_tuned == 0 or c.N_base == 0:
        return None, None
    rng = np.random.default_rng(seed)
    t = rng.binomial(c.N_tuned, c.n_tuned / c.N_tuned, n_boot) / c.N_tuned
    b = rng.binomial(c.N_base, c.n_base / c.N_base, n_boot) / c.N_base
    with np.errstate(divide="ignore", invalid="ignore"):
        s = np.where(b > 0, t / np.where(b > 0, b, 1) - 1, np.inf)
    s = np.where((b == 0) & (t == 0), np.nan, s)  # 0/0: neither model has such latents in this replicate
    s = s[~np.isnan(s)]
    if len(s) == 0:
        return None, None
    lo = np.quantile(s, (1 - level) / 2, method="lower")  # no interpolation: replicates may be infinite
    hi = np.quantile(s, (1 + level) / 2, method="higher")
    return float(lo), (float(hi) if np.isfinite(hi) else None)


def category_shift_row(category: str, c: ShareCounts, n_boot: int = 4000, seed: int = 0) -> dict[str, Any]:
    shift = share_shift(c)
    lo, hi = shift_ci(c, n_boot, seed=seed)
    small = c.n_tuned + c.n_base < MIN_COUNT or min(c.N_tuned, c.N_base) < MIN_SPECIFIC
    note = None
    if small:
        note = (f"only {c.n_tuned}+{c.n_base} {category} latents among {c.N_tuned} tuned- and {c.N_base} "
                "base-specific ones: too few to support a claim")
    elif shift is None:
        note = "no base-specific latent in this category: the share ratio is unbounded"
    return {"category": category, "n_tuned": c.n_tuned, "n_base": c.n_base, "N_tuned": c.N_tuned,
            "N_base": c.N_base, "shift": shift, "shift_pct": None if shift is None else round(100 * shift, 1),
            "log_share_ratio": log_share_ratio(c), "ci_low": lo, "ci_high": hi, "p_value": fisher_p(c),
            "small_counts": small, "note": note}


def mass_shift(mass: np.ndarray, n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> list[dict[str, Any]]:
    """Per group: tuned/base decoded mass − 1 with a sequence-bootstrap CI. mass [S, G, 2] (base, tuned)."""
    rng = np.random.default_rng(seed)
    total = mass.sum(0)  # [G, 2]
    boots = np.stack([mass[rng.integers(0, len(mass), len(mass))].sum(0) for _ in range(n_boot)])  # [n_boot, G, 2]
    out = []
    for g in range(mass.shape[1]):
        if total[g, 0] <= 0:
            out.append({"mass_shift": None, "mass_ci_low": None, "mass_ci_high": None})
            continue
        with np.errstate(divide="ignore", invalid="ignore"):
            r = boots[:, g, 1] / boots[:, g, 0] - 1
        r = r[np.isfinite(r)]
        lo, hi = np.quantile(r, [(1 - level) / 2, (1 + level) / 2]) if len(r) else (None, None)
        out.append({"mass_shift": float(total[g, 1] / total[g, 0] - 1),
                    "mass_ci_low": None if lo is None else float(lo), "mass_ci_high": None if hi is None else float(hi)})
    return out


def exposure(act: np.ndarray, tokens: np.ndarray, task_of_seq: list[str | None], tasks: list[str]) -> np.ndarray:
    """w [n_tasks, G]: excess of each group's per-token activation on a task's prompts over the corpus."""
    corpus = act.sum(0) / max(tokens.sum(), 1)  # [G]
    labels = np.asarray(task_of_seq, dtype=object)
    w = np.zeros((len(tasks), act.shape[1]))
    for i, t in enumerate(tasks):
        sel = labels == t
        if sel.any():
            per_tok = act[sel].sum(0) / max(tokens[sel].sum(), 1)
            with np.errstate(divide="ignore", invalid="ignore"):
                w[i] = np.where(corpus > 0, np.maximum(per_tok / np.where(corpus > 0, corpus, 1) - 1, 0), 0)
    return w


def spearman_with_p(pred: np.ndarray, obs: np.ndarray, n_resamples: int = 20000, seed: int = 0) -> tuple[float | None, float | None, str | None]:
    """Spearman's ρ and a two-sided permutation p-value (exact when scipy can enumerate)."""
    from scipy.stats import permutation_test, spearmanr

    if len(pred) < 3:
        return None, None, f"{len(pred)} task(s): a correlation needs at least 3"
    if np.ptp(pred) == 0 or np.ptp(obs) == 0:
        which = "predicted" if np.ptp(pred) == 0 else "observed"
        return None, None, f"all {which} deltas are equal: the rank correlation is undefined"
    rho = float(spearmanr(pred, obs).statistic)
    res = permutation_test((pred, obs), lambda x, y: spearmanr(x, y).statistic, permutation_type="pairings",
                           n_resamples=n_resamples, alternative="two-sided", random_state=seed)
    return rho, float(res.pvalue), None


def attribute(w: np.ndarray, shifts: np.ndarray, tasks: list[str], categories: list[str],
              observed: dict[str, float], task_category: dict[str, str]) -> dict[str, Any]:
    """Predicted Δ_t = Σ_c w_{t,c}·shift_c, its split into category contributions, and Spearman vs observed."""
    contrib = w * shifts[None, :]  # [n_tasks, G]
    pred = contrib.sum(1)
    rows = [{"task": t, "category": task_category.get(t), "delta": observed[t], "predicted": float(pred[i]),
             "contributions": {c: float(contrib[i, g]) for g, c in enumerate(categories)}}
            for i, t in enumerate(tasks)]
    rho, p, reason = spearman_with_p(pred, np.array([observed[t] for t in tasks]))
    return {"spearman": rho, "p_value": p, "reason": reason, "n_tasks": len(tasks), "per_task": rows}
