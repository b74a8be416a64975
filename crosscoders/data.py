"""Activation sources: an in-memory tensor or an activation directory of memory-mapped shards.

Directory layout (written by `harness.activations`):
  manifest.json              format_version, models, layer, dtype, n_models, d_model, d_models (hidden
                             size per model), rows, shards[], mean/std per model, complete=true once
                             collection finished
  acts_00000.npy …           [rows, n_models, d_model] (numpy .npy, read memory-mapped); when the
                             models' hidden sizes differ, [rows, Σ d_models] (the models side by side),
                             zero-padded to [rows, n_models, d_model] on read
  tokens_00000.npy …         [rows, 3] int64: sequence id, position, token id
  sequences.jsonl            one row per sequence: kind (plain, chat or task), source, doc id, text, tokens
Every shard's row count and byte size are in the manifest, so a truncated or swapped shard is
caught before training reads it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diffeval.crosscoders.config import CrossCoderConfig
from diffeval.crosscoders.distributed import rank_world
from diffeval.crosscoders.files import MANIFEST, SEQUENCES, file_sha256
from diffeval.crosscoders.stream import RowStream

FORMAT_VERSION = 1


class ActivationDirError(ValueError):
    """An activation directory that is incomplete, corrupt or inconsistent."""


class TensorSource:
    def __init__(self, acts: torch.Tensor) -> None:
        self.acts = acts

    def __len__(self) -> int:
        return self.acts.shape[0]

    def __getitem__(self, idx: torch.Tensor) -> torch.Tensor:
        return self.acts[idx].float()


class ActivationStore:
    """Random access to the rows of an activation directory without loading it into memory."""

    def __init__(self, directory: str | Path, check_hashes: bool = False) -> None:
        self.dir = Path(directory)
        self.manifest = read_manifest(self.dir)
        self.shards = []
        for entry in self.manifest["shards"]:
            path = self.dir / entry["file"]
            validate_shard(path, entry, self.manifest, check_hashes)
            self.shards.append(np.load(path, mmap_mode="r"))
        self.offsets = np.cumsum([0] + [len(s) for s in self.shards])
        self.d_models = model_dims(self.manifest)
        self.d_model = self.manifest["d_model"]
        self.dtype = self.manifest.get("dtype", "float32")

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitem__(self, idx: torch.Tensor) -> torch.Tensor:
        idx = np.asarray(idx, dtype=np.int64)
        shard = np.searchsorted(self.offsets, idx, side="right") - 1
        out = np.zeros((len(idx), len(self.d_models), self.d_model), dtype=np.float32)
        for s in np.unique(shard):
            sel = shard == s
            local = idx[sel] - self.offsets[s]
            order = np.argsort(local)  # sorted reads are kinder to the page cache
            block = from_stored(self.shards[s][local[order]], self.dtype)
            out[np.flatnonzero(sel)[order]] = padded_rows(block, self.d_models, self.d_model)
        return torch.from_numpy(out)


def to_stored(acts: np.ndarray, dtype: str) -> np.ndarray:
    """Rows in a shard's dtype; bfloat16, which numpy lacks, as its 16 raw bits (uint16, rounded to nearest)."""
    if dtype == "bfloat16":
        x = torch.from_numpy(np.ascontiguousarray(acts, dtype=np.float32))
        return x.to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    return acts.astype(dtype)


def from_stored(block: np.ndarray, dtype: str) -> np.ndarray:
    """A shard's rows as float32 (bfloat16's bits are the top half of a float32's)."""
    if dtype == "bfloat16":
        return (block.astype(np.uint32) << 16).view(np.float32)
    return block.astype(np.float32, copy=False)


def padded_rows(block: np.ndarray, dims: tuple[int, ...], d_model: int) -> np.ndarray:
    """Stored rows as [rows, n_models, d_model]: a [rows, Σ d_m] block (hidden sizes that differ) has each
    model's slice zero-padded to d_model; a [rows, n, d] block is returned as it is."""
    if block.ndim == 3:
        return block
    out = np.zeros((len(block), len(dims), d_model), dtype=np.float32)
    start = 0
    for m, d_m in enumerate(dims):
        out[:, m, :d_m] = block[:, start:start + d_m]
        start += d_m
    return out


def model_dims(manifest: dict[str, Any]) -> tuple[int, ...]:
    """Hidden size of every model in an activation manifest (older manifests hold only d_model)."""
    return tuple(manifest.get("d_models") or [manifest["d_model"]] * manifest["n_models"])


def config_d_models(manifest: dict[str, Any]) -> tuple[int, ...] | None:
    """The CrossCoderConfig.d_models for an activation directory: None when all sizes are equal."""
    dims = model_dims(manifest)
    return dims if len(set(dims)) > 1 else None


def crosscoder_config(manifest: dict[str, Any], **kw: Any) -> CrossCoderConfig:
    """The CrossCoderConfig for an activation directory's manifest: its hidden size(s) and number of models,
    plus the training settings in `kw`."""
    return CrossCoderConfig(d_model=manifest["d_model"], n_models=manifest["n_models"],
                            d_models=config_d_models(manifest), **kw)


