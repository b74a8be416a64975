"""What a run says on stderr: each stage announced by name, and third-party output kept out of the way.

`diffeval -v`/`-vv` lets everything through. At the default level, the command line calls `configure(0)`:
the stages that run are announced, transformers' loading bars and three known library warnings are
silenced, and what lm-eval writes to stderr while it scores (its per-task bars, a `git` probe's complaint
outside a repository) goes to a log file in the run directory instead of the terminal.
Library callers that never call `configure` see everything, as before.
"""

from __future__ import annotations

import logging
import os
import sys
import time
import warnings
from collections.abc import Iterable, Iterator, Sized
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from tqdm.auto import tqdm

log = logging.getLogger("diffeval.progress")
T = TypeVar("T")
_QUIET = False
# warnings that say nothing to a user of diffeval (the call is ours and correct)
# (peft's, on saving an adapter of a GGUF base that has no config.json: LoRA leaves the vocabulary alone)
_IGNORED = (r"index_reduce\(\) is in beta", r"`is_gradient_checkpointing` is deprecated",
            r"Could not find a config file in .* will assume that the vocabulary was not modified")


def configure(verbose: int) -> None:
    """Set the command line's output level: 0 announces the stages that run, 1 adds the reused ones and info logs,
    2 lets everything through."""
    global _QUIET
    _QUIET = verbose == 0
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("diffeval: %(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(logging.INFO if verbose == 0 else logging.DEBUG)
    log.propagate = False
    if verbose < 2:
        for pattern in _IGNORED:
            warnings.filterwarnings("ignore", message=pattern)
        # read by huggingface_hub when transformers is first imported (later, and only if a command needs it)
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is when a line is logged (a test runner may swap it between commands)."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


_PENDING: list[str] = []


def note(message: str) -> None:
    """One line of what the run decided for the user (a preset, its budget), shown before the first stage that
    runs: a command that stops on bad input before any stage ran says only what was wrong."""
    _PENDING.append(message)


def take_notes() -> list[str]:
    """The notes not shown yet (and forget them): `plan` prints them in its own output."""
    out = _PENDING[:]
    _PENDING.clear()
    return out


def stage_started(name: str, previous_seconds: float | None) -> None:
    for message in take_notes():
        log.info("%s", message)
    hint = f" (it took {previous_seconds:.0f} s last time)" if previous_seconds else ""
    log.info("%s: running%s", name, hint)


def stage_done(name: str, seconds: float) -> None:
    log.info("%s: done in %.1f s", name, seconds)


def stage_reused(name: str) -> None:
    log.debug("%s: reused (inputs unchanged)", name)  # shown from -v on: a cached run stays quiet


class Heartbeat:
    """Progress of one long loop as a line on stderr at most every `every_s` seconds, where no progress bar is
    shown (stderr is not a terminal: a log file, nohup, CI), so that an hour-long stage is not silent there.

    `beat(done, detail)` reports `done` of `total` units, the rate since the first beat (so neither a resumed
    loop's earlier units nor its start-up count) and the time left at that rate; on a terminal it does nothing
    (tqdm's bar is drawn there)."""

    def __init__(self, name: str, total: int, unit: str, every_s: float = 60.0, enabled: bool = True) -> None:
        self.name, self.total, self.unit, self.every_s = name, total, unit, every_s
        self.start = self.last = 0.0  # set by the first beat
        self.first: int | None = None
        self.active = enabled and not _isatty(sys.stderr)

    def beat(self, done: int, detail: str = "") -> None:
        now = time.perf_counter()
        if self.first is None:
            self.first, self.start, self.last = done, now, now
        if not self.active or now - self.last < self.every_s or done <= self.first or done >= self.total:
            return  # the last unit is announced by whoever finishes the loop
        self.last = now
        rate = (done - self.first) / max(now - self.start, 1e-9)  # done > first here: the rate is positive
        left = (self.total - done) / rate
        share = 100 * done / max(self.total, 1)
        log.info("%s: %d of %d %s (%.0f %%)%s, about %s left", self.name, done, self.total, self.unit, share,
                 f", {detail}" if detail else "", duration(left))


def track(items: Iterable[T], name: str, unit: str, total: int | None = None, leave: bool = True) -> Iterator[T]:
    """`items`, one at a time, with tqdm's bar on a terminal and a `Heartbeat` line elsewhere: the shared form of
    a long loop's progress. Each item counts once, when the caller is done with it; `total` defaults to
    len(items)."""
    total = len(items) if total is None and isinstance(items, Sized) else total or 0
    beat = Heartbeat(name, total, unit)
    beat.beat(0)  # the clock starts with the loop
    for done, item in enumerate(tqdm(items, desc=name, unit=unit, total=total, leave=leave, disable=None), 1):
        yield item
        beat.beat(done)


def _isatty(stream: object) -> bool:
    try:
        return bool(stream.isatty())  # type: ignore[attr-defined]
    except (AttributeError, ValueError):
        return False


def duration(seconds: float) -> str:
    """A time as a person reads it: seconds under 2 minutes, minutes under 2 hours, then hours."""
    if seconds == float("inf"):
        return "an unknown time"
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


@contextmanager
def third_party_stderr(log_file: Path | None) -> Iterator[None]:
    """At the quiet level, send everything written to file descriptor 2 (by Python, C code or a child process)
    to `log_file`, or discard it with None (around a library call whose only stderr output is a progress bar).
    An exception still reaches the caller, after stderr is restored. The redirection is process-wide: use it
    around one call at a time, never from two threads at once."""
    if not _QUIET:
        yield
        return
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file if log_file is not None else os.devnull, "ab") as sink:
        sys.stderr.flush()
        saved = os.dup(2)
        try:
            os.dup2(sink.fileno(), 2)
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
