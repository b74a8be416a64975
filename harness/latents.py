"""latents.jsonl: one row per latent, with its top-activating contexts from the activation cache."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from harness.io import atomic_write_jsonl

LATENTS_VERSION = 2  # 2: per-side ν and `changed`


def context_lookup(acts_dir: Path, window: int = 8) -> Any:
    """A function row -> {text, token} using the cache's tokens shards and sequences.jsonl."""
    from crosscoders.data import read_manifest

    manifest = read_manifest(acts_dir)
    tokens = np.concatenate([np.load(acts_dir / s["tokens_file"]) for s in manifest["shards"]])
    seqs = {}
    for line in (acts_dir / "sequences.jsonl").read_text(encoding="utf-8").splitlines():
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
    from crosscoders.stats import latent_stats

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
        from harness.errors import RunDirError

        raise RunDirError(f"{path} does not exist; run the latents stage first")
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
