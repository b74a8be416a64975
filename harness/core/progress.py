"""What a run says on stderr: each stage announced by name, and third-party output kept out of the way.

`diffeval -v`/`-vv` lets everything through. At the default level, the command line calls `configure(0)`:
stage lines stay, transformers' loading bars and the known library warnings are silenced, and what
lm-eval writes to stderr while it scores (its per-task bars, a `git` probe's complaint outside a
repository) goes to a log file in the run directory instead of the terminal, so nothing is lost.
Library callers that never call `configure` see everything, as before.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger("diffeval.progress")
_QUIET = False
# warnings that say nothing to a user of diffeval (the call is ours and correct)
_IGNORED = (r"index_reduce\(\) is in beta", r"`is_gradient_checkpointing` is deprecated")


def configure(verbose: int) -> None:
    """Set the command line's output level: 0 announces the stages that run, 1 adds the reused ones and info logs,
    2 lets everything through."""
    global _QUIET
    _QUIET = verbose == 0
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("diffeval: %(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(logging.INFO if verbose == 0 else logging.DEBUG)
    log.propagate = False
    if verbose < 2:
        for pattern in _IGNORED:
            warnings.filterwarnings("ignore", message=pattern)
        # read by huggingface_hub when transformers is first imported (later, and only if a command needs it)
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def stage_started(name: str, previous_seconds: float | None) -> None:
    hint = f" (it took {previous_seconds:.0f} s last time)" if previous_seconds else ""
    log.info("%s: running%s", name, hint)


def stage_done(name: str, seconds: float) -> None:
    log.info("%s: done in %.1f s", name, seconds)


def stage_reused(name: str) -> None:
    log.debug("%s: reused (inputs unchanged)", name)  # shown from -v on: a cached run stays quiet


@contextmanager
def third_party_stderr(log_file: Path | None) -> Iterator[None]:
    """At the quiet level, send what is written to stderr (by Python or a child process) to `log_file`
    (None: discard it, for progress bars only; an exception still reaches the caller)."""
    if not _QUIET:
        yield
        return
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
    sys.stderr.flush()
    saved = os.dup(2)
    with open(log_file if log_file is not None else os.devnull, "ab") as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
