"""Externally measured scores (e.g. judge-based AlpacaEval / Arena-Hard) merged into the deltas."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from diffeval.harness.core.errors import DiffevalError
from diffeval.harness.suite.registry import lm_eval_category

REQUIRED = ("task", "base", "tuned")


def read_external_scores(path: str | Path) -> list[dict[str, Any]]:
    """Rows of task, base, tuned (and optional metric, category, n) from a CSV or JSON file."""
    path = Path(path)
    if not path.is_file():
        raise DiffevalError(f"--scores file {path} does not exist")
    if path.suffix.lower() == ".csv":
        with path.open(newline="", encoding="utf-8") as f:
            raw = list(csv.DictReader(f))
    elif path.suffix.lower() == ".json":
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise DiffevalError(f"--scores file {path} is not valid JSON: {e.msg} at line {e.lineno}") from None
        raw = raw.get("tasks", raw) if isinstance(raw, dict) else raw
    else:
        raise DiffevalError(f"--scores file {path} must end in .csv or .json")
    if not isinstance(raw, list) or not raw:
        raise DiffevalError(f"--scores file {path} holds no rows; expected a list of {{task, base, tuned}}")
    return [_row(path, i, r) for i, r in enumerate(raw, 1)]


def _row(path: Path, i: int, r: Any) -> dict[str, Any]:
    missing = [k for k in REQUIRED if not isinstance(r, dict) or r.get(k) in (None, "")]
    if missing:
        raise DiffevalError(f"--scores file {path}, row {i}: missing {', '.join(missing)} (need {', '.join(REQUIRED)})")
    try:
        base, tuned = float(r["base"]), float(r["tuned"])
    except (TypeError, ValueError):
        raise DiffevalError(f"--scores file {path}, row {i}: base and tuned must be numbers") from None
    return {
        "task": str(r["task"]), "category": r.get("category") or lm_eval_category(str(r["task"])),
        "metric": r.get("metric") or "score", "n": int(r["n"]) if r.get("n") not in (None, "") else None,
        "base": base, "tuned": tuned, "delta": tuned - base, "ci_low": None, "ci_high": None,
        "p_value": None, "test": None, "source": "external",
    }