def stored_shape(manifest: dict[str, Any], rows: int) -> tuple[int, ...]:
    """Shape of a shard on disk: [rows, n, d], or [rows, Σ d_m] when the hidden sizes differ."""
    dims = model_dims(manifest)
    return (rows, sum(dims)) if len(set(dims)) > 1 else (rows, manifest["n_models"], manifest["d_model"])


def read_manifest(directory: Path) -> dict[str, Any]:
    path = directory / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise ActivationDirError(f"{directory} is not an activation directory (no {MANIFEST})") from None
    except json.JSONDecodeError as e:
        raise ActivationDirError(f"{path} is not valid JSON ({e.msg}); re-run the collection") from None
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ActivationDirError(f"{path}: format_version {manifest.get('format_version')} is not {FORMAT_VERSION}")
    if not manifest.get("complete"):
        raise ActivationDirError(f"{directory}: collection did not finish; re-run it to resume")
    return manifest


def validate_shard(path: Path, entry: dict[str, Any], manifest: dict[str, Any], check_hash: bool) -> None:
    if not path.exists():
        raise ActivationDirError(f"shard {path} listed in the manifest is missing")
    if path.stat().st_size != entry["bytes"]:
        raise ActivationDirError(f"shard {path} has {path.stat().st_size} bytes, the manifest says "
                                 f"{entry['bytes']}: truncated or replaced; re-run the collection")
    arr = np.load(path, mmap_mode="r")
    want = stored_shape(manifest, entry["rows"])
    if arr.shape != want:
        raise ActivationDirError(f"shard {path} has shape {arr.shape}, the manifest says {want}")
    if check_hash:
        if file_sha256(path) != entry["sha256"]:
            raise ActivationDirError(f"shard {path} does not match its sha256 in the manifest (corrupt); "
                                     "delete the activation directory and collect again")
        root = path
        for _ in Path(entry["file"]).parts:  # the directory the entry's names are relative to
            root = root.parent
        tokens = root / entry["tokens_file"]
        if "tokens_sha256" in entry and (not tokens.is_file() or file_sha256(tokens) != entry["tokens_sha256"]):
            raise ActivationDirError(f"token shard {tokens} is missing or does not match its sha256 in the manifest "
                                     "(corrupt); delete the activation directory and collect again")


def verify_cache(directory: str | Path) -> dict[str, Any]:
    """Every shard and sequences.jsonl of an activation directory against the sha256 its manifest records.

    Reads the whole cache once (about as long as one pass of training over it); the pipeline does this when
    it reuses a cache it did not write in the same run, so corrupted bytes of the right size are caught."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    for entry in manifest["shards"]:
        validate_shard(directory / entry["file"], entry, manifest, check_hash=True)
    digest, seqs = manifest.get("sequences_sha256"), directory / SEQUENCES
    if digest and (not seqs.is_file() or file_sha256(seqs) != digest):
        raise ActivationDirError(f"{seqs} is missing or does not match its sha256 in the manifest (corrupt); "
                                 "delete the activation directory and collect again")
    return manifest


def as_source(acts: Any, cfg: Any = None) -> Any:
    """Wrap a tensor [N, n_models, d_model] or an activation directory (a RowStream is used as it is); check
    it matches `cfg`."""
    if isinstance(acts, RowStream):
        return _check_stream(acts, cfg)
    if isinstance(acts, torch.Tensor):
        if acts.ndim != 3:
            raise ValueError(f"activations must be [N, n_models, d_model], got shape {tuple(acts.shape)}")
        source: Any = TensorSource(acts)
        shape = tuple(acts.shape[1:])
        dims = cfg.model_dims() if cfg is not None and shape == (cfg.n_models, cfg.d_model) else None
        if dims and any(acts[:, m, d_m:].any() for m, d_m in enumerate(dims)):
            raise ValueError(f"activations have non-zero entries beyond d_models={cfg.d_models}: pad each "
                             "smaller model's activations with zeros, or fix d_models")
    else:
        source = ActivationStore(acts)
        shape = (source.manifest["n_models"], source.manifest["d_model"])
        if cfg is not None and shape == (cfg.n_models, cfg.d_model) and source.d_models != cfg.model_dims():
            raise ValueError(f"{acts} holds models of hidden sizes {source.d_models} but the config says "
                             f"d_models={cfg.d_models}; set d_models={source.d_models}")
    if cfg is not None and shape != (cfg.n_models, cfg.d_model):
        raise ValueError(f"activations are [*, {shape[0]}, {shape[1]}] but the config says "
                         f"n_models={cfg.n_models}, d_model={cfg.d_model}")
    if len(source) == 0:
        raise ValueError("no activation rows to train on")
    return source


def _check_stream(stream: Any, cfg: Any) -> Any:
    """A RowStream whose rows match `cfg` (shape; under torchrun, refused: each rank would need its own)."""
    shape = tuple(stream.buffer.shape[1:])
    if cfg is not None and shape != (cfg.n_models, cfg.d_model):
        raise ValueError(f"the activation stream gives rows [*, {shape[0]}, {shape[1]}] but the config says "
                         f"n_models={cfg.n_models}, d_model={cfg.d_model}")
    if rank_world()[1] > 1:
        raise ValueError("a streamed crosscoder trains in one process; under torchrun train on a cache")
    return stream
