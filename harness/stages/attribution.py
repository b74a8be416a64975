"""The attribution stage: category shifts (share ratio, mass, usage, changed latents), each task's exposure
to the categories, and the attribution of task deltas to category shifts → attribution.json."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np

from diffeval.harness.core import files
from diffeval.harness.core.errors import RunDirError
from diffeval.harness.core.files import SIDES, source_name
from diffeval.harness.core.io import atomic_write_json
from diffeval.harness.core.rundir import RunDir
from diffeval.harness.core.stageconfig import AttributionConfig, stage_key
from diffeval.harness.stages import headline as H
from diffeval.harness.stages import measures as A
from diffeval.harness.stages.bench import load_deltas
from diffeval.harness.stages.crosscoder import open_crosscoder
from diffeval.harness.stages.documents import document_attribution, latent_documents
from diffeval.harness.stages.inputs import probe_inputs, taxonomy_for
from diffeval.harness.stages.latent_sums import group_sums, response_sums, sequences
from diffeval.harness.stages.latents import read_latents
from diffeval.harness.stages.transcripts import read_transcripts

log = logging.getLogger(__name__)

HEADLINE = H.NAME
ATTRIBUTION_VERSION = 8  # 2: changed-latent enrichment; 3: usage shift; 4: relative usage shift; 5: usage attribution by it;
# 6: a category's latents are all latents enriched on its probes (not only those it is the primary category of);
# 7: the headline measure (cue shift), the default basis of attribution; 8: latent_documents, decoded top contexts


def category_members(rows: list[dict[str, Any]], category: str) -> list[int]:
    """Latents of a category: every latent significantly enriched on its probes, primary or not.

    A latent can be enriched on two categories' probes (a token both kinds of prompt share); it serves both.
    Only the share-ratio counts use the primary category alone, so that they partition the latents as the
    study's counts do. Unassigned latents are those with no significant category."""
    return [r["latent"] for r in rows if category in (r.get("categories") or ()) or r["category"] == category]


def specific_sets(rows: list[dict[str, Any]], specific_by: str) -> tuple[list[dict], list[dict]]:
    """(tuned-specific, base-specific) latents: Latent Scaling's verdict, or the Δnorm class alone."""
    if specific_by == "latent_scaling":
        return [r for r in rows if r.get("specific") == "tuned"], [r for r in rows if r.get("specific") == "base"]
    return [r for r in rows if r["class"] == "tuned_only"], [r for r in rows if r["class"] == "base_only"]


def stage_attribution(run: RunDir, cfg: AttributionConfig) -> Path:
    refs = [RunDir(run.path / sub).key("latents") for sub in files.REFERENCE_DIRS.values()] if cfg.reference else []
    key = stage_key(cfg, ATTRIBUTION_VERSION, run.key("latents"), run.key("bench.deltas"), refs)
    out = run.path / files.ATTRIBUTION
    if not run.is_done("attribution", key):
        with run.stage("attribution", key) as rec:
            rec["outputs"] = [atomic_write_json(out, compute_attribution(run.path, cfg))]
    return out


