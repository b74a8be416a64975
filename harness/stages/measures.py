"""Category shifts, task exposure and the attribution of benchmark deltas (docs/method.md).

Category shift (paper-compatible, Boughorbel et al. 2025): over tuned-specific (T) and base-specific (B)
latents, shift_c = (n_c^T/N^T)/(n_c^B/N^B) − 1, always with its four counts, Fisher's exact p and a
bootstrap CI (latents resampled within T and within B). It is undefined when n_c^B = 0; for the
attribution we then use a smoothed log share ratio, log((n_c^T+½)/(N^T+1)) − log((n_c^B+½)/(N^B+1)),
which is finite, symmetric in T and B, and equals log(1 + shift_c) for large counts.
Mass shift: Σ_{j∈c} f_j‖d_j^T‖ / Σ_{j∈c} f_j‖d_j^B‖ − 1 over all of c's latents on the evaluation
corpus, and relative to all latents' mass ratio (mass_shift_rel); CIs by resampling c's latents.
Changed latents: a category whose latents kept their inputs but changed their decoder direction in
fine-tuning (crosscoders/stats.py, `changed`) has no model-specific latents, so neither the share ratio
nor the mass shift sees it. changed_enrichment asks, per category, whether changed latents are
over-represented among its live latents (one-sided Fisher, BH across categories): an unsigned "this
category changed", not a direction.
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

from diffeval.harness.core.fdr import benjamini_hochberg
from diffeval.harness.core.runconfig import MIN_SPECIFIC

MIN_COUNT = 10     # n_c^T + n_c^B below this: too few latents to support a claim


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


def log_ratio(shift: float | None, floor: float = 0.01) -> float:
    """log(1 + shift) for the attribution, 0 when the shift is undefined; a category that lost (almost) all of
    its mass (shift → −100 %) gets log(floor) rather than −∞, so one vanished category cannot swamp the rest."""
    if shift is None:
        return 0.0
    return math.log(max(1 + shift, floor))


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


def mass_shift(latent_mass: np.ndarray, members: np.ndarray, n_boot: int = 2000, seed: int = 0,
               level: float = 0.95) -> dict[str, Any]:
    """A category's decoded-mass shift, plain and relative to all latents, with latent-bootstrap CIs.

    latent_mass [n_latents, 2]: Σ f_j‖d_j^m‖ over the evaluation corpus for model m = base, tuned.
    mass_shift = M_c^T/M_c^B − 1; mass_shift_rel = (M_c^T/M_c^B)/(M^T/M^B) − 1 asks whether the category
    grew more than the model as a whole (fine-tuning moves every decoder norm a little). The CI resamples
    the category's latents, so a shift carried by one or two latents gets the wide interval it deserves.
    """
    members = np.asarray(members, dtype=np.int64)
    whole = _ratio(latent_mass.sum(0))
    empty = {k: None for k in ("mass_shift", "mass_ci_low", "mass_ci_high", "mass_shift_rel", "mass_rel_ci_low",
                               "mass_rel_ci_high")}
    if len(members) == 0 or latent_mass[members, 0].sum() <= 0:
        return empty
    rng = np.random.default_rng(seed)
    picks = members[rng.integers(0, len(members), (n_boot, len(members)))]
    reps = _ratio(latent_mass[picks].sum(1).T)  # [n_boot]
    reps = reps[np.isfinite(reps)]
    point = float(_ratio(latent_mass[members].sum(0)))
    lo, hi = np.quantile(reps, [(1 - level) / 2, (1 + level) / 2])
    return {"mass_shift": point - 1, "mass_ci_low": float(lo) - 1, "mass_ci_high": float(hi) - 1,
            "mass_shift_rel": point / whole - 1, "mass_rel_ci_low": float(lo / whole) - 1,
            "mass_rel_ci_high": float(hi / whole) - 1}


def changed_enrichment(categories: list[str], changed: list[bool], names: list[str], alpha: float = 0.05) -> list[dict[str, Any]]:
    """Per category in `names`: n_changed, n_live, one-sided Fisher p and BH q (over `names`), changed_significant.

    categories[j] and changed[j] describe live latent j; the pipeline passes the latents of the named
    categories (not `unassigned`), so each category is compared with the other named ones.
    """
    from scipy.stats import fisher_exact


    cats = np.asarray(categories, dtype=object)
    moved = np.asarray(changed, dtype=bool)
    rows, ps = [], []
    for c in names:
        mine = cats == c
        table = [[int((mine & moved).sum()), int((mine & ~moved).sum())],
                 [int((~mine & moved).sum()), int((~mine & ~moved).sum())]]
        p = float(fisher_exact(table, alternative="greater").pvalue) if moved.any() and mine.any() else 1.0
        rows.append({"n_changed": table[0][0], "n_live": int(mine.sum())})
        ps.append(p)
    qs = benjamini_hochberg(np.array(ps)) if ps else np.array([])
    for row, p, q in zip(rows, ps, qs, strict=True):
        row.update(changed_p=p, changed_q=float(q), changed_significant=bool(q < alpha))
    return rows


def _ratio(pair: np.ndarray) -> Any:
    """tuned / base for a [2, …] array (inf/nan where the base mass is 0)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.asarray(pair[1], dtype=np.float64) / np.asarray(pair[0], dtype=np.float64)


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
    """Spearman's ρ and a two-sided permutation p-value (exact when scipy can enumerate).

    ρ is Pearson's r of the ranks, and re-pairing the samples only re-pairs their ranks, so the data are ranked
    once and every permutation's ρ is computed in one vectorised pass (8 tasks: all 40 320 pairings at once)."""
    from scipy.stats import permutation_test, rankdata

    if len(pred) < 3:
        return None, None, f"{len(pred)} task(s): a correlation needs at least 3"
    if np.ptp(pred) == 0 or np.ptp(obs) == 0:
        which = "predicted" if np.ptp(pred) == 0 else "observed"
        return None, None, f"all {which} deltas are equal: the rank correlation is undefined"
    res = permutation_test((rankdata(pred), rankdata(obs)), _pearson, permutation_type="pairings", vectorized=True,
                           n_resamples=n_resamples, alternative="two-sided", random_state=seed)
    return float(res.statistic), float(res.pvalue), None


