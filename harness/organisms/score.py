"""Score the whole pipeline on organisms against their declared planted changes.

For each seed (crosscoder initialisation and batch order) the pipeline runs into its own directory;
the bench, transcript and activation stages, which do not depend on it, are copied from the first seed's run
(the bench runs with seed 0 for every seed). With build seeds, each organism is also rebuilt from other
seeds (its own world and training), so scores replicate over independent organisms, not only crosscoders.

Per run and planted category, each measure is scored:
  - headline (the cue shift, stages/headline.py): a planted +/− category is found when it is significant
    (BH q < alpha) with the declared direction; `headline_changed` counts it found when significant at all
    (the unsigned claim). A planted-0 category, and every category of a placebo, is held when it is not
    significant; a significant one is a false positive.
  - share shift, relative mass shift, usage shifts (the behavioural readout): the sign of the declared
    change with a CI excluding 0 (+/−), or a CI containing 0 (planted 0); changed latents: enriched (+/−)
    or not (0). A missing estimate is never a success.
Per run: Spearman between predicted and observed task deltas, and with --causal the share of each
planted task's delta that reverting its category's latents removes, against random latent sets (control_p).
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Any

from tabulate import tabulate

from diffeval import __version__
from diffeval.harness import pipeline
from diffeval.harness.core import files
from diffeval.harness.core.config import from_dict
from diffeval.harness.core.errors import DiffevalError, did_you_mean
from diffeval.harness.core.io import atomic_write_json, atomic_write_text, read_json
from diffeval.harness.core.runconfig import HEADLINE_MEASURE, HEADLINE_NULL, RunConfig
from diffeval.harness.organisms import RECIPES, default_run_flags, get
from diffeval.harness.organisms.base import Planted
from diffeval.reports.figures import suite_folds

REUSED = ("bench", "activations", "transcripts", "probes")
KINDS = ("headline", "headline_changed", "share", "mass", "usage", "usage_rel", "changed")
VALUE_OF = {"headline": "headline", "headline_changed": "headline", "share": "share_shift", "mass": "mass_shift_rel",
            "usage": "usage_shift", "usage_rel": "usage_rel_shift", "changed": "changed_q"}  # None: no estimate
KIND_NAMES = ("headline (signed)", "headline (changed)", "share shift", "mass shift", "usage shift",
              "relative usage shift", "changed latents")


def found(direction: str, shift: float | None, lo: float | None, hi: float | None) -> bool:
    """+/−: shift of that sign with a CI excluding 0; 0: a CI containing 0. A missing estimate (None, e.g.
    an undefined share ratio) is never a success: not a planted change found, not a control held."""
    if shift is None or lo is None or hi is None:
        return False
    if direction == "0":
        return lo <= 0 <= hi
    return lo > 0 if direction == "+" else hi < 0


def score_run(run_dir: Path, planted: list[Planted]) -> dict[str, Any]:
    attr = read_json(run_dir / files.ATTRIBUTION)
    by_cat = {c["category"]: c for c in attr["categories"]}
    rows = []
    for p in planted:
        c = by_cat.get(p.category, {})
        h = c.get("headline") or {}
        significant = bool(h.get("significant"))
        rows.append({
            "category": p.category, "planted": p.direction,
            "headline": h.get("value"), "headline_ci": [h.get("ci_low"), h.get("ci_high")],
            "headline_min_fold": h.get("min_fold"),
            "headline_q": h.get("q_value"), "headline_significant": significant,
            "headline_direction": h.get("direction"),
            "headline_found": (significant and h.get("direction") == p.direction) if p.direction != "0" else not significant,
            "headline_changed_found": significant == (p.direction != "0"),
            "share_shift": c.get("shift"), "share_ci": [c.get("ci_low"), c.get("ci_high")], "p_value": c.get("p_value"),
            "share_found": found(p.direction, c.get("shift"), c.get("ci_low"), c.get("ci_high")),
            "mass_shift_rel": c.get("mass_shift_rel"), "mass_rel_ci": [c.get("mass_rel_ci_low"), c.get("mass_rel_ci_high")],
            "mass_found": found(p.direction, c.get("mass_shift_rel"), c.get("mass_rel_ci_low"), c.get("mass_rel_ci_high")),
            "usage_shift": c.get("usage_shift"), "usage_ci": [c.get("usage_ci_low"), c.get("usage_ci_high")],
            "usage_found": found(p.direction, c.get("usage_shift"), c.get("usage_ci_low"), c.get("usage_ci_high")),
            "usage_rel_shift": c.get("usage_shift_rel"), "usage_rel_ci": [c.get("usage_rel_ci_low"), c.get("usage_rel_ci_high")],
            "usage_rel_found": found(p.direction, c.get("usage_shift_rel"), c.get("usage_rel_ci_low"), c.get("usage_rel_ci_high")),
            "n_changed": c.get("n_changed"), "n_live": c.get("n_live"), "changed_q": c.get("changed_q"),
            "changed_found": bool(c.get("changed_significant")) == (p.direction != "0"),
        })
    planted_tasks = {t for p in planted if p.direction != "0" for t in p.tasks}
    causal = [c for c in attr.get("causal", []) if c["task"] in planted_tasks]
    docs = [d for d in (attr["attribution"].get("documents") or []) if d["task"] in planted_tasks]
    return {"run": str(run_dir), "categories": rows, "spearman": attr["attribution"]["spearman"],
            "spearman_p": attr["attribution"]["p_value"], "N_tuned": attr["N_tuned"], "N_base": attr["N_base"],
            "causal": [{"task": c["task"], "delta_removed": c["delta_removed"], "ci_low": c.get("ci_low"),
                        "ci_high": c.get("ci_high"), "control_removed": c.get("control_removed"),
                        "control_p": c.get("control_p")} for c in causal],
            "documents": docs}


def score_organism(name: str, seeds: int, out: Path, causal: bool = False, build_seed: int | None = None,
                   **overrides: Any) -> dict[str, Any]:
    """Run the pipeline on organism `name` (built from `build_seed`, default its own) for `seeds` seeds;
    write and return score.json."""

    recipe = get(name, build_seed)
    flags = default_run_flags(name, {}, build_seed)
    flags["tasks"] = [t.strip() for t in flags["tasks"].split(",")]
    base_cfg = from_dict(RunConfig, {**flags, "causal": causal, **overrides}, source=f"organism {name}")
    runs = []
    for seed in range(seeds):
        run_dir = out / f"seed_{seed}"
        if seed > 0:
            _reuse_seed_independent(out / "seed_0", run_dir)
        # the seeds vary the crosscoder; the bench keeps the first seed's, so its results are reused
        pipeline.run(dataclasses.replace(base_cfg, seed=seed, bench_seed=0 if base_cfg.bench_seed is None else base_cfg.bench_seed), run_dir)
        runs.append(score_run(run_dir, recipe.planted))
    summary = summarise(runs)
    doc = {"format_version": 1, "organism": name, "build_seed": recipe.params.get("seed"),
           "placebo": recipe.placebo_of is not None, "seeds": seeds, "runs": runs, "summary": summary}
    atomic_write_json(out / "score.json", doc)
    return doc


def suite_names(include_slow: bool = False, only: list[str] | None = None) -> list[str]:
    """The organisms `score --suite` runs: every toy organism and placebo (and the slow ones if asked), or
    the names in `only` (each checked against the recipes)."""
    if only is not None:
        for n in only:
            if n not in RECIPES:
                raise DiffevalError(f"--only: unknown organism {n!r}{did_you_mean(n, RECIPES)}; "
                                    f"valid: {', '.join(RECIPES)}")
        return list(dict.fromkeys(only))
    return [n for n, r in RECIPES.items() if include_slow or not r.slow]


def score_suite(seeds: int, build_seeds: int, out: Path, causal: bool = False, include_slow: bool = False,
                only: list[str] | None = None, **overrides: Any) -> dict[str, Any]:
    """Score every organism of the suite (or those in `only`) over `build_seeds` builds × `seeds` crosscoder
    seeds; write scores.json and scores.md under `out` and return the document."""
    docs = []
    for name in suite_names(include_slow, only):
        builds = range(build_seeds) if not RECIPES[name].slow else [None]
        for b in builds:
            docs.append(score_organism(name, seeds, out / name / f"build_{b if b is not None else 'own'}", causal,
                                       build_seed=b, **overrides))
    doc = {"format_version": 1, "seeds": seeds, "build_seeds": build_seeds, "slow": include_slow, "only": only,
           "organisms": docs,
           "summary": suite_summary(docs)}
    atomic_write_json(out / "scores.json", doc)
    atomic_write_text(out / "scores.md", suite_table(doc) + "\n")
    atomic_write_json(out / VALIDATION_NAME, validation_record(doc))
    points = headline_folds(docs)
    suite_folds(points, max((p["min_fold"] for p in points if p["min_fold"]), default=None), out / FOLDS_FIGURE)
    return doc


VALIDATION_NAME = "validation.json"  # what reports quote as the headline measure's measured error rates
FOLDS_FIGURE = "scores_folds.png"  # every headline fold of the suite, by category and group


def validation_record(doc: dict[str, Any]) -> dict[str, Any]:
    """The headline measure's suite result in the form reports read (reports/validation.json is one)."""
    return {"format_version": 1, "measure": HEADLINE_MEASURE, "null": HEADLINE_NULL, "diffeval_version": __version__,
            "command": f"diffeval organisms score --suite --seeds {doc['seeds']} --build-seeds {doc['build_seeds']}"
                       + (" --slow" if doc.get("slow") else "") + (f" --only {','.join(doc['only'])}" if doc.get("only") else ""),
            "organisms": sorted({d["organism"] for d in doc["organisms"]}), **doc["summary"]["headline"],
            "separation": doc["summary"].get("separation")}


