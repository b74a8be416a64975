"""Assemble report.json (the contract in reports/schema.py) from the files of a run directory.

Only bench/deltas.json is required. Every later stage that has not run yet leaves its keys present
with nulls or empty lists, and a caveat says which stage is missing, so a report can be rendered
at any point of a run and a reader is never left to guess why a section is empty.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import math
from pathlib import Path
from typing import Any

from diffeval import __version__
from diffeval.harness.core import files
from diffeval.harness.core.errors import DiffevalError
from diffeval.harness.core.fdr import benjamini_hochberg
from diffeval.harness.core.io import read_json
from diffeval.harness.core.runconfig import MIN_SPECIFIC
from diffeval.reports.formats import finite, p_clause
from diffeval.reports.schema import SCHEMA_VERSION, ReportError, validate_report

log = logging.getLogger(__name__)

# the crosscoder files, relative to the run directory
CROSSCODER_CFG = f"{files.CROSSCODER_DIR}/{files.CROSSCODER_CFG}"
CROSSCODER_METRICS = f"{files.CROSSCODER_DIR}/{files.CROSSCODER_METRICS}"
CROSSCODER_SOURCE = f"{files.CROSSCODER_DIR}/source.json"  # written by the crosscoder stage for --crosscoder

NO_DELTA = "No benchmark delta is significant after BH adjustment, so there is no score change to explain."
VALIDATION_FILE = Path(__file__).parent / "validation.json"  # the headline measure on the organism suite
CLASSES = ("tuned_only", "base_only", "shared", "other", "dead")
ALPHA = 0.05  # significance level used for caveats when the annotator does not record its own


def build_report(run_dir: str | Path) -> dict[str, Any]:
    """report.json for `run_dir` as a dict (validated); raises ReportError when bench/deltas.json is missing."""
    run = Path(run_dir)
    if not run.is_dir():
        raise ReportError(f"run directory {run} does not exist (pass the folder `diffeval run` wrote, e.g. runs/<id>)")
    deltas = _read(run, files.DELTAS, stage="bench")
    config = _read_optional(run, files.CONFIG) or {}
    manifest = _read_optional(run, files.MANIFEST) or {}
    acts = _read_optional(run, files.ACTS_MANIFEST)
    cc_cfg = _read_optional(run, CROSSCODER_CFG)
    cc_source = _read_optional(run, CROSSCODER_SOURCE)
    metrics = read_jsonl(run, CROSSCODER_METRICS)
    latents = read_jsonl(run, files.LATENTS)
    attribution = _read_optional(run, files.ATTRIBUTION)
    caveats = _missing_stage_caveats(acts, cc_cfg, latents, attribution)

    report: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "diffeval_version": __version__,
        "run_id": run.resolve().name,
        "models": models_section(deltas, config, acts, attribution),
        "tasks": tasks_section(deltas),
        "crosscoder": crosscoder_section(acts, cc_cfg, metrics, cc_source),
        "latent_classes": latent_classes_section(latents),
        "headline_measure": (attribution or {}).get("headline_measure"),
        "categories": categories_section(attribution),
        "attribution": attribution_section(attribution),
        "causal": causal_section(attribution),
        "top_latents": (attribution or {}).get("top_latents") or {},
        "provenance": provenance_section(run, config, manifest),
    }
    report["run_config"] = run_config_section(config, report["crosscoder"])
    alpha = float(((attribution or {}).get("annotator") or {}).get("alpha", ALPHA))
    report["caveats"] = caveats + result_caveats(report, alpha)
    report["headline"] = headline(report, alpha)
    report["answer"] = answer(report, alpha, read_validation())
    validate_report(report)
    return report


# -- reading ----------------------------------------------------------------------------------------------
def _read(run: Path, rel: str, stage: str) -> Any:
    path = run / rel
    if not path.is_file():
        raise ReportError(f"{run} has no {stage} stage output ({rel} is missing); run the {stage} stage first "
                          f"(`diffeval run` runs every stage)")
    return _read_optional(run, rel)


def _read_optional(run: Path, rel: str) -> Any:
    path = run / rel
    if not path.is_file():
        return None
    try:
        return read_json(path)
    except DiffevalError as e:
        raise ReportError(str(e)) from None


def read_jsonl(run: Path, rel: str) -> list[dict[str, Any]] | None:
    path = run / rel
    if not path.is_file():
        return None
    rows = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))  # NaN is allowed here: ν of a latent that never fired
        except json.JSONDecodeError as e:
            raise ReportError(f"{path} line {i} is not valid JSON ({e.msg}); re-run the stage that wrote it") from None
    return rows


def _missing_stage_caveats(acts: Any, cc_cfg: Any, latents: Any, attribution: Any) -> list[str]:
    missing = [(acts, "activations", f"{files.ACTS_MANIFEST} is missing"),
               (cc_cfg, "crosscoder", f"{CROSSCODER_CFG} is missing"),
               (latents, "latents", f"{files.LATENTS} is missing"),
               (attribution, "attribution", f"{files.ATTRIBUTION} is missing")]
    out = [f"Stage not run: {stage} ({why}); its sections are empty." for data, stage, why in missing if data is None]
    if attribution is not None and not attribution.get("causal"):
        out.append("Causal check not run (opt-in with --causal): no ablation confirms the attribution.")
    return out


# -- sections ---------------------------------------------------------------------------------------------
def models_section(deltas: dict, config: dict, acts: dict | None, attribution: dict | None) -> dict[str, Any]:
    described = (acts or {}).get("models") or [{}, {}]
    n_layers = (acts or {}).get("n_layers") or [None, None]
    # Hidden sizes may differ between the models (crosscoders.data: d_models beside d_model).
    d_models = (acts or {}).get("d_models") or [(acts or {}).get("d_model")] * 2
    out: dict[str, Any] = {}
    for i, role in enumerate(("base", "tuned")):
        desc = described[i] if i < len(described) else {}
        out[role] = {"spec": str(deltas.get(role) or config.get(role) or desc.get("spec") or "unknown"),
                     "revision": _revision(desc), "n_layers": n_layers[i] if i < len(n_layers) else None,
                     "d_model": d_models[i] if i < len(d_models) else None, "kind": desc.get("kind")}
    if config.get("organism"):
        out["base"]["organism"] = out["tuned"]["organism"] = str(config["organism"])
    reference = (attribution or {}).get("reference")
    out["reference"] = None if not reference else {"spec": str(reference), "revision": None,
                                                     "n_layers": None, "d_model": None}
    return out


def _revision(desc: dict[str, Any]) -> str | None:
    """The most specific identity the spec's provenance records (config hash, or GGUF size)."""
    if desc.get("config_sha256"):
        return f"config-sha256:{desc['config_sha256']}"
    if desc.get("gguf_size"):
        return f"gguf-bytes:{desc['gguf_size']}"
    return None


