"""Atomic file writes (a reader never sees a half-written file) and error-naming reads of JSON files.

The atomic text write itself is the crosscoder library's (`diffeval.crosscoders.files`), so both write alike."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from diffeval.crosscoders.files import atomic_write_text
from diffeval.harness.core.errors import RunDirError


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_jsonable) + "\n")


def atomic_write_jsonl(path: str | Path, rows: Iterable[Any]) -> Path:
    return atomic_write_text(path, "".join(json.dumps(r, default=_jsonable) + "\n" for r in rows))


def read_json(path: str | Path) -> Any:
    """Read a JSON file, turning a parse failure into an error that names the file."""

    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RunDirError(f"{path} does not exist") from None
    except json.JSONDecodeError as e:
        raise RunDirError(f"{path} is not valid JSON ({e.msg} at line {e.lineno}); delete it to recompute") from None
    except UnicodeDecodeError:
        raise RunDirError(f"{path} is not UTF-8 text (corrupt); delete it to recompute") from None


def read_jsonl_rows(path: str | Path) -> list[Any]:
    """Every row of a JSON Lines file; a missing file or a line that is not JSON (a truncated or corrupt
    file) is an error naming the file and the line."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise RunDirError(f"{path} does not exist") from None
    except UnicodeDecodeError:
        raise RunDirError(f"{path} is not UTF-8 text (corrupt); delete it to recompute") from None
    rows = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise RunDirError(f"{path} line {i} is not valid JSON ({e.msg}): truncated or corrupt; "
                              "delete it to recompute") from None
    return rows


def _jsonable(obj: Any) -> Any:
    """Fallback for numpy scalars, paths and other objects lm-eval leaves in its results."""
    if hasattr(obj, "item") and callable(obj.item):
        try:
            return obj.item()
        except (TypeError, ValueError):
            pass
    if isinstance(obj, (set, tuple)):
        return list(obj)
    return str(obj)