def suite_summary(docs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per measure: planted changes found (right sign), controls and placebo categories falsely significant
    (a measure with no estimate for a category is counted under `no_estimate`, never as found nor as false)."""
    out: dict[str, Any] = {}
    for kind in KINDS:
        n = {k: 0 for k in ("planted_found", "planted", "controls_false", "controls", "placebo_false", "placebo",
                            "placebo_runs_any", "placebo_runs", "no_estimate", "estimates")}
        for d in docs:
            for r in d["runs"]:
                hit = False
                for c in r["categories"]:
                    ok, known = bool(c[f"{kind}_found"]), c.get(VALUE_OF[kind]) is not None
                    n["estimates"] += 1
                    n["no_estimate"] += not known
                    if d["placebo"]:
                        n["placebo"] += 1
                        n["placebo_false"] += known and not ok
                        hit |= known and not ok
                    elif c["planted"] == "0":
                        n["controls"] += 1
                        n["controls_false"] += known and not ok
                    else:
                        n["planted"] += 1
                        n["planted_found"] += ok
                if d["placebo"]:
                    n["placebo_runs"] += 1
                    n["placebo_runs_any"] += hit
        out[kind] = n
    real = [r for d in docs if not d["placebo"] for r in d["runs"]]
    causal = [c for r in real for c in r["causal"] if c.get("delta_removed") is not None]
    out["spearman"] = [r["spearman"] for r in real]
    out["causal"] = {"n": len(causal), "removed_ge_half": sum(c["delta_removed"] >= 0.5 for c in causal),
                     "removed_ge_half_control_p_lt_0_05": sum(c["delta_removed"] >= 0.5 and c.get("control_p") is not None
                                                              and c["control_p"] < 0.05 for c in causal)}
    docs_rows = [x for r in real for x in r.get("documents") or []]
    out["documents"] = {"n": len(docs_rows), "significant": sum(bool(x.get("significant")) for x in docs_rows)}
    out["separation"] = fold_separation(headline_folds(docs))
    return out


def headline_folds(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every estimated headline fold of the suite (cue shift + 1, with its CI), as {organism, build_seed,
    category, group, fold, ci_low, ci_high, min_fold (the run's threshold), found}: group `planted` (+/−),
    `control` (planted 0) or `placebo`."""
    points = []
    for d in docs:
        for r in d["runs"]:
            for c in r["categories"]:
                if c.get("headline") is None:
                    continue
                lo, hi = c.get("headline_ci") or (None, None)
                group = "placebo" if d["placebo"] else "control" if c["planted"] == "0" else "planted"
                points.append({"organism": d["organism"], "build_seed": d["build_seed"], "category": c["category"],
                               "planted": c["planted"], "group": group, "fold": c["headline"] + 1,
                               "ci_low": None if lo is None else lo + 1, "ci_high": None if hi is None else hi + 1,
                               "min_fold": c.get("headline_min_fold"), "found": bool(c["headline_found"])})
    return points


def fold_separation(points: list[dict[str, Any]]) -> dict[str, Any]:
    """Whether any threshold on the headline fold could tell the planted changes from the unchanged
    categories (controls and placebos) of the suite: the ROC AUC of the fold (the chance that a planted
    category's fold exceeds an unchanged one's), the largest unchanged fold, and how many planted folds lie
    at or below it (those no threshold finds without a false positive on this suite)."""
    planted = [p["fold"] for p in points if p["group"] == "planted"]
    unchanged = [p["fold"] for p in points if p["group"] != "planted"]
    out: dict[str, Any] = {"n_planted": len(planted), "n_unchanged": len(unchanged), "auc": None,
                           "planted_min": min(planted, default=None), "unchanged_max": max(unchanged, default=None),
                           "planted_at_or_below_unchanged_max": None}
    if planted and unchanged:
        from sklearn.metrics import roc_auc_score  # slow to import; only the suite's summary needs it

        out["auc"] = float(roc_auc_score([1] * len(planted) + [0] * len(unchanged), planted + unchanged))
        out["planted_at_or_below_unchanged_max"] = sum(f <= out["unchanged_max"] for f in planted)
    return out


def suite_table(doc: dict[str, Any]) -> str:
    """scores.md: one row per measure over the whole suite, then the headline measure per organism."""
    s = doc["summary"]

    def frac(k: int, n: int) -> str:
        return f"{k}/{n} ({100 * k / n:.0f} %)" if n else "—"

    rows = [[name, frac(s[k]["planted_found"], s[k]["planted"]), frac(s[k]["controls_false"], s[k]["controls"]),
             frac(s[k]["placebo_false"], s[k]["placebo"]), frac(s[k]["placebo_runs_any"], s[k]["placebo_runs"]),
             frac(s[k]["no_estimate"], s[k]["estimates"])]
            for k, name in zip(KINDS, KIND_NAMES, strict=True)]
    builds = sorted({(d["organism"], d["build_seed"]) for d in doc["organisms"]})
    text = (f"Suite: {len(builds)} organism builds ({', '.join(f'{o} seed {b}' for o, b in builds)}) × "
            f"{doc['seeds']} crosscoder seed(s).\n\n")
    text += tabulate(rows, headers=["measure", "planted found (right sign)", "controls falsely significant",
                                    "placebo categories falsely significant", "placebo runs with any", "no estimate"],
                     tablefmt="github")
    per = []
    for d in doc["organisms"]:
        for i, r in enumerate(d["runs"]):
            cells = []
            for c in r["categories"]:
                mark = ("·" if not c["headline_significant"] else (c["headline_direction"] or "?"))
                cells.append(f"{c['category'].split('_')[0]} {c['planted']}→{mark}")
            per.append([d["organism"], d["build_seed"], i, ", ".join(cells),
                        "—" if r["spearman"] is None else f"{r['spearman']:+.2f}"])
    text += "\n\nHeadline per run (planted → measured: + or − significant with that direction, ? significant without " \
            "an identified direction, · not significant):\n\n"
    text += tabulate(per, headers=["organism", "build seed", "seed", "categories", "Spearman"], tablefmt="github")
    rho = [x for x in s["spearman"] if x is not None]
    if rho:
        text += f"\n\nTask-level Spearman over the planted organisms' runs: median {sorted(rho)[len(rho) // 2]:+.2f}."
    sep = s.get("separation") or {}
    if sep.get("auc") is not None:
        text += (f"\n\nHeadline folds, planted vs unchanged (controls and placebos): ROC AUC {sep['auc']:.3f} over "
                 f"{sep['n_planted']} planted and {sep['n_unchanged']} unchanged categories; the largest unchanged fold "
                 f"is {sep['unchanged_max']:.2f}×, and {sep['planted_at_or_below_unchanged_max']} planted folds lie at or "
                 f"below it (no threshold finds those without a false positive here). Figure: {FOLDS_FIGURE}.")
    if s["causal"]["n"]:
        text += (f"\nCausal: {s['causal']['removed_ge_half']} of {s['causal']['n']} planted tasks lose ≥ 50 % of their delta "
                 f"when their category is reverted; {s['causal']['removed_ge_half_control_p_lt_0_05']} of them with control p < 0.05.")
    return text


def _reuse_seed_independent(src: Path, dst: Path) -> None:
    """Copy the stages that do not depend on the seed (their manifest entries come along)."""
    dst.mkdir(parents=True, exist_ok=True)
    manifest = read_json(src / files.MANIFEST)
    keep = {k: v for k, v in manifest["stages"].items() if k.split(".")[0] in REUSED}
    for name in REUSED:
        if (src / name).exists() and not (dst / name).exists():
            shutil.copytree(src / name, dst / name)
    atomic_write_json(dst / files.MANIFEST, {**manifest, "stages": keep})


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    cats = [r["category"] for r in runs[0]["categories"]]
    per_cat = {c: {kind: sum(next(x for x in r["categories"] if x["category"] == c)[f"{kind}_found"] for r in runs)
                   for kind in KINDS} for c in cats}
    rhos = [r["spearman"] for r in runs]
    removed = [c["delta_removed"] for r in runs for c in r["causal"] if c["delta_removed"] is not None]
    return {"found": per_cat, "spearman": rhos,
            "spearman_ge_0_7": sum(1 for x in rhos if x is not None and x >= 0.7),
            "causal_removed": removed, "causal_ge_half": sum(1 for x in removed if x >= 0.5)}


def score_table(doc: dict[str, Any]) -> str:
    n = doc["seeds"]
    first = doc["runs"][0]["categories"]
    found_in = doc["summary"]["found"]
    rows = [[c["category"], c["planted"], *(f"{found_in[c['category']].get(kind, 0)}/{n}" for kind in KINDS)]
            for c in first]
    rhos = ", ".join("—" if x is None else f"{x:+.2f}" for x in doc["summary"]["spearman"])
    text = tabulate(rows, headers=["category", "planted", *(f"{k} as declared" for k in KIND_NAMES)], tablefmt="github")
    text += f"\n\nSpearman (predicted vs observed task deltas) per seed: {rhos}"
    causal = [c for r in doc["runs"] for c in r["causal"]]
    if causal:
        text += "\ncausal (share of each planted task's delta removed; random control set in brackets): " + ", ".join(
            f"{c['task']} {_fmt(c['delta_removed'])} [{_fmt(c.get('control_removed'))}]" for c in causal)
    return text


def _fmt(x: float | None) -> str:
    return "—" if x is None else f"{x:.2f}"
