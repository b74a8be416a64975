"""Score the whole pipeline on an organism against its declared planted changes.

For each seed (crosscoder initialisation and batch order) the pipeline runs into its own directory;
the bench, transcript and activation stages, which do not depend on it, are copied from the first seed's run
(the bench runs with seed 0 for every seed).
Per seed and planted category: is the category's shift of the declared sign with a CI excluding 0
(planted +/−), or not significant (planted 0)? The share-ratio shift, the relative mass shift (vs all latents) and the usage shift, absolute and
relative (on both models' own responses to the probe texts), are each scored.
A third, unsigned check: a planted +/− category's latents are enriched in changed (rotated) latents,
and a planted-0 category's are not.
Per seed: Spearman between predicted and observed task deltas, and with --causal the share of each
planted task's delta that reverting its category's latents removes (and that a random control set removes).
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Any

from tabulate import tabulate

from diffeval.harness import pipeline
from diffeval.harness.core import files
from diffeval.harness.core.config import from_dict
from diffeval.harness.core.io import atomic_write_json, read_json
from diffeval.harness.core.runconfig import RunConfig
from diffeval.harness.organisms import default_run_flags, get
from diffeval.harness.organisms.base import Planted

REUSED = ("bench", "activations", "transcripts", "probes")
KINDS = ("share", "mass", "usage", "usage_rel", "changed")
KIND_NAMES = ("share shift", "mass shift", "usage shift", "relative usage shift", "changed latents")


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
        rows.append({
            "category": p.category, "planted": p.direction,
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
    return {"run": str(run_dir), "categories": rows, "spearman": attr["attribution"]["spearman"],
            "spearman_p": attr["attribution"]["p_value"], "N_tuned": attr["N_tuned"], "N_base": attr["N_base"],
            "causal": [{"task": c["task"], "delta_removed": c["delta_removed"], "ci_low": c.get("ci_low"),
                        "ci_high": c.get("ci_high"), "control_removed": c.get("control_removed")} for c in causal]}


def score_organism(name: str, seeds: int, out: Path, causal: bool = False, **overrides: Any) -> dict[str, Any]:
    """Run the pipeline on organism `name` for `seeds` seeds; write and return score.json."""

    flags = default_run_flags(name, {})
    flags["tasks"] = [t.strip() for t in flags["tasks"].split(",")]
    base_cfg = from_dict(RunConfig, {**flags, "causal": causal, **overrides}, source=f"organism {name}")
    runs = []
    for seed in range(seeds):
        run_dir = out / f"seed_{seed}"
        if seed > 0:
            _reuse_seed_independent(out / "seed_0", run_dir)
        # the seeds vary the crosscoder; the bench keeps the first seed's, so its results are reused
        pipeline.run(dataclasses.replace(base_cfg, seed=seed, bench_seed=0 if base_cfg.bench_seed is None else base_cfg.bench_seed), run_dir)
        runs.append(score_run(run_dir, get(name).planted))
    summary = summarise(runs)
    doc = {"format_version": 1, "organism": name, "seeds": seeds, "runs": runs, "summary": summary}
    atomic_write_json(out / "score.json", doc)
    return doc


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
