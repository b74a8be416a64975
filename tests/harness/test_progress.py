"""Progress where no bar is drawn: a long stage's heartbeat lines on stderr (a log file, nohup, CI)."""

import io
import logging
import re

import torch

from diffeval.crosscoders import train_crosscoder
from diffeval.crosscoders.config import CrossCoderConfig
from diffeval.harness.core import progress


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _lines(monkeypatch, stderr: io.StringIO, beats: list[tuple[int, str]]) -> list[str]:
    monkeypatch.setattr("sys.stderr", stderr)
    seen = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())
    progress.log.addHandler(handler)
    old_level = progress.log.level
    progress.log.setLevel(logging.INFO)
    try:
        beat = progress.Heartbeat("crosscoder", 200, "steps", every_s=0.0)
        for done, detail in beats:
            beat.beat(done, detail)
    finally:
        progress.log.removeHandler(handler)
        progress.log.setLevel(old_level)
    return seen


def test_a_heartbeat_reports_done_share_detail_and_time_left_when_stderr_is_not_a_terminal(monkeypatch):
    seen = _lines(monkeypatch, io.StringIO(), [(50, "loss 1"), (100, "loss 0.5"), (150, "")])
    assert len(seen) == 2  # the first beat only sets the start: nothing is known about the rate yet
    assert re.fullmatch(r"crosscoder: 100 of 200 steps \(50 %\), loss 0\.5, about \d+ s left", seen[0]), seen[0]
    assert re.fullmatch(r"crosscoder: 150 of 200 steps \(75 %\), about \d+ s left", seen[1]), seen[1]


def test_a_heartbeat_is_silent_on_a_terminal_where_the_bar_is_drawn(monkeypatch):
    assert _lines(monkeypatch, _Terminal(), [(50, ""), (100, ""), (150, "")]) == []


def test_training_hands_every_metrics_row_to_its_callback():
    rows = []
    cfg = CrossCoderConfig(d_model=16, n_models=2, n_latents=32, k=4, n_steps=30, log_every=10, batch_size=64)
    train_crosscoder(cfg, torch.randn(512, 2, 16), progress=False, on_metrics=rows.append)
    assert [r["step"] for r in rows] == [10, 20, 30]  # steps done
    assert all({"loss", "fve", "dead_fraction", "rows_per_s"} <= set(r) for r in rows)


def test_the_crosscoder_stage_summarises_a_metrics_row_in_one_phrase():
    from diffeval.harness.stages.crosscoder import metrics_summary

    row = {"step": 250, "loss": 12.345, "fve": [0.812, 0.787], "dead_fraction": 0.031, "rows_per_s": 245.4}
    assert metrics_summary(row) == "loss 12.3, FVE 0.81/0.79, 3 % dead, 245 rows/s"