def compute_attribution(run_path: Path, cfg: AttributionConfig) -> dict[str, Any]:
    rows = read_latents(run_path / files.LATENTS)
    if "category" not in rows[0] or "changed" not in rows[0]:
        raise RunDirError(f"{run_path / files.LATENTS} was written by an older diffeval (no categories or no "
                          "`changed` column); re-run the latents stage (`diffeval run` redoes it)")
    tax = taxonomy_for(cfg.probes)
    used = {r["category"] for r in rows}
    cats = [c for c in tax.names if c in used or tax.categories[c].probes is not None]
    tuned, base = specific_sets(rows, cfg.specific_by)
    if cfg.reference:  # the study's three-model design: T and B are each model's latents specific against R
        tuned = specific_sets(read_latents(run_path / files.REFERENCE_DIRS["tuned"] / files.LATENTS), cfg.specific_by)[0]
        base = specific_sets(read_latents(run_path / files.REFERENCE_DIRS["base"] / files.LATENTS), cfg.specific_by)[0]
    shifts = [A.category_shift_row(c, A.ShareCounts(sum(r["category"] == c for r in tuned), len(tuned),
                                                   sum(r["category"] == c for r in base), len(base)), seed=cfg.seed)
              for c in cats]
    model = open_crosscoder(run_path, cfg.device)
    groups = [np.array(category_members(rows, c), dtype=np.int64) for c in cats]
    seqs = sequences(run_path / files.ACTS_DIR)
    sums = group_sums(model, run_path / files.ACTS_DIR, groups, seqs)
    for row, members in zip(shifts, groups, strict=True):
        row.update(A.mass_shift(sums.latent_mass, members, seed=cfg.seed), n_latents=int(len(members)))
    usage = usage_rows(run_path, model, cats, groups, seed=cfg.seed)
    for row in shifts:
        row.update(usage.get(row["category"]) or A.usage_shift(np.zeros(0), np.zeros(0)))
    live = [r for r in rows if r["class"] != "dead" and r["category"] != "unassigned"]
    named = [c for c in cats if c != "unassigned"]
    shifted = {r["category"] for r in shifts}
    changed = A.changed_enrichment([r["category"] for r in live], [isinstance(r.get("changed"), str) for r in live],
                                   named, alpha=cfg.alpha)
    for row in shifts:
        row.update(changed[named.index(row["category"])] if row["category"] in named else
                   {"n_changed": None, "n_live": None, "changed_p": None, "changed_q": None, "changed_significant": None})
    members = {c: g for c, g in zip(cats, groups, strict=True) if c != "unassigned"}  # each category's latents
    head = headline_for(run_path, model, members, [c for c in named if c in shifted], cfg)
    for row in shifts:
        row["headline"] = head.get(row["category"])
    task_of_seq = [seqs[int(s)]["source"] if seqs[int(s)].get("kind") in ("task", "chat") else None for s in sums.seq_ids]
    deltas = {r["task"]: r for r in load_deltas(run_path)["tasks"] if r.get("delta") is not None}
    tasks = [t for t in deltas if t in set(task_of_seq)]
    skipped = sorted(set(deltas) - set(tasks))
    w = A.exposure(sums.act, sums.tokens, task_of_seq, tasks)
    assignable = [i for i, c in enumerate(cats) if c != "unassigned"]
    shift_used = HEADLINE if cfg.shift == "auto" else cfg.shift
    if shift_used == HEADLINE:
        s = np.array([signed_headline(shifts[i].get("headline")) for i in assignable])
    elif shift_used == "share":
        s = np.array([shifts[i]["log_share_ratio"] for i in assignable])
    elif shift_used == "usage":
        s = np.array([A.log_ratio(shifts[i]["usage_shift_rel"] if shifts[i]["usage_shift_rel"] is not None
                                  else shifts[i]["usage_shift"]) for i in assignable])
    else:
        s = np.array([A.log_ratio(shifts[i]["mass_shift_rel"]) for i in assignable])
    attr = A.attribute(w[:, assignable], s, tasks, [cats[i] for i in assignable],
                       {t: deltas[t]["delta"] for t in tasks}, {t: deltas[t]["category"] for t in tasks})
    attr["shift_used"] = shift_used
    attr["documents"] = document_attribution(run_path, model, seqs, {t: deltas[t]["category"] for t in deltas
                                                                      if deltas[t].get("category") in members},
                                             members, cfg.alpha)
    attr["tasks_without_prompts"] = skipped
    return {
        "format_version": 1, "taxonomy": tax.source, "reference": cfg.reference, "headline_measure": HEADLINE,
        "annotator": {"name": rows[0].get("annotator"), "alpha": cfg.alpha}, "specific_by": cfg.specific_by,
        "N_tuned": len(tuned), "N_base": len(base), "categories": shifts,
        "exposure": {t: {c: float(w[i, g]) for g, c in enumerate(cats)} for i, t in enumerate(tasks)},
        "attribution": attr, "causal": [], "top_latents": top_latents(rows, cats),
        "latent_documents": latent_documents(run_path, model, seqs, list(deltas)),
    }