def tasks_section(deltas: dict[str, Any]) -> list[dict[str, Any]]:
    rows = deltas.get("tasks")
    if not isinstance(rows, list) or not rows:
        raise ReportError(f"{files.DELTAS} holds no tasks; re-run the bench stage")
    keys = ("task", "category", "metric", "n", "base", "tuned", "delta", "ci_low", "ci_high", "p_value",
            "test", "source")
    out = [{k: row.get(k) for k in keys} for row in rows]
    with_p = [t for t in out if t["p_value"] is not None]
    for t, q in zip(with_p, benjamini_hochberg([t["p_value"] for t in with_p]), strict=True):
        t["q_value"] = float(q)
    for t in out:
        t.setdefault("q_value", None)
    return out


def crosscoder_section(acts: dict | None, cc_cfg: dict | None, metrics: list[dict] | None,
                       source: dict | None = None) -> dict[str, Any]:
    """The crosscoder's size and fit; `source` (crosscoder/source.json) names one trained elsewhere
    (`diffeval run --crosscoder`), whose fit was measured on this run's activations."""
    cfg = cc_cfg or {}
    last = (metrics or [{}])[-1]
    fve = last.get("fve") or [None, None]
    layers = (acts or {}).get("layer")
    layer = layers[-1] if isinstance(layers, list) and layers else layers
    arch = cfg.get("architecture")
    return {
        "layer": layer, "layers": layers if isinstance(layers, list) else None,
        "architecture": arch, "n_latents": cfg.get("n_latents"),
        "k": cfg.get("k") if arch == "batchtopk" else None,
        "tokens": (acts or {}).get("rows"),
        "tokens_seen": last["step"] * cfg["batch_size"] if "step" in last and "batch_size" in cfg else None,
        "steps": last.get("step"),
        "fve": {"base": finite(fve[0]), "tuned": finite(fve[1])},
        "l0": finite(last.get("l0")), "dead_fraction": finite(last.get("dead_fraction")),
        "source": (source or {}).get("source"),
    }


