"""Crosscoder latent activations over an activation cache, summarised per sequence.

Two summaries: the maximum activation of every latent per sequence (for probe-text enrichment), and
per-sequence sums per group of latents (for exposure and mass shift), where the mass of latent j in
model m is f_j·‖d_j^m‖, its decoded activation norm in the crosscoder's normalised space.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diffeval.crosscoders.data import as_source, read_manifest
from diffeval.harness.core import files, progress
from diffeval.harness.core.errors import RunDirError
from diffeval.harness.core.io import read_jsonl_rows

BATCH = 4096


def sequences(acts_dir: str | Path) -> dict[int, dict[str, Any]]:
    """sequences.jsonl of an activation cache: {sequence id: {kind, source, doc_id, text, …}}."""
    rows = read_jsonl_rows(Path(acts_dir) / files.SEQUENCES)
    if not all(isinstance(r, dict) and isinstance(r.get("id"), int) for r in rows):
        raise RunDirError(f"{Path(acts_dir) / files.SEQUENCES} has rows without an integer 'id'; delete "
                          f"{acts_dir} and re-run to collect it again")
    return {r["id"]: r for r in rows}


@torch.no_grad()
def encoded_batches(model: Any, acts_dir: str | Path, desc: str = "encoding") -> Iterator[tuple[np.ndarray, torch.Tensor]]:
    """(sequence id per row [B], latent activations [B, n_latents]) over the whole cache."""

    acts_dir = Path(acts_dir)
    source = as_source(acts_dir, model.cfg)
    manifest = read_manifest(acts_dir)
    seq_ids = np.concatenate([np.load(acts_dir / s["tokens_file"], mmap_mode="r")[:, 0] for s in manifest["shards"]])
    device = next(model.parameters()).device
    for start in progress.track(range(0, len(source), BATCH), desc, "batches"):
        idx = torch.arange(start, min(start + BATCH, len(source)))
        yield seq_ids[start:idx[-1] + 1], model.encode(source[idx].to(device)).float().cpu()


def sequence_max(model: Any, acts_dir: str | Path, seqs: dict[int, Any]) -> tuple[np.ndarray, np.ndarray]:
    """(sequence ids [S], max activation per sequence and latent [S, n_latents]); seqs = sequences(acts_dir)."""
    ids = np.array(sorted(seqs))
    pos = {s: i for i, s in enumerate(ids)}
    out = torch.zeros(len(ids), model.cfg.n_latents)
    for seq, f in encoded_batches(model, acts_dir, desc="probe activations"):
        rows = torch.as_tensor([pos[int(s)] for s in seq])
        out.index_reduce_(0, rows, f, "amax")
    return ids, out.numpy()


@dataclass
class GroupSums:
    seq_ids: np.ndarray   # [S]
    tokens: np.ndarray    # [S] rows per sequence
    act: np.ndarray       # [S, G] Σ_{j∈g} f_j over the sequence's rows
    mass: np.ndarray      # [S, G, n_models] Σ_{j∈g} f_j‖d_j^m‖
    latent_mass: np.ndarray  # [n_latents, n_models] Σ over the whole cache of f_j‖d_j^m‖


def group_sums(model: Any, acts_dir: str | Path, groups: list[np.ndarray], seqs: dict[int, Any]) -> GroupSums:
    """Per-sequence activation and decoded mass of each latent group; seqs = sequences(acts_dir)."""
    ids = np.array(sorted(seqs))
    pos = {s: i for i, s in enumerate(ids)}
    n_models = model.cfg.n_models
    member = torch.zeros(model.cfg.n_latents, len(groups))  # [n_latents, G] 0/1
    for g, idx in enumerate(groups):
        member[torch.as_tensor(idx, dtype=torch.long), g] = 1.0
    norms = model.W_dec.detach().float().norm(dim=-1).cpu()  # [n_latents, n_models]
    weighted = member[:, :, None] * norms[:, None, :]       # [n_latents, G, n_models]
    tokens = torch.zeros(len(ids))
    act = torch.zeros(len(ids), len(groups), dtype=torch.float64)
    mass = torch.zeros(len(ids), len(groups) * n_models, dtype=torch.float64)
    per_latent = torch.zeros(model.cfg.n_latents, dtype=torch.float64)
    for seq, f in encoded_batches(model, acts_dir, desc="category activations"):
        per_latent += f.double().sum(0)
        rows = torch.as_tensor([pos[int(s)] for s in seq])
        tokens.index_add_(0, rows, torch.ones(len(rows)))
        act.index_add_(0, rows, (f @ member).double())
        mass.index_add_(0, rows, (f @ weighted.reshape(len(norms), -1)).double())
    return GroupSums(ids, tokens.numpy(), act.numpy(), mass.reshape(len(ids), len(groups), n_models).numpy(),
                     (per_latent[:, None] * norms.double()).numpy())


def response_sums(model: Any, acts_dir: str | Path, groups: list[np.ndarray], starts: dict[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Σ over each sequence's response rows (positions ≥ starts[seq]) of Σ_{j∈g} f_j‖d_j‖, with ‖d_j‖ the
    latent's decoder norm over both models: (sequence ids [S], sums [S, G]). Sequences not in `starts` are skipped."""

    acts_dir = Path(acts_dir)
    manifest = read_manifest(acts_dir)
    positions = np.concatenate([np.load(acts_dir / s["tokens_file"], mmap_mode="r")[:, 1] for s in manifest["shards"]])
    ids = np.array(sorted(starts))
    pos = {s: i for i, s in enumerate(ids)}
    norms = model.W_dec.detach().float().flatten(1).norm(dim=-1).cpu()  # [n_latents]
    weighted = torch.zeros(model.cfg.n_latents, len(groups))
    for g, idx in enumerate(groups):
        idx = torch.as_tensor(idx, dtype=torch.long)
        weighted[idx, g] = norms[idx]
    out = torch.zeros(len(ids), len(groups), dtype=torch.float64)
    offset = 0
    for seq, f in encoded_batches(model, acts_dir, desc="response activations"):
        here = positions[offset:offset + len(seq)]
        offset += len(seq)
        keep = [i for i, (s, p) in enumerate(zip(seq, here, strict=True)) if int(s) in pos and p >= starts[int(s)]]
        if keep:
            rows = torch.as_tensor([pos[int(seq[i])] for i in keep])
            out.index_add_(0, rows, (f[keep] @ weighted).double())
    return ids, out.numpy()
