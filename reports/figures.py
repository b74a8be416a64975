"""PNG figures of a report (matplotlib, Agg backend: no display needed).

Each figure function returns the path it wrote, or None (with a log line) when its data is
missing, so a report of a partial run still renders.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from diffeval.harness.core.files import FIGURES_DIR

log = logging.getLogger(__name__)

DELTA_NORM_HIST = "delta_norm_hist.png"
CATEGORY_SHIFTS = "category_shifts.png"
MASS_SHIFTS = "mass_shifts.png"
USAGE_SHIFTS = "usage_shifts.png"
PREDICTED_VS_OBSERVED = "predicted_vs_observed.png"
CONTRIBUTIONS = "contributions.png"
SUMMARY = "summary.png"
ALL_FIGURES = (SUMMARY, DELTA_NORM_HIST, CATEGORY_SHIFTS, MASS_SHIFTS, USAGE_SHIFTS, PREDICTED_VS_OBSERVED, CONTRIBUTIONS)


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    """Save to a temporary name, then rename: a reader never sees half a PNG."""

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
        _pyplot().close(fig)
    return path


def delta_norm_histogram(latents: list[dict[str, Any]] | None, path: Path) -> Path | None:
    """Δnorm of every live latent, with the class thresholds (0.1, 0.4–0.6, 0.9) marked."""
    values = [r["delta_norm"] for r in latents or [] if r.get("class") != "dead" and _is_number(r.get("delta_norm"))]
    if not values:
        log.info("figure %s skipped: no latents.jsonl with live latents", path.name)
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    ax.hist(values, bins=50, range=(0, 1), color="#4c72b0")
    for x in (0.1, 0.4, 0.6, 0.9):
        ax.axvline(x, color="grey", linestyle="--", linewidth=0.8)
    ax.set_yscale("log")
    ax.set_xlabel("Δnorm  (0 = base-only, ½ = shared, 1 = tuned-only)")
    ax.set_ylabel("latents (log)")
    ax.set_title(f"Relative decoder norm of {len(values)} live latents")
    return _save(fig, path)


def category_shifts(categories: list[dict[str, Any]], path: Path) -> Path | None:
    """Paper-compatible shift (%) per category with its bootstrap CI; undefined shifts are listed, not drawn."""
    return _shift_bars(categories, ("shift", "ci_low", "ci_high"), path,
                       lambda c: f"{c['n_tuned']}/{c['N_tuned']} vs {c['n_base']}/{c['N_base']}",
                       "shift (%) = (n_T/N_T)/(n_B/N_B) − 1, with 95% bootstrap CI")


def mass_shifts(categories: list[dict[str, Any]], path: Path) -> Path | None:
    """Relative mass shift (%) per category with its latent-bootstrap CI."""
    return _shift_bars(categories, ("mass_shift_rel", "mass_rel_ci_low", "mass_rel_ci_high"), path,
                       lambda c: f"{c.get('n_latents', '?')} latents",
                       "decoded-mass shift vs all latents (%), 95% CI over the category's latents")


def usage_shifts(categories: list[dict[str, Any]], path: Path) -> Path | None:
    """Relative usage shift (%) per category with its paired bootstrap CI over probe texts."""
    return _shift_bars(categories, ("usage_shift_rel", "usage_rel_ci_low", "usage_rel_ci_high"), path,
                       lambda c: f"{c.get('n_probes', '?')} probes",
                       "share of what the tuned vs the base model writes (%), 95% CI over probe texts")


def _shift_bars(categories: list[dict[str, Any]], keys: tuple[str, str, str], path: Path, note: Any,
                xlabel: str) -> Path | None:
    """Horizontal bars of one shift per category (in %) with CI whiskers; keys = (value, ci low, ci high)."""
    key, low, high = keys
    rows = [c for c in categories if c.get(key) is not None]
    if not rows:
        log.info("figure %s skipped: no defined %s", path.name, key)
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 0.5 * len(rows) + 1.2))
    y = list(range(len(rows)))
    vals = [100 * c[key] for c in rows]
    lo = [v - 100 * c[low] if c.get(low) is not None else 0 for v, c in zip(vals, rows, strict=True)]
    hi = [100 * c[high] - v if c.get(high) is not None else 0 for v, c in zip(vals, rows, strict=True)]
    ax.barh(y, vals, xerr=[lo, hi], color=["#55a868" if v > 0 else "#c44e52" for v in vals], capsize=3)
    ax.set_yticks(y, [f"{_label(c['category'])} ({note(c)})" for c in rows])
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_xlabel(xlabel)
    ax.invert_yaxis()
    return _save(fig, path)


def predicted_vs_observed(per_task: list[dict[str, Any]], path: Path) -> Path | None:
    """Each task's observed Δ against Δ predicted from category shifts and exposure."""
    rows = [r for r in per_task if r["predicted"] is not None]
    if not rows:
        log.info("figure %s skipped: no attribution per task", path.name)
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 4.5))
    xs, ys = [r["predicted"] for r in rows], [r["delta"] for r in rows]
    ax.scatter(xs, ys, color="#4c72b0")
    for r in rows:
        ax.annotate(_label(r["task"]), (r["predicted"], r["delta"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.axhline(0, color="grey", linewidth=0.6)
    ax.axvline(0, color="grey", linewidth=0.6)
    ax.set_xlabel("predicted Δ = Σ_c w_tc · shift_c")
    ax.set_ylabel("observed Δ (tuned − base)")
    return _save(fig, path)


def contributions(per_task: list[dict[str, Any]], path: Path) -> Path | None:
    """Stacked bars: each task's predicted Δ split into category contributions."""
    rows = [r for r in per_task if r["contributions"]]
    if not rows:
        log.info("figure %s skipped: no per-task contributions", path.name)
        return None
    plt = _pyplot()
    cats = sorted({c for r in rows for c in r["contributions"]})
    fig, ax = plt.subplots(figsize=(6.4, 0.5 * len(rows) + 1.5))
    y = list(range(len(rows)))
    pos, neg = [0.0] * len(rows), [0.0] * len(rows)
    cmap = plt.get_cmap("tab10")
    for j, cat in enumerate(cats):
        vals = [float(r["contributions"].get(cat) or 0.0) for r in rows]
        left = [p if v >= 0 else n for v, p, n in zip(vals, pos, neg, strict=True)]
        ax.barh(y, vals, left=left, color=cmap(j % 10), label=_label(cat))
        pos = [p + max(v, 0) for p, v in zip(pos, vals, strict=True)]
        neg = [n + min(v, 0) for n, v in zip(neg, vals, strict=True)]
    ax.scatter([r["delta"] for r in rows], y, color="black", marker="x", zorder=3, label="observed Δ")
    ax.set_yticks(y, [_label(r["task"]) for r in rows])
    ax.axvline(0, color="black", linewidth=0.8)
    ax.invert_yaxis()
    ax.set_xlabel("contribution to predicted Δ")
    ax.legend(fontsize=7, loc="best")
    return _save(fig, path)


def summary(report: dict[str, Any], path: Path) -> Path | None:
    """The report's one-look figure: left, each task's Δ with its CI (filled when BH-significant) and the
    changed categories its answer names; right, each category's cue fold with its CI and the threshold."""
    tasks = [t for t in report["tasks"] if t.get("ci_low") is not None]
    cats = [c for c in report["categories"] if (c.get("headline") or {}).get("value") is not None]
    if not tasks:
        log.info("figure %s skipped: no task deltas with CIs", path.name)
        return None
    named = {r["task"]: r["categories"] for r in (report.get("answer") or {}).get("tasks", [])}
    alpha = (report.get("answer") or {}).get("alpha", 0.05)
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2 if cats else 1, figsize=(11 if cats else 6.4, 0.42 * max(len(tasks), len(cats)) + 1.6),
                             squeeze=False)
    ax = axes[0][0]
    y = list(range(len(tasks)))
    for i, t in enumerate(tasks):
        sig = t.get("q_value") is not None and t["q_value"] < alpha
        colour = "#55a868" if t["delta"] > 0 else "#c44e52"
        ax.errorbar(t["delta"], i, xerr=[[t["delta"] - t["ci_low"]], [t["ci_high"] - t["delta"]]], fmt="o",
                    color=colour, mfc=colour if sig else "white", capsize=3)
        if named.get(t["task"]):
            ax.annotate(" ← " + ", ".join(_label(c) for c in named[t["task"]]), (t["ci_high"], i), fontsize=7,
                        va="center")
    ax.set_yticks(y, [_label(t["task"]) for t in tasks])
    ax.axvline(0, color="black", linewidth=0.8)
    ax.invert_yaxis()
    ax.set_xlabel(f"Δ = tuned − base, 95% CI (filled: BH q < {alpha:g})")
    ax.set_title("benchmark deltas and the changed categories behind them", fontsize=9)
    if cats:
        ax = axes[0][1]
        y = list(range(len(cats)))
        fold = [c["headline"]["value"] + 1 for c in cats]
        lo = [f - (c["headline"]["ci_low"] + 1) for f, c in zip(fold, cats, strict=True)]
        hi = [(c["headline"]["ci_high"] + 1) - f for f, c in zip(fold, cats, strict=True)]
        ax.barh(y, fold, xerr=[lo, hi], capsize=3,
                color=["#4c72b0" if c["headline"].get("significant") else "#bbbbbb" for c in cats])
        threshold = cats[0]["headline"].get("min_fold")
        if threshold:
            ax.axvline(threshold, color="black", linestyle="--", linewidth=0.8)
        ax.axvline(1, color="grey", linewidth=0.6)
        ax.set_yticks(y, [_label(c["category"]) + {"+": " (+)", "-": " (−)"}.get(c["headline"].get("direction"), "")
                          for c in cats])
        ax.invert_yaxis()
        ax.set_xlabel("cue shift: answer-cue change over its baseline (×), 95% CI; dashed: threshold\n"
                      "baseline: the larger of the drift and the other categories' cues", fontsize=9)
        ax.set_title(f"categories (blue: changed, BH q < {alpha:g})", fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


GROUP_STYLE = {  # how suite_folds draws each group: marker, colour, label
    "planted": ("D", "#2a7a3b", "planted +/− (found: filled; missed: open)"),
    "control": ("o", "#7f7f7f", "planted unchanged (control)"),
    "placebo": ("x", "#c44e52", "placebo category"),
}


def suite_folds(points: list[dict[str, Any]], min_fold: float | None, path: Path) -> Path | None:
    """Every headline fold of an organism suite (score.headline_folds), one row per category, the planted
    ones with their 95% CI, and the threshold: whether any threshold separates planted from unchanged."""
    if not points:
        log.info("figure %s skipped: no headline folds", path.name)
        return None
    plt = _pyplot()
    cats = sorted({p["category"] for p in points})
    fig, ax = plt.subplots(figsize=(7.2, 0.45 * len(cats) + 1.6))
    offset = {"planted": -0.22, "control": 0.0, "placebo": 0.22}
    for group, (marker, colour, label) in GROUP_STYLE.items():
        mine = [p for p in points if p["group"] == group]
        for i, p in enumerate(mine):
            y = cats.index(p["category"]) + offset[group]
            filled = group != "planted" or p["found"]
            if group == "planted" and p["ci_low"] is not None and p["ci_high"] is not None:
                ax.plot([p["ci_low"], p["ci_high"]], [y, y], color=colour, linewidth=0.8, alpha=0.6)
            paint = {"color": colour} if marker == "x" else {"facecolors": colour if filled else "none",
                                                             "edgecolors": colour}
            ax.scatter([p["fold"]], [y], marker=marker, s=28, label=label if i == 0 else None, linewidths=1, **paint)
    if min_fold:
        ax.axvline(min_fold, color="black", linestyle="--", linewidth=0.8)
    ax.set_xscale("log")
    ax.set_yticks(range(len(cats)), [_label(c) for c in cats])
    ax.invert_yaxis()
    ax.set_xlabel("headline cue fold over its baseline (×, log)"
                  + (f"; dashed: the threshold {min_fold:g}×" if min_fold else ""), fontsize=9)
    ax.set_title(f"Headline folds over the suite ({len(points)} category estimates)", fontsize=10)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2, frameon=False)
    fig.tight_layout()
    return _save(fig, path)


def render_figures(report: dict[str, Any], latents: list[dict[str, Any]] | None, out: Path) -> dict[str, Path]:
    """Every figure whose data exists, as {name: path}."""
    folder = out / FIGURES_DIR
    made = {
        "summary": summary(report, folder / SUMMARY),
        "delta_norm_hist": delta_norm_histogram(latents, folder / DELTA_NORM_HIST),
        "category_shifts": category_shifts(report["categories"], folder / CATEGORY_SHIFTS),
        "mass_shifts": mass_shifts(report["categories"], folder / MASS_SHIFTS),
        "usage_shifts": usage_shifts(report["categories"], folder / USAGE_SHIFTS),
        "predicted_vs_observed": predicted_vs_observed(report["attribution"]["per_task"],
                                                       folder / PREDICTED_VS_OBSERVED),
        "contributions": contributions(report["attribution"]["per_task"], folder / CONTRIBUTIONS),
    }
    return {k: v for k, v in made.items() if v is not None}


def _label(text: str) -> str:
    """Names as literal text: matplotlib would read `$…$` in a task or category name as math."""
    return str(text).replace("$", r"\$")


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and x == x
