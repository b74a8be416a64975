"""The stages after bench, each a function of (run directory, RunConfig) → output paths.

activations → crosscoder → latents (statistics + probe-text annotation) → attribution. Every stage is
recorded in the run's manifest with a hash of its inputs, so an unchanged stage is reused on re-run, and
the long ones (activation collection, crosscoder training) resume where an interrupted run stopped.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from harness import models, taskreg
from harness.activations import source_name
from harness.config import config_hash
from harness.errors import DiffevalError, RunDirError
from harness.io import atomic_write_json, read_json
from harness.latents import LATENTS_VERSION
from harness.runconfig import RunConfig
from harness.rundir import RunDir
from harness.taxonomy import Taxonomy, load_taxonomy, organism_probes
from harness.transcripts import SIDES, TRANSCRIPTS_VERSION

log = logging.getLogger(__name__)

ACTS_DIR = "activations"
PROBE_ACTS_DIR = "probes/activations"
TRANSCRIPTS_DIR = "probes/transcripts"
CROSSCODER_DIR = "crosscoder"
LATENTS_FILE = "latents.jsonl"
ATTRIBUTION_FILE = "attribution.json"
ATTRIBUTION_VERSION = 6  # 2: changed-latent enrichment; 3: usage shift; 4: relative usage shift; 5: usage attribution by it;
# 6: a category's latents are all latents enriched on its probes (not only those it is the primary category of)
EXPANSION = 8  # n_latents = 8 × hidden size when not given
REFERENCE_DIRS = {"tuned": "reference/tuned_vs_reference", "base": "reference/base_vs_reference"}


def _hash(run: RunDir, stage: str) -> str:
    entry = run.manifest["stages"].get(stage)
    if not entry or entry.get("status") != "done":
        raise RunDirError(f"{run.path} has no finished '{stage}' stage; run `diffeval run` (or that stage) first")
    return entry["input_hash"]


def bench_tasks(cfg: RunConfig) -> list[str]:
    return [d.name for d in taskreg.resolve(cfg.tasks or taskreg.shipped_suite(), cfg.tasks_dir)]


def taxonomy_for(cfg: RunConfig) -> Taxonomy:
    overrides = organism_probes(cfg.probes_dir) if cfg.probes_dir else None
    return load_taxonomy(cfg.categories, overrides)


def _collect(run: RunDir, cfg: RunConfig, name: str, out: str, key: str, **acts_kw: Any) -> Path:
    from harness.activations import ActivationsConfig, collect_activations

    if not run.is_done(name, key):
        _fresh_dir_for(run.path / out, key)
        with run.stage(name, key) as rec:
            acfg = ActivationsConfig(base=cfg.base, tuned=cfg.tuned, layer=cfg.layer, seq_len=cfg.seq_len,
                                     tasks_dir=cfg.tasks_dir, device=cfg.device, source_root=str(run.path), **acts_kw)
            rec["outputs"] = [collect_activations(acfg, run.path / out) / "manifest.json"]
    return run.path / out


def _fresh_dir_for(directory: Path, key: str) -> None:
    """Keep `directory` for a resume of the same inputs; clear it when it holds another configuration's output."""
    import shutil

    marker = directory / ".stage_key"
    if directory.exists() and (not marker.exists() or marker.read_text() != key):
        log.info("%s holds output of other inputs; clearing it", directory)
        shutil.rmtree(directory)
    directory.mkdir(parents=True, exist_ok=True)
    marker.write_text(key)


def stage_activations(run: RunDir, cfg: RunConfig) -> Path:
    """Paired activations on the corpus (with --corpus-responses, plus the probe transcripts) and the
    benchmark tasks' prompts."""
    from harness.activations import CORPUS_DIR

    tasks = tuple(bench_tasks(cfg))
    specs = [models.describe(models.resolve_spec(s)) for s in (cfg.base, cfg.tuned)]
    extra = tuple(stage_transcripts(run, cfg, *_probe_inputs(cfg)[1:])) if cfg.corpus_responses else ()
    files = (cfg.corpus or tuple(str(p) for p in sorted(CORPUS_DIR.glob("*.jsonl")))) + extra  # default: the shipped corpus
    named = [source_name(p, run.path) for p in extra]  # run-relative: the key survives moving the run
    key = config_hash({"layer": cfg.layer, "tokens": cfg.tokens, "seq_len": cfg.seq_len, "corpus": cfg.corpus,
                       "tasks": tasks, **({"extra": named} if extra else {})}, specs,
                      [_file_stamp(p, run.path) for p in files])
    return _collect(run, cfg, "activations", ACTS_DIR, key, tokens=cfg.tokens, corpus=cfg.corpus, tasks=tasks, extra=extra)


