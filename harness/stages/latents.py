"""latents.jsonl: one row per latent, with its top-activating contexts from the activation cache."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np

from diffeval.crosscoders.data import read_manifest
from diffeval.crosscoders.stats import latent_stats
from diffeval.harness.core import files
from diffeval.harness.core.errors import RunDirError
from diffeval.harness.core.files import source_name
from diffeval.harness.core.io import atomic_write_jsonl, read_jsonl_rows
from diffeval.harness.core.rundir import RunDir, file_stamp
from diffeval.harness.core.stageconfig import LatentsConfig, stage_key
from diffeval.harness.stages.activations import collect_into
from diffeval.harness.stages.annotators import AnnotationInputs, EnrichmentAnnotator, LLMAnnotator
from diffeval.harness.stages.crosscoder import open_crosscoder
from diffeval.harness.stages.inputs import probe_inputs
from diffeval.harness.stages.latent_sums import sequence_max, sequences
from diffeval.harness.stages.transcripts import read_transcripts, stage_transcripts
from diffeval.harness.suite.taxonomy import Taxonomy

LATENTS_VERSION = 3  # 2: per-side ν and `changed`; 3: each probe text counts once in the enrichment test


def context_lookup(acts_dir: Path, window: int = 8) -> Any:
    """A function row -> {text, token} using the cache's tokens shards and sequences.jsonl."""

    manifest = read_manifest(acts_dir)
    tokens = np.concatenate([np.load(acts_dir / s["tokens_file"]) for s in manifest["shards"]])
    seqs = {}
    for line in (acts_dir / files.SEQUENCES).read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        seqs[row["id"]] = row

    def lookup(row: int) -> dict[str, Any]:
        seq_id, pos, _ = (int(v) for v in tokens[row])
        seq = seqs.get(seq_id, {})
        pieces = seq.get("tokens", [])
        return {"source": seq.get("kind"), "task": seq.get("source"), "doc_id": seq.get("doc_id"),
                "token": pieces[pos] if pos < len(pieces) else None,
                "context": "".join(pieces[max(0, pos - window):pos + 1])}

    return lookup


def write_latents(model: Any, acts: str | Path, out: Path) -> Path:
    return atomic_write_jsonl(out, latent_rows(model, acts))


def latent_rows(model: Any, acts: str | Path) -> list[dict[str, Any]]:
    """latents.jsonl rows (statistics and top contexts) before annotation."""

    acts = Path(acts)
    table = latent_stats(model, acts, contexts=context_lookup(acts))
    return [{"format_version": LATENTS_VERSION, **r} for r in table.to_dict(orient="records")]


def annotate_rows(rows: list[dict[str, Any]], labels: list[Any], annotator: str) -> None:
    """Add category, categories, q_value, enrichment and annotator to each row (in place)."""
    by_latent = {lab.latent: lab for lab in labels}
    for row in rows:
        lab = by_latent[int(row["latent"])]
        row.update({"category": lab.category, "categories": list(lab.categories), "q_value": lab.q_value,
                    "enrichment": lab.enrichment, "annotator": annotator})


def read_latents(path: str | Path) -> list[dict[str, Any]]:
    path = Path(path)
    if not path.is_file():
        raise RunDirError(f"{path} does not exist; run the latents stage first")
    return read_jsonl_rows(path)


def stage_latents(run: RunDir, cfg: LatentsConfig) -> Path:
    """latents.jsonl: statistics and top contexts per latent, plus its categories from the probe corpora
    (with `cfg.transcripts`, the probe texts as each model continues them)."""
    tax, probes, probe_files = probe_inputs(cfg.probes)
    paths = stage_transcripts(run, cfg.transcripts) if cfg.transcripts else probe_files
    # probe file (as sequences.jsonl names it: run-relative for the transcripts) → category
    sources = {source_name(p, run.path): c for p, c in zip(paths, probes, strict=True)}
    probe_key = stage_key(dataclasses.replace(cfg.collect, corpus=tuple(sources)),
                          [file_stamp(f, run.path) for f in paths], run.key("activations"))
    probe_acts = collect_into(run, "probes", files.PROBE_ACTS_DIR, probe_key,
                              dataclasses.replace(cfg.collect, corpus=tuple(paths), source_root=str(run.path)))
    key = stage_key(cfg, tax.source, LATENTS_VERSION, probe_key, run.key("crosscoder"))
    if not run.is_done("latents", key):
        with run.stage("latents", key) as rec:
            rec["outputs"] = [write_annotated_latents(run.path, probe_acts, tax, sources, cfg)]
    return run.path / files.LATENTS


def per_probe(seq_ids: np.ndarray, seq_acts: np.ndarray, seqs: dict[int, dict[str, Any]], sources: dict[str, str],
              run_path: Path) -> tuple[np.ndarray, list[str]]:
    """One row per probe text (its latents' maximum over every sequence that holds it) and its category.

    A probe continued by both models is two transcript sequences with one prompt; the enrichment test's unit
    is the probe text, so the two count once (the maximum over prompt and both responses)."""
    probe_index = {}
    for source in sources:
        path = run_path / source
        if source.startswith(f"{files.TRANSCRIPTS_DIR}/") and path.is_file():
            probe_index[source] = [t["index"] for t in read_transcripts(path)]
    def key(seq: dict[str, Any]) -> tuple[str, int]:
        source = seq["source"]
        return source, probe_index[source][seq["doc_id"]] if source in probe_index else seq["doc_id"]

    keys = [key(seqs[int(s)]) for s in seq_ids]
    unit = {k: i for i, k in enumerate(dict.fromkeys(keys))}
    rows = np.array([unit[k] for k in keys])
    out = np.zeros((len(unit), seq_acts.shape[1]), dtype=seq_acts.dtype)
    np.maximum.at(out, rows, seq_acts)
    return out, [sources[source] for source, _ in unit]


def write_annotated_latents(run_path: Path, probe_acts: Path, tax: Taxonomy, sources: dict[str, str],
                            cfg: LatentsConfig) -> Path:
    """Annotate every latent from its maximum activation per probe text (`sources` maps each probe file to its
    category), or with `cfg.annotator` llm from its top contexts."""
    model = open_crosscoder(run_path, cfg.device)
    rows = latent_rows(model, run_path / files.ACTS_DIR)
    seqs = sequences(probe_acts)
    seq_ids, seq_acts = sequence_max(model, probe_acts, seqs)
    seq_acts, labels = per_probe(seq_ids, seq_acts, seqs, sources, run_path)
    inputs = AnnotationInputs(categories=sorted(set(labels)), descriptions={c: tax.categories[c].description for c in tax.names},
                              seq_acts=seq_acts, seq_labels=labels, latents=rows)
    annotator = (EnrichmentAnnotator(alpha=cfg.alpha) if cfg.annotator == "enrichment"
                 else LLMAnnotator(base_url=cfg.llm_url, model=cfg.llm_model))
    annotate_rows(rows, annotator.annotate(inputs), annotator.name)
    return atomic_write_jsonl(run_path / files.LATENTS, rows)
