"""The report.json contract (docs/run-directory.md), its validation, and safe reading and writing.

The leaderboard reads report.json files written by other diffeval versions, so every key of the
contract is checked with its type on write *and* on read. Keys may be added freely (extra keys are
allowed everywhere); keys of the contract are never renamed. A number that can be undefined (a
shift with no base-specific latent, a correlation over one task) is JSON `null`, never NaN.

Key paths in errors read like `categories[2].p_value`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from diffeval.harness.core.errors import DiffevalError
from diffeval.harness.core.io import atomic_write_json

SCHEMA_VERSION = 2  # 2: headline_measure and categories[].headline


class ReportError(DiffevalError):
    """A report.json (or the run directory it is built from) that breaks the contract."""


class _Nullable:
    """Spec wrapper: the value may be JSON null."""

    def __init__(self, spec: Any) -> None:
        self.spec = spec


class _MapOf:
    """Spec for an object with free keys (names of tasks, categories, packages) and typed values."""

    def __init__(self, spec: Any) -> None:
        self.spec = spec


INT, NUM, STR, BOOL = "int", "number", "string", "boolean"


def nullable(spec: Any) -> _Nullable:
    return _Nullable(spec)


_MODEL = {"spec": STR, "revision": nullable(STR), "n_layers": nullable(INT), "d_model": nullable(INT)}

# The contract. A dict is an object whose keys are all required; a one-element list is a list of
# such items; _MapOf is an object with arbitrary keys; _Nullable admits null.
REPORT_SPEC: dict[str, Any] = {
    "schema_version": INT,
    "created": STR,
    "diffeval_version": STR,
    "models": {"base": _MODEL, "tuned": _MODEL, "reference": nullable(_MODEL)},
    "tasks": [{
        "task": STR, "category": nullable(STR), "metric": nullable(STR), "n": nullable(INT),
        "base": NUM, "tuned": NUM, "delta": NUM,
        "ci_low": nullable(NUM), "ci_high": nullable(NUM), "p_value": nullable(NUM),
    }],
    "crosscoder": {
        "layer": nullable(INT), "architecture": nullable(STR), "n_latents": nullable(INT), "k": nullable(INT),
        "tokens": nullable(INT), "fve": {"base": nullable(NUM), "tuned": nullable(NUM)},
        "l0": nullable(NUM), "dead_fraction": nullable(NUM),
    },
    "latent_classes": {
        "tuned_only": nullable(INT), "base_only": nullable(INT), "shared": nullable(INT),
        "other": nullable(INT), "dead": nullable(INT),
    },
    "categories": [{
        "category": STR, "n_tuned": INT, "n_base": INT, "N_tuned": INT, "N_base": INT,
        "shift": nullable(NUM), "ci_low": nullable(NUM), "ci_high": nullable(NUM),
        "p_value": nullable(NUM), "mass_shift": nullable(NUM),
    }],
    "attribution": {
        "spearman": nullable(NUM), "p_value": nullable(NUM),
        "per_task": [{"task": STR, "delta": NUM, "predicted": nullable(NUM), "contributions": _MapOf(NUM)}],
    },
    "causal": [{"task": STR, "category": STR, "delta_removed": nullable(NUM), "ci_low": nullable(NUM), "ci_high": nullable(NUM)}],
    "provenance": {"config_hash": nullable(STR), "packages": _MapOf(STR), "timings": _MapOf(nullable(NUM))},
}


_HEADLINE = {"value": nullable(NUM), "ci_low": nullable(NUM), "ci_high": nullable(NUM), "p_value": nullable(NUM),
             "q_value": nullable(NUM), "significant": nullable(BOOL)}
# schema 2 adds the headline measure; version 1 reports (older diffeval) stay readable without it
REPORT_SPEC_V2: dict[str, Any] = {
    **REPORT_SPEC, "headline_measure": nullable(STR),
    "categories": [{**REPORT_SPEC["categories"][0], "headline": nullable(_HEADLINE)}],
}


def validate_report(report: Any) -> None:
    """Raise ReportError naming the first key path that breaks the contract, and what is valid there."""
    _check(report, REPORT_SPEC, "report")
    version = report["schema_version"]
    if version < 1 or version > SCHEMA_VERSION:
        raise ReportError(
            f"report.schema_version is {version}; this diffeval reads schema versions 1..{SCHEMA_VERSION}"
            + (" (the report was written by a newer diffeval; upgrade to read it)" if version > SCHEMA_VERSION else "")
        )
    if version >= 2:
        _check(report, REPORT_SPEC_V2, "report")


def load_report(path: str | Path) -> dict[str, Any]:
    """Read and validate a report.json; a missing, malformed or invalid file is a ReportError."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ReportError(f"{path} does not exist; render it with `diffeval report RUN_DIR`") from None
    except UnicodeDecodeError:
        raise ReportError(f"{path} is not UTF-8 text; expected a diffeval report.json") from None
    try:
        report = json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as e:
        raise ReportError(f"{path} is not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})") from None
    except ValueError as e:
        raise ReportError(f"{path}: {e}") from None
    try:
        validate_report(report)
    except ReportError as e:
        raise ReportError(f"{path}: {e}") from None
    return report


def write_report_json(path: str | Path, report: dict[str, Any]) -> Path:
    """Validate `report`, then write it atomically; nothing is written when it is invalid."""
    validate_report(report)
    return atomic_write_json(path, report)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"holds {name}, which is not JSON; undefined numbers must be null")


def _check(value: Any, spec: Any, path: str) -> None:
    if isinstance(spec, _Nullable):
        if value is not None:
            _check(value, spec.spec, path)
        return
    if isinstance(spec, dict):
        _check_object(value, spec, path)
    elif isinstance(spec, list):
        if not isinstance(value, list):
            raise ReportError(f"{path} is {_kind(value)}; expected a list")
        for i, item in enumerate(value):
            _check(item, spec[0], f"{path}[{i}]")
    elif isinstance(spec, _MapOf):
        if not isinstance(value, dict):
            raise ReportError(f"{path} is {_kind(value)}; expected an object")
        for key, item in value.items():
            _check(item, spec.spec, f"{path}.{key}")
    else:
        _check_scalar(value, spec, path)


def _check_object(value: Any, spec: dict[str, Any], path: str) -> None:
    if not isinstance(value, dict):
        raise ReportError(f"{path} is {_kind(value)}; expected an object with keys {', '.join(spec)}")
    missing = [k for k in spec if k not in value]
    if missing:
        raise ReportError(f"{path} lacks required key(s) {', '.join(missing)} (required: {', '.join(spec)})")
    for key, sub in spec.items():
        _check(value[key], sub, f"{path}.{key}")


def _check_scalar(value: Any, spec: str, path: str) -> None:
    ok = {
        INT: isinstance(value, int) and not isinstance(value, bool),
        NUM: isinstance(value, (int, float)) and not isinstance(value, bool),
        STR: isinstance(value, str),
        BOOL: isinstance(value, bool),
    }[spec]
    if not ok:
        raise ReportError(f"{path} is {_kind(value)}; expected {_article(spec)}")
    if spec == NUM and not math.isfinite(value):
        raise ReportError(f"{path} is {value}; expected a finite number (undefined values are null)")


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list", dict: "an object"}
    shown = repr(value) if isinstance(value, (bool, int, float, str)) and len(repr(value)) <= 40 else ""
    return names.get(type(value), type(value).__name__) + (f" ({shown})" if shown else "")


def _article(spec: str) -> str:
    return ("an " if spec[0] in "aeiou" else "a ") + spec