def _probe_inputs(cfg: RunConfig) -> tuple[Taxonomy, dict[str, list[str]], list[str]]:
    """(taxonomy, probe texts per category, probe file per category); an error when no category has probes."""
    tax = taxonomy_for(cfg)
    probes = tax.probe_texts()  # reads (and checks) every probe corpus before any model work
    if not probes:
        raise DiffevalError(f"no category in {tax.source} has a probe corpus; the annotator needs at least two")
    return tax, probes, [str(tax.categories[c].probes) for c in probes]


def _file_stamp(path: str, root: Path | None = None) -> list[Any]:
    """A file's identity in a stage key: its name (relative to `root`, the run, when inside it), size and mtime."""
    p, name = Path(path), source_name(path, root)
    return [name, p.stat().st_size, p.stat().st_mtime_ns] if p.exists() else [name, None]


def stage_crosscoder(run: RunDir, cfg: RunConfig) -> Path:
    from crosscoders import CrossCoderConfig, train_crosscoder
    from crosscoders.data import ActivationDirError, config_d_models, read_manifest

    acts = run.path / ACTS_DIR
    manifest = read_manifest(acts)
    d_model = manifest["d_model"]
    n_latents = cfg.n_latents or EXPANSION * d_model
    d_models = config_d_models(manifest)
    kw = {"d_models": d_models} if d_models else {}
    try:
        cc_cfg = CrossCoderConfig(d_model=d_model, n_models=manifest["n_models"], n_latents=n_latents,
                                  k=cfg.k, n_steps=cfg.n_steps, architecture=cfg.architecture, seed=cfg.seed,
                                  device=cfg.device, checkpoint_every=max(cfg.n_steps // 4, 1), **kw)
    except ValueError as e:
        raise DiffevalError(f"crosscoder configuration: {e}") from None
    key = config_hash(cc_cfg, _hash(run, "activations"))
    out = run.path / CROSSCODER_DIR
    if not run.is_done("crosscoder", key):
        _fresh_dir_for(out, key)  # a checkpoint of these inputs resumes; any other configuration's is cleared
        with run.stage("crosscoder", key) as rec:
            try:
                train_crosscoder(cc_cfg, acts, out=out)
            except (ActivationDirError, FloatingPointError) as e:
                raise DiffevalError(str(e)) from None
            rec["outputs"] = [out / "crosscoder.safetensors", out / "cfg.json", out / "metrics.jsonl"]
    return out


def stage_latents(run: RunDir, cfg: RunConfig) -> Path:
    """latents.jsonl: statistics and top contexts per latent, plus its categories from the probe corpora
    (with --probe-responses, the probe texts as each model continues them)."""
    tax, probes, files = _probe_inputs(cfg)
    paths = stage_transcripts(run, cfg, probes, files) if cfg.probe_responses else files
    # probe file (as sequences.jsonl names it: run-relative for the transcripts) → category
    sources = {source_name(p, run.path): c for p, c in zip(paths, probes, strict=True)}
    probe_key = config_hash({"layer": cfg.layer, "seq_len": cfg.seq_len, "files": list(sources)},
                            [_file_stamp(f, run.path) for f in paths], _hash(run, "activations"))
    probe_acts = _collect(run, cfg, "probes", PROBE_ACTS_DIR, probe_key, tokens=10**9, corpus=tuple(paths))
    key = config_hash({"alpha": cfg.alpha, "taxonomy": tax.source, "version": LATENTS_VERSION}, probe_key,
                      _hash(run, "crosscoder"))
    if not run.is_done("latents", key):
        with run.stage("latents", key) as rec:
            rec["outputs"] = [write_annotated_latents(run.path, probe_acts, tax, sources, cfg.alpha, cfg.device)]
    return run.path / LATENTS_FILE


def stage_transcripts(run: RunDir, cfg: RunConfig, probes: dict[str, list[str]], files: list[str]) -> list[str]:
    """Both models' one-line responses to every probe text (probes/transcripts/<category>.jsonl)."""
    from harness.transcripts import write_transcripts

    specs = [models.describe(models.resolve_spec(s)) for s in (cfg.base, cfg.tuned)]
    key = config_hash({"max_new_tokens": cfg.probe_responses, "files": files, "dtype": cfg.dtype,
                       "version": TRANSCRIPTS_VERSION},
                      [_file_stamp(f) for f in files], specs)
    out = run.path / TRANSCRIPTS_DIR
    if not run.is_done("transcripts", key):
        _fresh_dir_for(out, key)
        with run.stage("transcripts", key) as rec:
            rec["outputs"] = write_transcripts(cfg.base, cfg.tuned, probes, out, cfg.probe_responses,
                                               dtype=cfg.dtype, device=cfg.device)
    return [str(out / f"{c}.jsonl") for c in probes]


def write_annotated_latents(run_path: Path, probe_acts: Path, tax: Taxonomy, sources: dict[str, str],
                            alpha: float, device: str = "cpu") -> Path:
    """Annotate every latent from its maximum activation per probe text; `sources` maps each probe file to its category."""
    from crosscoders import CrossCoderBase
    from harness.annotate import AnnotationInputs, EnrichmentAnnotator
    from harness.io import atomic_write_jsonl
    from harness.latent_acts import sequence_max, sequences
    from harness.latents import annotate_rows, latent_rows

    model = CrossCoderBase.load(run_path / CROSSCODER_DIR, device=device)
    rows = latent_rows(model, run_path / ACTS_DIR)
    seqs = sequences(probe_acts)
    seq_ids, seq_acts = sequence_max(model, probe_acts, seqs)
    labels = [sources[seqs[int(s)]["source"]] for s in seq_ids]
    inputs = AnnotationInputs(categories=sorted(set(labels)), descriptions={c: tax.categories[c].description for c in tax.names},
                              seq_acts=seq_acts, seq_labels=labels, latents=rows)
    annotator = EnrichmentAnnotator(alpha=alpha)
    annotate_rows(rows, annotator.annotate(inputs), annotator.name)
    return atomic_write_jsonl(run_path / LATENTS_FILE, rows)


def stage_reference(run: RunDir, cfg: RunConfig) -> None:
    """With --reference R: crosscoders of (R, tuned) and (R, base), each with its annotated latents.

    In each, model 0 is R, so "tuned-specific" latents are those specific to the compared model against R.
    """
    import dataclasses

    for side, sub in REFERENCE_DIRS.items():
        model = cfg.tuned if side == "tuned" else cfg.base
        sub_cfg = dataclasses.replace(cfg, base=cfg.reference, tuned=model, reference=None)
        sub_run = RunDir(run.path / sub)
        stage_activations(sub_run, sub_cfg)
        stage_crosscoder(sub_run, sub_cfg)
        stage_latents(sub_run, sub_cfg)


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


def stage_attribution(run: RunDir, cfg: RunConfig) -> Path:
    refs = [_hash(RunDir(run.path / sub), "latents") for sub in REFERENCE_DIRS.values()] if cfg.reference else []
    key = config_hash({"specific_by": cfg.specific_by, "shift": cfg.attribution_shift, "seed": cfg.seed,
                       "version": ATTRIBUTION_VERSION},
                      _hash(run, "latents"), _hash(run, "bench.deltas"), refs)
    out = run.path / ATTRIBUTION_FILE
    if not run.is_done("attribution", key):
        with run.stage("attribution", key) as rec:
            rec["outputs"] = [atomic_write_json(out, compute_attribution(run.path, cfg))]
    return out


def compute_attribution(run_path: Path, cfg: RunConfig) -> dict[str, Any]:
    import numpy as np

    from crosscoders import CrossCoderBase
    from harness import attribution as A
    from harness.bench import load_deltas
    from harness.latent_acts import group_sums, sequences
    from harness.latents import read_latents

    rows = read_latents(run_path / LATENTS_FILE)
    if "category" not in rows[0] or "changed" not in rows[0]:
        raise RunDirError(f"{run_path / LATENTS_FILE} was written by an older diffeval (no categories or no "
                          "`changed` column); re-run the latents stage (`diffeval run` redoes it)")
    tax = taxonomy_for(cfg)
    used = {r["category"] for r in rows}
    cats = [c for c in tax.names if c in used or tax.categories[c].probes is not None]
    tuned, base = specific_sets(rows, cfg.specific_by)
    if cfg.reference:  # the study's three-model design: T and B are each model's latents specific against R
        tuned = specific_sets(read_latents(run_path / REFERENCE_DIRS["tuned"] / LATENTS_FILE), cfg.specific_by)[0]
        base = specific_sets(read_latents(run_path / REFERENCE_DIRS["base"] / LATENTS_FILE), cfg.specific_by)[0]
    shifts = [A.category_shift_row(c, A.ShareCounts(sum(r["category"] == c for r in tuned), len(tuned),
                                                   sum(r["category"] == c for r in base), len(base)), seed=cfg.seed)
              for c in cats]
    model = CrossCoderBase.load(run_path / CROSSCODER_DIR, device=cfg.device)
    groups = [np.array(category_members(rows, c), dtype=np.int64) for c in cats]
    seqs = sequences(run_path / ACTS_DIR)
    sums = group_sums(model, run_path / ACTS_DIR, groups, seqs)
    for row, members in zip(shifts, groups, strict=True):
        row.update(A.mass_shift(sums.latent_mass, members, seed=cfg.seed), n_latents=int(len(members)))
    usage = usage_rows(run_path, model, cats, groups, seed=cfg.seed)
    for row in shifts:
        row.update(usage.get(row["category"]) or A.usage_shift(np.zeros(0), np.zeros(0)))
    live = [r for r in rows if r["class"] != "dead" and r["category"] != "unassigned"]
    named = [c for c in cats if c != "unassigned"]
    changed = A.changed_enrichment([r["category"] for r in live], [isinstance(r.get("changed"), str) for r in live],
                                   named, alpha=cfg.alpha)
    for row in shifts:
        row.update(changed[named.index(row["category"])] if row["category"] in named else
                   {"n_changed": None, "n_live": None, "changed_p": None, "changed_q": None, "changed_significant": None})
    task_of_seq = [seqs[int(s)]["source"] if seqs[int(s)].get("kind") in ("task", "chat") else None for s in sums.seq_ids]
    deltas = {r["task"]: r for r in load_deltas(run_path)["tasks"] if r.get("delta") is not None}
    tasks = [t for t in deltas if t in set(task_of_seq)]
    skipped = sorted(set(deltas) - set(tasks))
    w = A.exposure(sums.act, sums.tokens, task_of_seq, tasks)
    assignable = [i for i, c in enumerate(cats) if c != "unassigned"]
    shift_used = cfg.attribution_shift
    if shift_used == "auto":  # share ratios need enough model-specific latents to be estimated at all
        shift_used = ("share" if min(len(tuned), len(base)) >= A.MIN_SPECIFIC else "usage" if usage else "mass")
    if shift_used == "share":
        s = np.array([shifts[i]["log_share_ratio"] for i in assignable])
    elif shift_used == "usage":
        s = np.array([A.log_ratio(shifts[i]["usage_shift_rel"] if shifts[i]["usage_shift_rel"] is not None
                                  else shifts[i]["usage_shift"]) for i in assignable])
    else:
        s = np.array([A.log_ratio(shifts[i]["mass_shift_rel"]) for i in assignable])
    attr = A.attribute(w[:, assignable], s, tasks, [cats[i] for i in assignable],
                       {t: deltas[t]["delta"] for t in tasks}, {t: deltas[t]["category"] for t in tasks})
    attr["shift_used"] = shift_used
    attr["tasks_without_prompts"] = skipped
    return {
        "format_version": 1, "taxonomy": tax.source, "reference": cfg.reference,
        "annotator": {"name": rows[0].get("annotator"), "alpha": cfg.alpha}, "specific_by": cfg.specific_by,
        "N_tuned": len(tuned), "N_base": len(base), "categories": shifts,
        "exposure": {t: {c: float(w[i, g]) for g, c in enumerate(cats)} for i, t in enumerate(tasks)},
        "attribution": attr, "causal": [], "top_latents": top_latents(rows, cats),
    }


def usage_rows(run_path: Path, model: Any, cats: list[str], groups: list[Any], seed: int) -> dict[str, dict[str, Any]]:
    """Usage shift per category, on its own probe texts' transcripts ({} when the run has no transcripts)."""
    import numpy as np

    from harness import attribution as A
    from harness.latent_acts import response_sums, sequences
    from harness.transcripts import read_transcripts

    tdir, pacts = run_path / TRANSCRIPTS_DIR, run_path / PROBE_ACTS_DIR
    if not tdir.is_dir() or not (pacts / "sequences.jsonl").is_file():
        return {}
    files = {source_name(p, run_path): read_transcripts(p) for p in sorted(tdir.glob("*.jsonl"))}
    meta, starts = {}, {}
    for sid, seq in sequences(pacts).items():
        if seq["source"] in files:
            r = files[seq["source"]][seq["doc_id"]]
            meta[sid] = (Path(seq["source"]).stem, r["side"], r["index"])
            starts[sid] = r["prompt_tokens"]
    if not starts:  # the probe activations were collected on the probe texts alone
        return {}
    everything = np.arange(model.cfg.n_latents)  # the last column: all latents' mass, for the relative shift
    ids, sums = response_sums(model, pacts, [*groups, everything], starts)
    # per category present in the transcripts: [side (base, tuned), (category's mass, all mass), probe]
    by_cat = {Path(p).stem: rows for p, rows in files.items()}  # transcripts/<category>.jsonl
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


def top_latents(rows: list[dict[str, Any]], cats: list[str], n: int = 5) -> dict[str, list[dict[str, Any]]]:
    out = {}
    for c in cats:
        if c == "unassigned":
            continue
        mine = sorted((r for r in rows if r["category"] == c), key=lambda r: -(r.get("enrichment") or 0))[:n]
        out[c] = [{"latent": r["latent"], "class": r["class"], "delta_norm": r["delta_norm"],
                   "enrichment": r.get("enrichment"), "q_value": r.get("q_value"),
                   "contexts": [{"token": x.get("token"), "context": x.get("context")} for x in (r.get("top_contexts") or [])[:3]]}
                  for r in mine]
    return out


def stage_causal(run: RunDir, cfg: RunConfig) -> Path:
    """Re-score each task with its category's latents reverted (or ablated); add the results to attribution.json.

    revert (default): all of the category's live latents (`category_members`) get the base model's decoder
    back, and a control set of as many live latents drawn at random from outside it is reverted the same way, so
    "the category carries the delta" can be told from "any latents this many carry it".
    ablate: the category's tuned-specific latents are removed (the study's form); no control.
    Tasks with nothing to change or a delta of 0 are listed as skipped. (`causal_check` caches each result
    under causal/ by its own input hash.)
    """
    import numpy as np

    from harness.causal import causal_check
    from harness.latents import read_latents

    path = run.path / ATTRIBUTION_FILE
    doc = read_json(path)
    latents = read_latents(run.path / LATENTS_FILE)
    if cfg.causal_mode == "revert":
        pool = [r for r in latents if r["class"] != "dead"]
    else:
        pool = specific_sets(latents, cfg.specific_by)[0]
    rng = np.random.default_rng(cfg.seed)
    rows, skipped = [], []
    for t in doc["attribution"]["per_task"]:
        ids = category_members(pool, t["category"])
        if not ids or t["delta"] == 0:
            what = "live" if cfg.causal_mode == "revert" else "tuned-specific"
            skipped.append({"task": t["task"], "category": t["category"],
                            "reason": f"no {what} latent in its category" if not ids else "delta is 0"})
            continue
        keep = ("task", "category", "mode", "n_latents", "delta", "delta_ablated", "delta_removed", "ci_low", "ci_high")
        res = causal_check(run.path, t["task"], t["category"], ids, n_boot=cfg.bootstrap_iters, seed=cfg.seed,
                           mode=cfg.causal_mode)
        row = {k: res.get(k) for k in keep}
        others = sorted(set(r["latent"] for r in pool) - set(ids))
        if cfg.causal_mode == "revert" and len(others) >= len(ids):
            control = sorted(int(j) for j in rng.choice(others, size=len(ids), replace=False))
            ctl = causal_check(run.path, t["task"], f"{t['category']}.control", control, n_boot=cfg.bootstrap_iters,
                               seed=cfg.seed, mode=cfg.causal_mode)
            row.update(control_removed=ctl["delta_removed"], control_ci_low=ctl["ci_low"], control_ci_high=ctl["ci_high"])
        rows.append(row)
    doc["causal"], doc["causal_skipped"] = rows, skipped
    return atomic_write_json(path, doc)


def stage_report(run: RunDir) -> list[Path]:
    """report.md, report.json and figures (re-rendered on every run: it is cheap and reads only files)."""
    from reports.render import render_report

    return render_report(run.path)