def _pearson(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    xc, yc = x - x.mean(axis, keepdims=True), y - y.mean(axis, keepdims=True)
    return (xc * yc).sum(axis) / np.sqrt((xc * xc).sum(axis) * (yc * yc).sum(axis))


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


def usage_shift(base: np.ndarray, tuned: np.ndarray, base_all: np.ndarray | None = None,
                tuned_all: np.ndarray | None = None, n_boot: int = 4000, seed: int = 0) -> dict[str, Any]:
    """How much more (or less) a category's latents carry the tuned model's own responses than the base model's.

    base[i], tuned[i]: the category's decoded activation mass summed over each model's response to probe i
    (both read by both models; see harness/transcripts.py). usage_shift = Σ tuned / Σ base − 1, a paired
    bootstrap CI over probes, and a paired permutation p-value (under "the model does not matter" the two
    responses of a probe are exchangeable, so their labels are swapped at random). Identical responses give
    exactly 0 with CI [0, 0] and p = 1.
    With base_all / tuned_all (every latent's mass over the same responses), usage_shift_rel divides by the
    same ratio over all latents: the category's share of what each model writes, which does not move when one
    model merely writes longer or shorter answers (its CI from the same bootstrap replicates).
    """
    base, tuned = _snap_equal(base, tuned)
    out: dict[str, Any] = {"usage_shift": None, "usage_ci_low": None, "usage_ci_high": None, "usage_p": None,
                           "usage_shift_rel": None, "usage_rel_ci_low": None, "usage_rel_ci_high": None,
                           "usage_base": float(base.sum()), "usage_tuned": float(tuned.sum()), "n_probes": int(len(base))}
    if len(base) == 0 or base.sum() <= 0:
        return out
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(base), (n_boot, len(base)))
    b, t = base[idx].sum(1), tuned[idx].sum(1)
    ratios = np.where(b > 0, t / np.where(b > 0, b, 1), np.nan) - 1
    if base_all is not None and tuned_all is not None and np.sum(tuned_all) > 0:
        base_all, tuned_all = _snap_equal(base_all, tuned_all)
        ba, ta = base_all[idx].sum(1), tuned_all[idx].sum(1)
        with np.errstate(divide="ignore", invalid="ignore"):
            rel = (ratios + 1) * ba / ta - 1
        rel = rel[np.isfinite(rel)]
        out.update(usage_shift_rel=float(tuned.sum() / base.sum() * base_all.sum() / tuned_all.sum() - 1),
                   usage_rel_ci_low=float(np.quantile(rel, 0.025)), usage_rel_ci_high=float(np.quantile(rel, 0.975)))
    observed = abs(math.log(tuned.sum() / base.sum())) if tuned.sum() > 0 else math.inf
    swap = rng.random((n_boot, len(base))) < 0.5
    pb, pt = np.where(swap, tuned, base).sum(1), np.where(swap, base, tuned).sum(1)
    with np.errstate(divide="ignore"):
        null = np.abs(np.log(pt) - np.log(pb))
    out.update(usage_shift=float(tuned.sum() / base.sum() - 1),
               usage_ci_low=float(np.nanquantile(ratios, 0.025)), usage_ci_high=float(np.nanquantile(ratios, 0.975)),
               usage_p=float((1 + np.sum(null >= observed - 1e-12)) / (n_boot + 1)))  # identical responses: p = 1
    return out


def _snap_equal(base: Any, tuned: Any) -> tuple[np.ndarray, np.ndarray]:
    """Both as float64, with tuned set to base where they agree to float rounding (identical responses are read
    in different batches, so their sums differ in the last bits)."""
    base, tuned = np.asarray(base, dtype=np.float64), np.asarray(tuned, dtype=np.float64)
    return base, np.where(np.isclose(tuned, base, rtol=1e-5, atol=1e-8), base, tuned)