def latent_classes_section(latents: list[dict] | None) -> dict[str, Any]:
    if latents is None:
        return {c: None for c in CLASSES} | {"tuned_specific": None, "base_specific": None}
    counts = {c: sum(1 for r in latents if r.get("class") == c) for c in CLASSES}
    counts["tuned_specific"] = sum(1 for r in latents if r.get("specific") == "tuned")
    counts["base_specific"] = sum(1 for r in latents if r.get("specific") == "base")
    return counts


def categories_section(attribution: dict | None) -> list[dict[str, Any]]:
    rows = (attribution or {}).get("categories") or []
    keep = ("category", "n_tuned", "n_base", "N_tuned", "N_base", "shift", "ci_low", "ci_high", "p_value",
            "mass_shift", "mass_ci_low", "mass_ci_high", "mass_shift_rel", "mass_rel_ci_low", "mass_rel_ci_high",
            "n_latents", "small_counts", "note", "n_changed", "n_live", "changed_p", "changed_q", "changed_significant",
            "usage_shift", "usage_ci_low", "usage_ci_high", "usage_p", "n_probes", "usage_shift_rel", "usage_rel_ci_low",
            "usage_rel_ci_high", "empty_base", "empty_tuned")
    out = [{k: (finite(row.get(k)) if isinstance(row.get(k), float) else row.get(k)) for k in keep} for row in rows]
    for row, src in zip(out, rows, strict=True):
        head = src.get("headline")
        row["headline"] = None if not head else {
            k: (finite(v) if isinstance(v, float) else v) for k, v in head.items()}
    return out


def attribution_section(attribution: dict | None) -> dict[str, Any]:
    attr = (attribution or {}).get("attribution") or {}
    per_task = [{"task": r["task"], "category": r.get("category"), "delta": r["delta"],
                 "predicted": finite(r.get("predicted")), "contributions": r.get("contributions") or {}}
                for r in attr.get("per_task") or []]
    return {"spearman": finite(attr.get("spearman")), "p_value": finite(attr.get("p_value")),
            "reason": attr.get("reason"), "n_tasks": attr.get("n_tasks", len(per_task)), "per_task": per_task,
            "shift_used": attr.get("shift_used"), "documents": attr.get("documents") or [],
            "exposure": (attribution or {}).get("exposure") or {}}


def causal_section(attribution: dict | None) -> list[dict[str, Any]]:
    return list((attribution or {}).get("causal") or [])


def run_config_section(config: dict[str, Any], cc: dict[str, Any]) -> dict[str, Any]:
    """What tells two runs of one pair apart on a leaderboard: layer, seeds, activation tokens, crosscoder size."""
    return {"layer": cc["layer"], "seed": config.get("seed"),
            "bench_seed": config.get("bench_seed") if config.get("bench_seed") is not None else config.get("seed"),
            "tokens": cc["tokens"], "n_latents": cc["n_latents"], "k": cc["k"],
            "n_steps": None if cc.get("source") else config.get("n_steps"), "crosscoder": cc.get("source")}


