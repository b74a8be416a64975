"""Atomic writes for the crosscoder library's artefacts (it depends on nothing else of diffeval)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

# a saved crosscoder
WEIGHTS_FILE = "crosscoder.safetensors"
CFG_FILE = "cfg.json"
METRICS_FILE = "metrics.jsonl"
CHECKPOINT_FILE = "checkpoint.safetensors"
# an activation cache
MANIFEST = "manifest.json"
SEQUENCES = "sequences.jsonl"


def file_sha256(path: str | Path) -> str:
    """The sha256 of a file's bytes (read in 1 MiB blocks: shards can be large)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write beside `path` under a hidden name, fsync, then rename: readers see the old file or the new one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def write_json_atomic(path: str | Path, obj: Any) -> Path:
    return write_text_atomic(path, json.dumps(obj, indent=2) + "\n")
