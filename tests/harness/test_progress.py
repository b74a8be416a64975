"""Progress where no bar is drawn: a long stage's heartbeat lines on stderr (a log file, nohup, CI)."""

import io
import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from diffeval.crosscoders import train_crosscoder
from diffeval.crosscoders.config import CrossCoderConfig
from diffeval.harness.core import progress
from diffeval.harness.stages.crosscoder import metrics_summary


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@contextmanager
def _logged(monkeypatch, stderr: io.StringIO) -> Iterator[tuple[list[float], list[str]]]:
    """(a clock to set, in s; the progress lines logged) while sys.stderr is `stderr`."""
    clock = [0.0]
    monkeypatch.setattr(progress.time, "perf_counter", lambda: clock[0])
    monkeypatch.setattr("sys.stderr", stderr)
    seen: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())
    progress.log.addHandler(handler)
    old_level = progress.log.level
    progress.log.setLevel(logging.INFO)
    try:
        yield clock, seen
    finally:
        progress.log.removeHandler(handler)
        progress.log.setLevel(old_level)


def _lines(monkeypatch, stderr: io.StringIO, beats: list[tuple[float, int, str]]) -> list[str]:
    """The lines a heartbeat over 200 steps logs for beats (clock time in s, steps done, detail)."""
    with _logged(monkeypatch, stderr) as (clock, seen):
        beat = progress.Heartbeat("crosscoder", 200, "steps", every_s=60.0)
        for now, done, detail in beats:
            clock[0] = now
            beat.beat(done, detail)
    return seen


def test_a_heartbeat_logs_at_most_once_a_minute_with_the_rate_since_its_first_beat(monkeypatch):
    """Start-up (the first 100 s) is not in the rate: 50 steps in 60 s after the first beat leave 100 steps,
    2 min at that rate; a beat 30 s after a line is held back."""
    beats = [(100.0, 50, "loss 1"), (130.0, 75, "held back"), (160.0, 100, "loss 0.5"), (190.0, 120, "held back"),
             (220.0, 150, "")]
    seen = _lines(monkeypatch, io.StringIO(), beats)
    assert seen == ["crosscoder: 100 of 200 steps (50 %), loss 0.5, about 2 min left",
                    "crosscoder: 150 of 200 steps (75 %), about 60 s left"]


def test_a_heartbeat_is_silent_on_a_terminal_where_the_bar_is_drawn(monkeypatch):
    assert _lines(monkeypatch, _Terminal(), [(0.0, 50, ""), (100.0, 100, ""), (200.0, 150, "")]) == []


def test_a_tracked_loop_yields_every_item_and_reports_each_one_once_it_is_done(monkeypatch):
    """Six categories of 30 s each: a line at 60 s and at 120 s (the clock starts with the loop), none for the
    last one, whose end the stage announces itself."""
    with _logged(monkeypatch, io.StringIO()) as (clock, seen):
        got = []
        for item in progress.track(list("abcdef"), "transcripts: base responses", "categories"):
            got.append(item)
            clock[0] += 30.0
    assert got == list("abcdef")
    assert seen == ["transcripts: base responses: 2 of 6 categories (33 %), about 2 min left",
                    "transcripts: base responses: 4 of 6 categories (67 %), about 60 s left"]


def test_a_tracked_loop_over_an_iterator_takes_its_total_from_the_caller(monkeypatch):
    with _logged(monkeypatch, io.StringIO()) as (clock, seen):
        for _ in progress.track(iter(range(4)), "latent stats", "batches", total=8):
            clock[0] += 60.0
    assert seen[0] == "latent stats: 1 of 8 batches (12 %), about 7 min left"
    assert len(seen) == 4


def test_durations_read_as_seconds_minutes_then_hours():
    assert [progress.duration(s) for s in (59, 119, 120, 7199, 7200, float("inf"))] == \
        ["59 s", "119 s", "2 min", "120 min", "2.0 h", "an unknown time"]


def test_training_hands_every_metrics_row_to_its_callback():
    rows = []
    cfg = CrossCoderConfig(d_model=16, n_models=2, n_latents=32, k=4, n_steps=30, log_every=10, batch_size=64)
    train_crosscoder(cfg, torch.randn(512, 2, 16), progress=False, on_metrics=rows.append)
    assert [r["step"] for r in rows] == [10, 20, 30]  # steps done
    assert all({"loss", "fve", "dead_fraction", "rows_per_s"} <= set(r) for r in rows)


def test_the_crosscoder_stage_summarises_a_metrics_row_in_one_phrase():
    row = {"step": 250, "loss": 12.345, "fve": [0.812, 0.787], "dead_fraction": 0.031, "rows_per_s": 245.4}
    assert metrics_summary(row) == "loss 12.3, FVE 0.81/0.79, 3 % dead, 245 rows/s"


def test_the_quiet_level_silences_the_known_library_warnings_and_nothing_else(monkeypatch):
    monkeypatch.setattr(progress, "_QUIET", progress._QUIET)
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    handlers, level, propagate = progress.log.handlers[:], progress.log.level, progress.log.propagate
    try:
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            progress.configure(0)
            warnings.warn("Could not find a config file in /tmp/x/base - will assume that the vocabulary was not "
                          "modified.", UserWarning, stacklevel=1)
            warnings.warn("index_reduce() is in beta and the API may change at any time.", UserWarning, stacklevel=1)
            warnings.warn("Could not find the tokenizer.", UserWarning, stacklevel=1)
    finally:
        progress.log.handlers[:], progress.log.level, progress.log.propagate = handlers, level, propagate
    assert [str(w.message) for w in seen] == ["Could not find the tokenizer."]