def provenance_section(run: Path, config: dict, manifest: dict) -> dict[str, Any]:
    stages = manifest.get("stages") or {}
    blob = json.dumps(config, sort_keys=True, default=str).encode()
    return {
        "config_hash": hashlib.sha256(blob).hexdigest()[:16] if config else None,
        "packages": {str(k): str(v) for k, v in (manifest.get("packages") or {}).items()},
        "timings": {name: finite(e.get("seconds")) for name, e in stages.items() if isinstance(e, dict)},
        "stages": {name: e.get("status") for name, e in stages.items() if isinstance(e, dict)},
        "run_created": manifest.get("created"),
    }


# -- judgements in words ----------------------------------------------------------------------------------
def result_caveats(report: dict[str, Any], alpha: float) -> list[str]:
    out = []
    for c in report["categories"]:
        counts = f"n_T={c['n_tuned']}/{c['N_tuned']}, n_B={c['n_base']}/{c['N_base']}"
        if c.get("small_counts"):
            out.append(f"Small counts: the shift of {c['category']} rests on {counts} latents; "
                       "one latent more or less changes it a lot.")
        if c["shift"] is None and c["N_tuned"] + c["N_base"] > 0:
            out.append(f"Undefined shift for {c['category']} ({counts}): no base-specific latent to compare with.")
        if c["p_value"] is not None and c["p_value"] >= alpha:
            out.append(f"Not significant: {c['category']} (p = {c['p_value']:.3g} ≥ {alpha:g}).")
    probes = [c for c in report["categories"] if c.get("n_probes")]
    for side in ("base", "tuned"):
        empty, total = sum(c.get(f"empty_{side}") or 0 for c in probes), sum(c["n_probes"] for c in probes)
        if total and empty > total / 2:
            out.append(f"The {side} model wrote nothing after {empty} of {total} probe texts: the usage shifts (the "
                       "behavioural readout) mostly measure how much each model writes; the relative usage shift "
                       "(the category's share of what each model writes) does not.")
    attr = report["attribution"]
    if attr["per_task"] and attr["spearman"] is None:
        out.append(f"No correlation between predicted and observed deltas: {attr.get('reason') or 'undefined'}.")
    elif attr["p_value"] is not None and attr["p_value"] >= alpha:
        out.append(f"The predicted-vs-observed correlation is not significant (p = {attr['p_value']:.3g}, "
                   f"{attr['n_tasks']} tasks).")
    return out


def causal_headline(rows: list[dict[str, Any]]) -> list[str]:
    """One sentence per task whose category's latents carry part of its delta (CI of the share removed above 0)."""
    out = []
    for c in rows:
        if c.get("ci_low") is None or c["ci_low"] <= 0 or c.get("delta_removed") is None:
            continue
        verb = "reverting" if c.get("mode") == "revert" else "ablating"
        line = (f"{c['task']}: {verb} {c.get('n_latents', '?')} {c['category']} latents removes "
                f"{100 * c['delta_removed']:.0f} % of its delta (95% CI {100 * c['ci_low']:.0f} to "
                f"{100 * c['ci_high']:.0f} %)")
        if c.get("control_p") is not None:
            line += (f"; {c['n_controls']} random sets of as many latents from other categories remove a median "
                     f"{100 * c['control_removed']:.0f} % (control p = {c['control_p']:.2g})")
        elif c.get("control_removed") is not None:
            line += f"; as many random latents from other categories remove {100 * c['control_removed']:.0f} %"
        out.append(line + ".")
    return out


