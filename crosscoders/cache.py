"""Writing an activation directory (layout in crosscoders.data): shards, exact resume, rank merge.

A collection hands the writer the rows of one batch of sequences at a time; the writer buffers
them and writes a shard whenever `shard_rows` are buffered or the token budget is reached. After
each shard the manifest records where an interrupted run restarts so that it reproduces the rest
byte for byte: `resume.sequence` is the first sequence of the batch holding the next unwritten
row and `resume.skip` how many of that batch's rows are already on disk. The restarted run
recomputes that batch exactly as before (same sequences, same padding) and drops the skipped rows.

Under torchrun every rank writes its own directory (`rank_00/` …) and `merge_rank_dirs` writes the
one top-level manifest that lists all ranks' shards.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from diffeval.crosscoders.data import MANIFEST, ActivationDirError, from_stored, model_dims, to_stored
from diffeval.crosscoders.files import SEQUENCES, atomic_write_text, file_sha256, write_json_atomic

RANK_DIR = "rank_{:02d}"


class ShardWriter:
    """Buffers one rank's rows, writes shards atomically and keeps the manifest's resume point."""

    def __init__(self, out: Path, manifest: dict[str, Any], budget: int, shard_rows: int, store_dtype: str) -> None:
        self.out, self.manifest = out, manifest
        self.budget, self.shard_rows, self.store_dtype = budget, shard_rows, store_dtype
        self.acts: list[np.ndarray] = []
        self.rows: list[np.ndarray] = []
        self.pending = 0
        self.batches: list[tuple[int, int]] = []  # (first sequence, index of its first row) of buffered batches
        self.sequences: list[dict[str, Any]] = []
        self._truncate_sequences()

    @property
    def total(self) -> int:
        """Rows written plus rows buffered."""
        return self.manifest["rows"] + self.pending

    def resume_point(self, first_sequence: int) -> tuple[int, int]:
        """(sequence to restart at, rows of its batch to skip); `first_sequence` on a fresh start."""
        resume = self.manifest.get("resume")
        return (resume["sequence"], resume["skip"]) if resume else (first_sequence, 0)

    def add(self, acts: np.ndarray, rows: np.ndarray, first_sequence: int, sequences: list[dict[str, Any]],
            skip: int = 0) -> None:
        """One batch's kept rows (acts in the stored layout, rows [n, 3]); `skip` rows already on disk."""
        if skip > len(acts):
            raise ActivationDirError(f"{self.out}: cannot resume, the batch at sequence {first_sequence} now has "
                                     f"{len(acts)} rows but {skip} were written before; delete the directory")
        self.batches.append((first_sequence, self.total - skip))
        self.acts.append(to_stored(acts[skip:], self.store_dtype))
        self.rows.append(rows[skip:])
        self.pending += len(acts) - skip
        self.sequences += sequences
        self._flush(final=False)

    def finish(self) -> None:
        """Write the last partial shard and the remaining sequences; mark the directory complete."""
        self._flush(final=True)
        self._append_sequences(lambda s: True)
        if not self.manifest["sums"]:
            raise ActivationDirError("no activation rows were collected (empty corpus after filtering?)")
        self.manifest.update(moments(self.manifest["sums"]), complete=True, dtype=self.store_dtype,
                             sequences_sha256=file_sha256(self.out / SEQUENCES))
        self.manifest.pop("resume", None)
        _write_manifest(self.out, self.manifest)

    def _flush(self, final: bool) -> None:
        """Write every full shard (and, at the end or at the token budget, the last partial one)."""
        while self.pending:
            room = self.budget - self.manifest["rows"]
            n = min(self.shard_rows, self.pending, room)
            if n <= 0 or (n < self.shard_rows and n < room and not final):
                break
            acts, rows = np.concatenate(self.acts), np.concatenate(self.rows)
            self._write(acts[:n], rows[:n])
            self.acts, self.rows = [acts[n:]], [rows[n:]]
            self.pending = len(acts) - n

    def _write(self, acts: np.ndarray, rows: np.ndarray) -> None:
        i = len(self.manifest["shards"])
        name, tname = f"acts_{i:05d}.npy", f"tokens_{i:05d}.npy"
        self.out.mkdir(parents=True, exist_ok=True)
        for fname, arr in ((name, acts), (tname, rows)):
            tmp = self.out / f".{fname}.tmp"
            with tmp.open("wb") as f:
                np.save(f, arr)
            tmp.replace(self.out / fname)
        self.manifest["sums"] = _add_sums(self.manifest["sums"], from_stored(acts, self.store_dtype),
                                          model_dims(self.manifest))
        self.manifest["shards"].append({"file": name, "tokens_file": tname, "rows": len(acts),
                                        "bytes": (self.out / name).stat().st_size,
                                        "sha256": file_sha256(self.out / name),
                                        "tokens_sha256": file_sha256(self.out / tname)})
        self.manifest["rows"] += len(acts)
        # the batch holding the next unwritten row is where a restart begins
        written = self.manifest["rows"]
        at = max(i for i, (_, first_row) in enumerate(self.batches) if first_row <= written)
        sequence, first_row = self.batches[at]
        self.batches = self.batches[at:]
        self.manifest["resume"] = {"sequence": sequence, "skip": written - first_row}
        self._append_sequences(lambda s: s["id"] < sequence)  # later ones are recomputed on a restart
        _write_manifest(self.out, self.manifest)

    def _append_sequences(self, done: Any) -> None:
        path = self.out / SEQUENCES
        ready = [s for s in self.sequences if done(s)]
        self.sequences = [s for s in self.sequences if not done(s)]
        self.out.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8") as f:
            f.writelines(json.dumps(s) + "\n" for s in ready)
        self.manifest["sequences_bytes"] = path.stat().st_size

    def _truncate_sequences(self) -> None:
        """Drop sequence rows appended after the manifest was last written (a crash in between)."""
        path = self.out / SEQUENCES
        if path.exists():
            with path.open("r+b") as f:
                f.truncate(self.manifest.get("sequences_bytes", 0))


