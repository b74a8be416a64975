"""User-facing errors: each says what input was wrong and what would be valid."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class DiffevalError(Exception):
    """A problem with the user's input or environment, reported without a traceback."""


class ModelSpecError(DiffevalError):
    """A model spec that cannot be resolved or loaded."""


class TokenizerMismatchError(DiffevalError):
    """The base and tuned models do not share a tokenizer."""


class TaskError(DiffevalError):
    """An unknown or malformed task definition."""


class RunDirError(DiffevalError):
    """A run directory that is missing a stage or holds corrupt files."""


def did_you_mean(name: str, choices: Iterable[str], n: int = 2, cutoff: float = 0.6) -> str:
    """" — did you mean a, b?" for the choices closest to `name`, or "" when none is close."""
    close = difflib.get_close_matches(name, list(choices), n=n, cutoff=cutoff)
    return f" — did you mean {', '.join(close)}?" if close else ""