def headline(report: dict[str, Any], alpha: float) -> list[str]:
    """Plain-words sentences. Which categories changed comes from the headline measure alone (its BH q);
    then the causal check, the paper's share ratio, the benchmark deltas (BH) and the task-level link."""
    cats = [c for c in report["categories"] if c["category"] != "unassigned"]
    measured = [c for c in cats if (c.get("headline") or {}).get("value") is not None]
    changed = sorted((c for c in measured if c["headline"]["significant"]), key=lambda c: c["headline"]["q_value"])
    lines = [headline_sentence(c) for c in changed]
    if measured and not changed:
        lines.append(f"No category's mechanisms changed detectably: at no category's answer cues did fine-tuning move "
                     f"the models' activations clearly beyond its threshold times as far as both the text around every cue and "
                     f"the other categories' cues (cue shift, every BH q ≥ {alpha:g}).")
    elif cats and not measured:
        lines.append("The headline measure is unavailable: the run has no probe activations to read it on.")
    if not cats:
        lines.append("No category results yet: the attribution stage has not run.")
    lines += causal_headline(report["causal"])
    lines += share_ratio_lines(cats, alpha)
    tasks = [t for t in report["tasks"] if t["p_value"] is not None]
    q = [t["q_value"] for t in tasks]
    lines.append(f"{sum(1 for x in q if x < alpha)} of {len(report['tasks'])} benchmark deltas are significant "
                 f"(BH-adjusted q < {alpha:g}).")
    heads = {c["category"]: c["headline"] for c in measured}
    unexplained = [t for t, x in zip(tasks, q, strict=True) if x < alpha and t.get("category") in heads
                   and not heads[t["category"]]["significant"]]
    for t in unexplained:
        lines.append(f"{t['task']} moved {t['delta']:+.3f}, but the headline measure finds no change in its category "
                     f"({t['category']}): no evidence at the answer cues for the mechanism behind this delta.")
    attr = report["attribution"]
    if attr["spearman"] is not None:
        sure = "significant" if attr["p_value"] is not None and attr["p_value"] < alpha else "not significant"
        lines.append(f"Category shifts ({attr.get('shift_used') or 'unknown measure'}) predict the task deltas with "
                     f"Spearman ρ = {attr['spearman']:+.2f} over {attr['n_tasks']} tasks ({sure}, {p_clause('p', attr['p_value'])}).")
    return lines


def headline_sentence(c: dict[str, Any]) -> str:
    """One changed category, in words, with its numbers."""
    h = c["headline"]
    own = "" if h.get("own_share") is None else f"; its own latents carry {100 * h['own_share']:.0f} % of that difference"
    fold = f"{h['min_fold']:g}" if h.get("min_fold") else "the threshold"
    line = (f"{c['category']}: changed — where its {h.get('n_texts')} probe texts call for an answer, fine-tuning moved "
            f"the models' activations {h['value'] + 1:.1f}× as far as {baseline_words(h)} "
            f"(cue shift {format_shift(h['value'])}, 95% CI {format_shift(h['ci_low'])} to {format_shift(h['ci_high'])}; "
            f"above {fold}× at {p_clause('q', h['q_value'])}){own}.")
    if h.get("direction"):
        more = "more" if h["direction"] == "+" else "less"
        line += (f" Direction {h['direction']}: the tuned model prefers the desired reference answers {more} than the "
                 f"base (margin shift {h['margin_shift']:+.2f} nats over {h['n_references']} probes, {p_clause('p', h['direction_p'])}).")
    elif h.get("n_references"):
        line += (f" Direction not identified: the reference-answer margins did not move significantly "
                 f"({p_clause('p', h.get('direction_p'))}).")
    else:
        line += " Direction not identified: its probe corpus has no reference answers."
    return line


def share_ratio_lines(cats: list[dict[str, Any]], alpha: float) -> list[str]:
    """The paper's measure: unavailable (and why), or its BH-significant categories."""
    if not cats:
        return []
    n_t, n_b = cats[0]["N_tuned"], cats[0]["N_base"]
    if min(n_t, n_b) < MIN_SPECIFIC:
        return [f"The paper's share-ratio measure is unavailable for this pair: it needs at least {MIN_SPECIFIC} "
                f"tuned- and {MIN_SPECIFIC} base-specific latents, and the crosscoder has {n_t} and {n_b}."]
    with_p = [c for c in cats if c["p_value"] is not None and c["shift"] is not None]
    q = benjamini_hochberg([c["p_value"] for c in with_p])
    moved = [(c, x) for c, x in zip(with_p, q, strict=True) if x < alpha]
    if not moved:
        return [f"Paper-compatible share ratio: no category significant (Fisher, BH q ≥ {alpha:g})."]
    return [f"Paper-compatible share ratio: {c['category']} {format_shift(c['shift'])} ({c['n_tuned']} of {c['N_tuned']} "
            f"tuned- vs {c['n_base']} of {c['N_base']} base-specific latents; BH q = {x:.2g})." for c, x in moved]