def split_models(acts: np.ndarray, dims: tuple[int, ...]) -> list[np.ndarray]:
    """Each model's [rows, d_m] block of stored rows ([rows, n, d] or [rows, Σ d_m])."""
    if acts.ndim == 3:
        return [acts[:, m] for m in range(acts.shape[1])]
    bounds = np.cumsum([0, *dims])
    return [acts[:, a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def _add_sums(sums: dict[str, list] | None, acts: np.ndarray, dims: tuple[int, ...]) -> dict[str, list]:
    """Running per-model sums for the mean and std in the manifest (over real dimensions only)."""
    sums = sums or {"s": [0.0] * len(dims), "s2": [0.0] * len(dims), "n": [0] * len(dims)}
    for m, block in enumerate(split_models(acts, dims)):
        b64 = block.astype(np.float64)
        sums["s"][m] += float(b64.sum())
        sums["s2"][m] += float((b64 ** 2).sum())
        sums["n"][m] += int(block.size)
    return sums


def moments(sums: dict[str, list]) -> dict[str, list[float]]:
    mean = [s / n for s, n in zip(sums["s"], sums["n"], strict=True)]
    std = [max(0.0, s2 / n - mu ** 2) ** 0.5 for s2, n, mu in zip(sums["s2"], sums["n"], mean, strict=True)]
    return {"mean": mean, "std": std}


def _write_manifest(directory: Path, manifest: dict[str, Any]) -> None:
    write_json_atomic(directory / MANIFEST, manifest)


def merge_rank_dirs(out: Path, world: int) -> Path:
    """Write `out/manifest.json` and `out/sequences.jsonl` covering every rank's finished directory."""
    parts = []
    for rank in range(world):
        path = out / RANK_DIR.format(rank) / MANIFEST
        try:
            part = json.loads(path.read_text())
        except (FileNotFoundError, json.JSONDecodeError) as e:
            raise ActivationDirError(f"rank {rank}'s collection at {path.parent} is missing or corrupt ({e})") from None
        if not part.get("complete"):
            raise ActivationDirError(f"rank {rank}'s collection at {path.parent} did not finish; re-run it")
        if parts and part["config_key"] != parts[0][1]["config_key"]:
            raise ActivationDirError(f"{path.parent} was collected with another configuration than rank 0")
        parts.append((RANK_DIR.format(rank), part))
    merged = {k: v for k, v in parts[0][1].items()
              if k not in ("shards", "rows", "sums", "resume", "sequences_bytes", "rank", "mean", "std")}
    merged["shards"] = [{**s, "file": f"{d}/{s['file']}", "tokens_file": f"{d}/{s['tokens_file']}"}
                        for d, p in parts for s in p["shards"]]
    merged["rows"] = sum(p["rows"] for _, p in parts)
    sums = [p["sums"] for _, p in parts]
    merged["sums"] = {key: [sum(vals) for vals in zip(*(s[key] for s in sums), strict=True)] for key in ("s", "s2", "n")}
    lines = [line for d, _ in parts for line in (out / d / SEQUENCES).read_text(encoding="utf-8").splitlines()]
    lines.sort(key=lambda line: json.loads(line)["id"])
    atomic_write_text(out / SEQUENCES, "".join(line + "\n" for line in lines))
    merged.update(moments(merged["sums"]), ranks=world, complete=True, sequences_sha256=file_sha256(out / SEQUENCES))
    _write_manifest(out, merged)
    return out
