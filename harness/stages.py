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
from harness.config import config_hash
from harness.errors import DiffevalError, RunDirError
from harness.io import atomic_write_json, read_json
from harness.rundir import RunDir
from harness.runconfig import RunConfig
from harness.taxonomy import Taxonomy, load_taxonomy, organism_probes

log = logging.getLogger(__name__)

ACTS_DIR = "activations"
PROBE_ACTS_DIR = "probes/activations"
CROSSCODER_DIR = "crosscoder"
LATENTS_FILE = "latents.jsonl"
ATTRIBUTION_FILE = "attribution.json"
EXPANSION = 8  # n_latents = 8 × hidden size when not given


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
        with run.stage(name, key) as rec:
            acfg = ActivationsConfig(base=cfg.base, tuned=cfg.tuned, layer=cfg.layer, seq_len=cfg.seq_len,
                                     tasks_dir=cfg.tasks_dir, device=cfg.device, **acts_kw)
            rec["outputs"] = [collect_activations(acfg, run.path / out) / "manifest.json"]
    return run.path / out


def stage_activations(run: RunDir, cfg: RunConfig) -> Path:
    """Paired activations on the corpus and the benchmark tasks' prompts."""
    tasks = tuple(bench_tasks(cfg))
    specs = [models.describe(models.resolve_spec(s)) for s in (cfg.base, cfg.tuned)]
    key = config_hash({"layer": cfg.layer, "tokens": cfg.tokens, "seq_len": cfg.seq_len, "corpus": cfg.corpus,
                       "tasks": tasks}, specs, [_file_stamp(p) for p in cfg.corpus])
    return _collect(run, cfg, "activations", ACTS_DIR, key, tokens=cfg.tokens, corpus=cfg.corpus, tasks=tasks)


def _file_stamp(path: str) -> list[Any]:
    p = Path(path)
    return [str(p), p.stat().st_size, p.stat().st_mtime_ns] if p.exists() else [str(p), None]


def stage_crosscoder(run: RunDir, cfg: RunConfig) -> Path:
    from crosscoders import CrossCoderConfig, train_crosscoder
    from crosscoders.data import ActivationDirError, read_manifest

    acts = run.path / ACTS_DIR
    manifest = read_manifest(acts)
    d_model = manifest["d_model"]
    n_latents = cfg.n_latents or EXPANSION * d_model
    kw = {"d_models": tuple(manifest["d_models"])} if manifest.get("d_models") else {}
    try:
        cc_cfg = CrossCoderConfig(d_model=d_model, n_models=manifest["n_models"], n_latents=n_latents,
                                  k=cfg.k, n_steps=cfg.n_steps, architecture=cfg.architecture, seed=cfg.seed,
                                  device=cfg.device, checkpoint_every=max(cfg.n_steps // 4, 1), **kw)
    except ValueError as e:
        raise DiffevalError(f"crosscoder configuration: {e}") from None
    key = config_hash(cc_cfg, _hash(run, "activations"))
    out = run.path / CROSSCODER_DIR
    if not run.is_done("crosscoder", key):
        with run.stage("crosscoder", key) as rec:
            if (out / "cfg.json").exists() or (out / "checkpoint.pt").exists():
                old = read_json(out / "cfg.json") if (out / "cfg.json").exists() else None
                if old is not None and {k: v for k, v in old.items() if k in cc_cfg.to_dict()} != cc_cfg.to_dict():
                    _clear(out)
            try:
                train_crosscoder(cc_cfg, acts, out=out)
            except (ActivationDirError, FloatingPointError) as e:
                raise DiffevalError(str(e)) from None
            rec["outputs"] = [out / "crosscoder.safetensors", out / "cfg.json", out / "metrics.jsonl"]
    return out


def _clear(directory: Path) -> None:
    for p in directory.iterdir():
        if p.is_file():
            p.unlink()


def stage_latents(run: RunDir, cfg: RunConfig) -> Path:
    """latents.jsonl: statistics and top contexts per latent, plus its categories from the probe corpora."""
    tax = taxonomy_for(cfg)
    probes = tax.probe_texts()  # reads (and checks) every probe corpus before any model work
    if not probes:
        raise DiffevalError(f"no category in {tax.source} has a probe corpus; the annotator needs at least two")
    files = [str(tax.categories[c].probes) for c in probes]
    probe_key = config_hash({"layer": cfg.layer, "seq_len": cfg.seq_len, "files": files},
                            [_file_stamp(f) for f in files], _hash(run, "activations"))
    probe_acts = _collect(run, cfg, "probes", PROBE_ACTS_DIR, probe_key, tokens=10**9, corpus=tuple(files))
    key = config_hash({"alpha": cfg.alpha, "taxonomy": tax.source}, probe_key, _hash(run, "crosscoder"))
    if not run.is_done("latents", key):
        with run.stage("latents", key) as rec:
            rec["outputs"] = [write_annotated_latents(run.path, probe_acts, tax, cfg.alpha)]
    return run.path / LATENTS_FILE


def write_annotated_latents(run_path: Path, probe_acts: Path, tax: Taxonomy, alpha: float) -> Path:
    from crosscoders import CrossCoderBase
    from harness.annotate import AnnotationInputs, EnrichmentAnnotator
    from harness.latent_acts import sequence_max, sequences
    from harness.latents import annotate_rows, latent_rows, write_rows

    model = CrossCoderBase.load(run_path / CROSSCODER_DIR)
    rows = latent_rows(model, run_path / ACTS_DIR)
    seq_ids, seq_acts = sequence_max(model, probe_acts)
    seqs = sequences(probe_acts)
    by_file = {str(c.probes): c.name for c in tax.categories.values() if c.probes is not None}
    labels = [by_file[seqs[int(s)]["source"]] for s in seq_ids]
    inputs = AnnotationInputs(categories=sorted(set(labels)), descriptions={c: tax.categories[c].description for c in tax.names},
                              seq_acts=seq_acts, seq_labels=labels, latents=rows)
    annotator = EnrichmentAnnotator(alpha=alpha)
    annotate_rows(rows, annotator.annotate(inputs), annotator.name)
    return write_rows(rows, run_path / LATENTS_FILE)