def format_shift(shift: float | None) -> str:
    """The paper-compatible percentage: (n_T/N_T)/(n_B/N_B) − 1 as e.g. '+151.7 %'."""
    return "undefined" if shift is None else f"{shift * 100:+.1f} %"


# -- the answer: what the first screen says -----------------------------------------------------------------
def read_validation(path: Path = VALIDATION_FILE) -> dict[str, Any] | None:
    """The headline measure's error rates as measured on the organism suite (None when not shipped)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    keys = ("measure", "diffeval_version", "command", "placebo_false", "placebo", "controls_false", "controls",
            "planted_found", "planted")
    return data if isinstance(data, dict) and all(k in data for k in keys) else None


def answer(report: dict[str, Any], alpha: float, validation: dict[str, Any] | None) -> dict[str, Any]:
    """report.answer: one entry per benchmark task whose delta is significant after BH adjustment, naming the
    changed categories (headline measure) that account for it; what did not change; how sure we are.

    The headline measure alone decides, whatever `--attribution-shift` chose for the task-level fit: a changed
    category with a direction accounts for a task whose prompts engage its latents (exposure > 0; for a task
    without an exposure row, its own category) when that direction has the delta's sign, and is named as
    changed the opposite way otherwise; a changed category with no identified direction accounts for its own
    task only. Categories are ordered by exposure × log(1 + cue shift), the task-level contribution.
    """
    cats = {c["category"]: c for c in report["categories"] if c["category"] != "unassigned"}
    heads = {n: c["headline"] for n, c in cats.items() if (c.get("headline") or {}).get("value") is not None}
    changed = sorted(n for n, h in heads.items() if h.get("significant"))
    tasks = [t for t in report["tasks"] if t["p_value"] is not None]
    q = [t["q_value"] for t in tasks]
    exposure = report["attribution"].get("exposure") or {}
    docs = {d["task"]: d for d in report["attribution"].get("documents") or []}
    causal = {c["task"]: c for c in report["causal"]}
    rows = []
    for t, qt in zip(tasks, q, strict=True):
        if qt >= alpha:
            continue
        named, against = accounting_categories(t, changed, heads, exposure.get(t["task"]))
        rows.append({"task": t["task"], "delta": t["delta"], "ci_low": t["ci_low"], "ci_high": t["ci_high"],
                     "q_value": float(qt), "categories": named, "against": against,
                     "documents": docs.get(t["task"]), "causal": causal.get(t["task"]),
                     "sentence": task_sentence(t, float(qt), named, against, heads, docs.get(t["task"]),
                                               causal.get(t["task"]))})
    quiet = [t["task"] for t, qt in zip(tasks, q, strict=True) if qt >= alpha]
    explained = {c for r in rows for c in r["categories"]}
    not_changed = sorted(set(heads) - set(changed), key=lambda c: heads[c]["value"])
    lines = []
    if not_changed:
        lines.append("Not changed (cue shift not clearly above the threshold): " + ", ".join(
            f"{c} {heads[c]['value'] + 1:.1f}×" for c in not_changed) + ".")
    if quiet:
        lines.append(f"No significant benchmark delta (BH q ≥ {alpha:g}): " + ", ".join(
            f"{t['task']} {t['delta']:+.3f}" for t in tasks if t["task"] in quiet) + ".")
    silent = sorted(set(changed) - explained)
    if silent:
        lines.append("Changed but behind no significant task delta: " + ", ".join(silent) + ".")
    if not heads:
        lines.append("The headline measure is unavailable for this run (no probe activations), so no category "
                     "is named as changed or unchanged.")
    first = [r["sentence"] for r in rows] or [NO_DELTA]
    return {"tasks": rows, "not_changed": lines, "lines": first + lines, "alpha": alpha,
            "sure": sure_lines(report, cats, validation, alpha)}


def accounting_categories(t: dict[str, Any], changed: list[str], heads: dict[str, Any],
                          exposure: dict[str, float] | None) -> tuple[list[str], list[str]]:
    """(categories that account for task `t`'s delta, changed categories that moved the other way); see answer()."""
    named, against = [], []
    for c in changed:
        direction, own = heads[c].get("direction"), c == t.get("category")
        weight = exposure.get(c, 0.0) if exposure is not None else float(own)
        if direction is None:
            if own:
                named.append((0.0, c))
            continue
        if weight <= 0:
            continue
        sign = 1.0 if direction == "+" else -1.0
        target = named if sign * t["delta"] > 0 else against
        target.append((weight * math.log1p(max(heads[c]["value"], 0.0)), c))
    return [c for _, c in sorted(named, key=lambda x: -x[0])], [c for _, c in sorted(against, key=lambda x: -x[0])]


def task_sentence(t: dict[str, Any], q: float, named: list[str], against: list[str], heads: dict[str, Any],
                  docs: dict[str, Any] | None, causal: dict[str, Any] | None) -> str:
    """One benchmark task's answer, in words with its numbers."""
    verb = "rose" if t["delta"] > 0 else "fell"
    ci = "" if t["ci_low"] is None else f", 95% CI {t['ci_low']:+.3f} to {t['ci_high']:+.3f}"
    line = f"{t['task']} {verb} {t['delta']:+.3f}{ci}, {p_clause('q', q)}: "
    if named:
        line += "; ".join(category_clause(c, heads[c]) for c in named)
    else:
        line += "no category the headline measure finds changed accounts for it (unexplained)"
    if against:
        line += "; " + ", ".join(against) + " changed in the opposite direction"
    if docs and docs.get("category") in named and docs.get("effect") is not None:
        flipped = docs["n_up"] + docs["n_down"]
        sure = "significant" if docs.get("significant") else "not significant"
        than = "the task's unchanged ones" if docs.get("against") == "task" else "other tasks' unchanged ones"
        line += (f". Per document: the {flipped} documents whose outcome flipped carry on average {docs['effect'] + 1:.1f}× "
                 f"as much of {docs['category']}'s change as {than} ({p_clause('q', docs.get('q_value'))}, {sure})")
    if causal and causal.get("delta_removed") is not None:
        verb = "reverting" if causal.get("mode") == "revert" else "ablating"
        notes = []
        if causal.get("ci_low") is not None:
            notes.append(f"95% CI {100 * causal['ci_low']:.0f}–{100 * causal['ci_high']:.0f} %")
        if causal.get("control_p") is not None:
            notes.append(f"{causal['n_controls']} random sets of as many latents remove a median "
                         f"{100 * causal['control_removed']:.0f} %, {p_clause('control p', causal['control_p'])}")
        line += (f". Causal: {verb} its {causal.get('n_latents', '?')} {causal['category']} latents removes "
                 f"{100 * causal['delta_removed']:.0f} % of the delta" + (f" ({'; '.join(notes)})" if notes else ""))
    return line + "."


def baseline_words(h: dict[str, Any]) -> str:
    """What the category's cue shift was measured against, in words (stages/headline.py's baseline). Rows of
    earlier versions had one null: the other categories' cues (`null` says so), or before that the drift."""
    if h.get("baseline_from") == "drift":
        return "the text around every answer cue (which moved more than a typical other category's cues)"
    if h.get("baseline_from") == "other_categories":
        return "at a typical other category's answer cues (which moved more than the text around every cue)"
    return "at a typical other category's answer cues" if h.get("null") == "other_categories" else \
        "the text around every answer cue"


def category_clause(name: str, h: dict[str, Any]) -> str:
    direction = {"+": ", direction +", "-": ", direction −"}.get(h.get("direction"), ", direction not identified")
    return (f"{name} changed (cue shift {h['value'] + 1:.1f}× its baseline, 95% CI {h['ci_low'] + 1:.1f}–"
            f"{h['ci_high'] + 1:.1f}×, {p_clause('q', h['q_value'])}{direction})")


def real_lm_line(measure: str, r: dict[str, Any]) -> str:
    """A validation.json `real_lm` record (one real-LM organism's run) as a "How sure" line."""
    parts = [f"{r[k]} of {r[n]} {what}" for k, n, what in (
        ("placebo_false", "placebo", "placebo categories flagged"),
        ("controls_false", "controls", "planted-unchanged controls flagged"),
        ("planted_found", "planted", "planted changes found with the right sign")) if r.get(n)]
    return (f"On a real LM, the organism {r['organism']} ({r['command']}), {measure} gave: " + ", ".join(parts)
            + (f". {r['note'].rstrip('.')}." if r.get("note") else "."))


def separation_clause(sep: dict[str, Any] | None) -> str:
    """How well the measure's folds ranked planted above unchanged categories on the suite ('' if unknown)."""
    if not sep or sep.get("auc") is None:
        return ""
    missed = sep.get("planted_at_or_below_unchanged_max")
    return (f"; a planted category's fold exceeded an unchanged one's in {100 * sep['auc']:.1f} % of pairs (ROC AUC)"
            + (f", and {missed} of {sep['n_planted']} planted folds were no larger than the largest unchanged fold "
               f"({sep['unchanged_max']:.2f}×)" if missed else ""))


def sure_lines(report: dict[str, Any], cats: dict[str, Any], validation: dict[str, Any] | None,
               alpha: float) -> list[str]:
    """How far to trust the answer: the measure's measured error rates, the crosscoder's fit, small counts."""
    out = []
    measure = report.get("headline_measure")
    null = next((c["headline"].get("null") for c in cats.values() if c.get("headline")), None)
    if validation and validation.get("measure") == measure and validation.get("null") == null:
        v = validation
        out.append(f"The headline measure ({measure}) on diffeval's toy organism suite, measured with diffeval "
                   f"{v['diffeval_version']} ({v['command']}): it flagged {v['placebo_false']} of {v['placebo']} "
                   f"placebo categories and {v['controls_false']} of {v['controls']} planted-unchanged controls, "
                   f"and found {v['planted_found']} of {v['planted']} planted changes with the right sign"
                   + separation_clause(v.get("separation")) + ".")
        real = [real_lm_line(measure, r) for r in v.get("real_lm") or [] if {"organism", "command"} <= set(r)]
        out += real or ["Not yet validated on a real LM's organism: the toy suite's error rates may not carry over "
                        "to a real pair (docs/organisms.md)."]
    elif measure and null:
        out.append(f"The headline measure ({measure}, against {null.replace('_', ' ')}) has no validation on the "
                   "organism suite in this version (reports/validation.json): its error rates are unknown.")
    cc = report["crosscoder"]
    fve = {side: x for side, x in cc["fve"].items() if x is not None}
    if fve:
        line = ("Crosscoder: it reconstructs " + " and ".join(f"{100 * x:.0f} % ({side})" for side, x in fve.items())
                + " of the models' activation variance" + (f", {100 * cc['dead_fraction']:.0f} % of its latents dead" if cc["dead_fraction"] is not None else ""))
        if min(fve.values()) < 0.9 or (cc["dead_fraction"] or 0) > 0.5:
            line += " — under-trained: train longer or on more tokens before trusting the latent-level numbers"
        out.append(line + ".")
    few = [f"{n} ({c['headline']['n_texts']} probe texts)" for n, c in cats.items()
           if (c.get("headline") or {}).get("n_texts") is not None and c["headline"]["n_texts"] < 20]
    if few:
        out.append("Few probe texts, wide intervals: " + ", ".join(few) + ".")
    unsigned = [n for n, c in cats.items() if (c.get("headline") or {}).get("significant")
                and not c["headline"].get("n_references")]
    if unsigned:
        out.append("No reference answers, so no direction: " + ", ".join(unsigned) + " (add `desired`/`undesired` "
                   "to its probe rows).")
    out += share_ratio_lines(list(cats.values()), alpha)
    if not report["causal"]:
        out.append("Not checked causally (--causal reverts each category's latents and re-scores its task).")
    return out
