"""latents.jsonl: one row per latent, with its top-activating contexts from the activation cache."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np

from diffeval.crosscoders.data import as_source, read_manifest
from diffeval.crosscoders.stats import latent_stats
from diffeval.harness.core import files, progress
from diffeval.harness.core.errors import RunDirError
from diffeval.harness.core.files import source_name
from diffeval.harness.core.io import atomic_write_jsonl, read_jsonl_rows
from diffeval.harness.core.rundir import RunDir, file_stamp
from diffeval.harness.core.stageconfig import LatentsConfig, stage_key
from diffeval.harness.stages.activations import collect_into
from diffeval.harness.stages.annotators import AnnotationInputs, EnrichmentAnnotator
from diffeval.harness.stages.crosscoder import open_crosscoder
from diffeval.harness.stages.inputs import probe_inputs
from diffeval.harness.stages.latent_sums import sequence_max, sequences
from diffeval.harness.stages.llm_annotator import LLMAnnotator
from diffeval.harness.stages.transcripts import read_transcripts, stage_transcripts
from diffeval.harness.suite.taxonomy import Taxonomy

LATENTS_VERSION = 4  # 2: per-side ν and `changed`; 3: each probe text counts once in the enrichment test;
# 4: decoded, deduplicated contexts with per-token activations


CONTEXT_BEFORE, CONTEXT_AFTER = 10, 4  # tokens shown around a latent's activating token


def context_lookup(acts_dir: Path, before: int = CONTEXT_BEFORE, after: int = CONTEXT_AFTER) -> Any:
    """A function row -> the context of that activation-cache row, from the cache's tokens and sequences.jsonl.

    A context is {source, task, doc_id, token, context, pieces, at, rows}: `pieces` are the decoded tokens
    around the row's token (`at` its index), `context` the text up to and including it, and `rows` the cache
    row of each piece (-1 where the cache has none: special tokens, dropped outliers), for per-token activations.
    """
    manifest = read_manifest(acts_dir)
    tokens = np.concatenate([np.load(acts_dir / s["tokens_file"]) for s in manifest["shards"]])
    seqs = {}
    for line in (acts_dir / files.SEQUENCES).read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        seqs[row["id"]] = row

    def lookup(row: int) -> dict[str, Any]:
        seq_id, pos, _ = (int(v) for v in tokens[row])
        seq = seqs.get(seq_id, {})
        pieces = seq.get("pieces") or seq.get("tokens", [])  # a cache from before SEQUENCES_VERSION 2: raw tokens
        lo, hi = max(0, pos - before), min(len(pieces), pos + after + 1)
        near = range(max(0, row - before - 2), min(len(tokens), row + after + 3))
        at_pos = {int(tokens[r][1]): r for r in near if int(tokens[r][0]) == seq_id}
        return {"source": seq.get("kind"), "task": seq.get("source"), "doc_id": seq.get("doc_id"),
                "token": pieces[pos] if pos < len(pieces) else None, "context": "".join(pieces[lo:pos + 1]),
                "pieces": pieces[lo:hi], "at": pos - lo, "rows": [at_pos.get(q, -1) for q in range(lo, hi)]}

    return lookup


def write_latents(model: Any, acts: str | Path, out: Path) -> Path:
    return atomic_write_jsonl(out, latent_rows(model, acts))


def latent_rows(model: Any, acts: str | Path) -> list[dict[str, Any]]:
    """latents.jsonl rows (statistics and top contexts, deduplicated, with per-token activations) before
    annotation."""

    acts = Path(acts)
    table = latent_stats(model, acts, contexts=context_lookup(acts),
                         batches=lambda starts: progress.track(starts, "latent stats", "batches"))
    rows = [{"format_version": LATENTS_VERSION, **r} for r in table.to_dict(orient="records")]
    context_activations(model, acts, rows)
    return rows


def context_activations(model: Any, acts: Path, rows: list[dict[str, Any]], batch: int = 4096) -> None:
    """Give each top context the latent's activation at every piece (`acts`, None where the cache has no row),
    keep one context per distinct text and activating position (`count`: how many top rows it stood for), and
    give each latent its decoder norm per model (`decoder_norms`, base then tuned: a piece's activation in
    model m is its activation times that norm, what the latent writes into m)."""
    import torch

    wanted: dict[int, set[int]] = {}  # cache row -> the latents whose contexts read it
    for row in rows:
        for c in row.get("top_contexts") or []:
            for r in c["rows"]:
                if r >= 0:
                    wanted.setdefault(r, set()).add(int(row["latent"]))
    needed = sorted(wanted)
    source = as_source(acts, model.cfg)
    values: dict[tuple[int, int], float] = {}  # only the (row, latent) activations asked for
    with torch.no_grad():
        for i in range(0, len(needed), batch):
            chunk = needed[i: i + batch]
            f = model.encode(source[torch.tensor(chunk)].to(model.W_dec.device)).float().cpu()
            for k, r in enumerate(chunk):
                js = sorted(wanted[r])
                values.update(zip(((r, j) for j in js), f[k, js].tolist(), strict=True))
    norms = model.W_dec.detach().float().norm(dim=-1).cpu()  # [n_latents, n_models]
    for row in rows:
        j = int(row["latent"])
        row["decoder_norms"] = [round(float(v), 4) for v in norms[j]]
        seen: dict[tuple[str, int], dict[str, Any]] = {}
        for c in row.get("top_contexts") or []:
            key = ("".join(c["pieces"]), c["at"])
            if key in seen:
                seen[key]["count"] += 1
                continue
            c["acts"] = [None if r < 0 else round(values[(r, j)], 4) for r in c.pop("rows")]
            c["count"] = 1
            seen[key] = c
        row["top_contexts"] = list(seen.values())


def annotate_rows(rows: list[dict[str, Any]], labels: list[Any], annotator: str) -> None:
    """Add category, categories, q_value, enrichment and annotator to each row (in place)."""
    by_latent = {lab.latent: lab for lab in labels}
    for row in rows:
        lab = by_latent[int(row["latent"])]
        row.update({"category": lab.category, "categories": list(lab.categories), "q_value": lab.q_value,
                    "enrichment": lab.enrichment, "annotator": annotator})
        if lab.detection is not None or lab.proposed is not None:  # the LLM annotator's label and its test
            row.update({"proposed": lab.proposed, "detection": lab.detection})


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
                 else LLMAnnotator(base_url=cfg.annotator_url, model=cfg.annotator_model))
    annotate_rows(rows, annotator.annotate(inputs), annotator.name)
    return atomic_write_jsonl(run_path / files.LATENTS, rows)
