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
    """Set the command line's output level: 0 announces stages only, 1 adds info logs, 2 lets everything through."""
    global _QUIET
    _QUIET = verbose == 0
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("diffeval: %(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(logging.INFO)
    log.propagate = False
    if verbose < 2:
        for pattern in _IGNORED:
            warnings.filterwarnings("ignore", message=pattern)
        try:
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()
        except ImportError:  # transformers is a dependency; this only spares `diffeval --help` the import error
            pass


def stage_started(name: str, previous_seconds: float | None) -> None:
    hint = f" (it took {previous_seconds:.0f} s last time)" if previous_seconds else ""
    log.info("%s: running%s", name, hint)


def stage_done(name: str, seconds: float) -> None:
    log.info("%s: done in %.1f s", name, seconds)


def stage_reused(name: str) -> None:
    log.info("%s: reused (inputs unchanged)", name)


@contextmanager
def third_party_stderr(log_file: Path) -> Iterator[None]:
    """At the quiet level, send what is written to stderr (by Python or a child process) to `log_file`."""
    if not _QUIET:
        yield
        return
    log_file.parent.mkdir(parents=True, exist_ok=True)
    sys.stderr.flush()
    saved = os.dup(2)
    with open(log_file, "ab") as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
