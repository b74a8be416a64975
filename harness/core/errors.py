"""User-facing errors: each says what input was wrong and what would be valid."""


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
