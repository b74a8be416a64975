"""How every report file writes a number, a p-value and an undefined value (one place, so report.md,
report.html and the answer's sentences agree)."""

from __future__ import annotations

from typing import Any

MISSING = "—"


def number(x: Any, spec: str = ".3f") -> str:
    return MISSING if x is None else format(x, spec)


def p_value(p: Any) -> str:
    """Two significant figures; below 0.0001 as "< 0.0001"."""
    return MISSING if p is None else ("< 0.0001" if p < 1e-4 else format(p, ".2g"))


def finite(x: Any) -> float | None:
    """A JSON-safe number: NaN, ±inf, booleans and non-numbers become None (undefined)."""
    if x is None or isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    return float(x) if x == x and abs(x) != float("inf") else None


def p_clause(name: str, p: Any) -> str:
    """"q = 0.003", "q < 0.0001" or "q —": a p- or q-value inside a sentence."""
    text = p_value(p)
    return f"{name} {text}" if text.startswith("<") or text == MISSING else f"{name} = {text}"