def usage_rows(run_path: Path, model: Any, cats: list[str], groups: list[Any], seed: int) -> dict[str, dict[str, Any]]:
    """Usage shift per category, on its own probe texts' transcripts ({} when the run has no transcripts)."""

    tdir, pacts = run_path / files.TRANSCRIPTS_DIR, run_path / files.PROBE_ACTS_DIR
    if not tdir.is_dir() or not (pacts / files.SEQUENCES).is_file():
        return {}
    transcripts = {source_name(p, run_path): read_transcripts(p) for p in sorted(tdir.glob("*.jsonl"))}
    meta, starts = {}, {}
    for sid, seq in sequences(pacts).items():
        if seq["source"] in transcripts:
            r = transcripts[seq["source"]][seq["doc_id"]]
            meta[sid] = (Path(seq["source"]).stem, r["side"], r["index"])
            starts[sid] = r["prompt_tokens"]
    if not starts:  # the probe activations were collected on the probe texts alone
        return {}
    everything = np.arange(model.cfg.n_latents)  # the last column: all latents' mass, for the relative shift
    ids, sums = response_sums(model, pacts, [*groups, everything], starts)
    # per category present in the transcripts: [side (base, tuned), (category's mass, all mass), probe]
    by_cat = {Path(p).stem: rows for p, rows in transcripts.items()}  # transcripts/<category>.jsonl
    per = {c: np.zeros((len(SIDES), 2, len(by_cat[c]) // len(SIDES))) for c in cats if by_cat.get(c)}
    for sid, row in zip(ids, sums, strict=True):
        c, side, i = meta[int(sid)]
        if c in per:
            per[c][SIDES.index(side), :, i] += (row[cats.index(c)], row[-1])
    out = {}
    for cat, m in per.items():
        out[cat] = A.usage_shift(m[0, 0], m[1, 0], m[0, 1], m[1, 1], seed=seed)
        for side in SIDES:
            out[cat][f"empty_{side}"] = sum(1 for r in by_cat[cat] if r["side"] == side and not r["response"].strip())
    return out


def headline_for(run_path: Path, model: Any, members: dict[str, np.ndarray], names: list[str],
                 cfg: AttributionConfig) -> dict[str, dict[str, Any]]:
    """The headline measure (stages/headline.py) per category in `names` (`members`: each category's latents),
    on the run's probe activations."""
    pacts = run_path / files.PROBE_ACTS_DIR
    if not (pacts / files.SEQUENCES).is_file():
        return {}
    _, probes, probe_files = probe_inputs(cfg.probes)
    category_of_source = {source_name(p, run_path): c for p, c in zip(probe_files, probes, strict=True)}
    tdir = run_path / files.TRANSCRIPTS_DIR
    transcripts = ({source_name(p, run_path): read_transcripts(p) for p in sorted(tdir.glob("*.jsonl"))}
                   if tdir.is_dir() else {})
    cue, before, cats = H.cue_rows(pacts, category_of_source, transcripts)
    if len(cue) == 0:
        return {}
    r, own, per_cat = H.cue_differences(model, pacts, cue, {c: members[c] for c in names}, cats)
    drift = H.drift(model, pacts, before)
    margins = {}
    for source, trows in transcripts.items():
        by = {(t["side"], t["index"]): t.get("margin") for t in trows}
        m = [by[("tuned", i)] - by[("base", i)] for (side, i), v in by.items()
             if side == "base" and v is not None and by.get(("tuned", i)) is not None]
        margins[Path(source).stem] = np.array(m, dtype=np.float64)
    out = {}
    for g, row in enumerate(H.headline_rows(r, own, cats, names, cfg.alpha, margins, drift, seed=cfg.seed)):
        top = np.argsort(-per_cat[g])[:5]
        total = max(float(np.abs(per_cat[g]).sum()), 1e-12)
        row["carriers"] = [{"latent": int(j), "share": float(per_cat[g][j] / total)} for j in top if per_cat[g][j] > 0]
        out[names[g]] = row
    return out


def signed_headline(head: dict[str, Any] | None) -> float:
    """A category's shift for the task-level attribution: log(1 + cue shift) with its direction's sign;
    0 where the direction is not identified (an unsigned change predicts no particular delta)."""
    if not head or head.get("value") is None or head.get("direction") is None:
        return 0.0
    return (1.0 if head["direction"] == "+" else -1.0) * math.log1p(max(head["value"], 0.0))


def top_latents(rows: list[dict[str, Any]], cats: list[str], n: int = 5) -> dict[str, list[dict[str, Any]]]:
    out = {}
    for c in cats:
        if c == "unassigned":
            continue
        mine = sorted((r for r in rows if r["category"] == c), key=lambda r: -(r.get("enrichment") or 0))[:n]
        out[c] = [{"latent": r["latent"], "class": r["class"], "delta_norm": r["delta_norm"],
                   "enrichment": r.get("enrichment"), "q_value": r.get("q_value"),
                   "decoder_norms": r.get("decoder_norms"), "contexts": (r.get("top_contexts") or [])[:3]}
                  for r in mine]
    return out
