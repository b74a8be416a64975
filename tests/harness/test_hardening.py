"""Bad input and damaged run directories: one line naming the input and what would be valid, exit status
2, and nothing written or half-written. A run killed inside any stage resumes to the same result."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from diffeval.harness.cli import cli
from diffeval.harness.core.errors import RunDirError
from diffeval.harness.stages.crosscoder import open_crosscoder
from diffeval.harness.stages.latents import read_latents
from tests.conftest import copy_run

pytestmark = pytest.mark.slow


def tree_digest(root: Path) -> dict[str, str]:
    """Every file under `root` by content (what a failed command must leave as it was)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def assert_one_line_error(res, *words: str) -> None:
    assert res.exit_code == 2, res.output
    lines = [x for x in res.output.strip().splitlines() if x.strip()]
    assert len(lines) == 1 and lines[-1].startswith("Error: "), res.output
    for w in words:
        assert w in lines[-1], (w, res.output)


def rerun(run: Path):
    """`diffeval run` again on `run` with its own config.json as the --config file."""
    return CliRunner().invoke(cli, ["run", "--config", str(run / "config.json"), "--out", str(run)])


def test_yaml_syntax_error_in_config(tmp_path):
    bad = tmp_path / "cfg.yaml"
    bad.write_text("base: a\ntuned: [b\n")
    res = CliRunner().invoke(cli, ["run", "--config", str(bad), "--out", str(tmp_path / "out")])
    assert_one_line_error(res, str(bad), "YAML")
    assert not (tmp_path / "out").exists()


def test_yaml_syntax_error_in_categories(tiny_pair, tmp_path):
    bad = tmp_path / "categories.yaml"
    bad.write_text("categories:\n  safety: {description: [unclosed\n")
    base, tuned = tiny_pair
    res = CliRunner().invoke(cli, ["run", "--base", str(base), "--tuned", str(tuned), "--categories", str(bad),
                                   "--out", str(tmp_path / "out")])
    assert_one_line_error(res, str(bad))
    assert not (tmp_path / "out").exists()


def test_a_category_name_that_would_leave_the_run(tiny_pair, tmp_path):
    (tmp_path / "p.jsonl").write_text("".join(json.dumps({"text": f"probe {i}"}) + "\n" for i in range(12)))
    cats = tmp_path / "categories.yaml"
    cats.write_text("categories:\n  '../../x': {description: escapes, probes: p.jsonl}\n"
                    "  safety: {description: refusals, probes: p.jsonl}\n")
    base, tuned = tiny_pair
    res = CliRunner().invoke(cli, ["run", "--base", str(base), "--tuned", str(tuned), "--categories", str(cats),
                                   "--out", str(tmp_path / "deep" / "out")])
    assert_one_line_error(res, "'../../x'", "letters, digits")
    assert not (tmp_path / "deep").exists() and not (tmp_path / "x.jsonl").exists()


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete"])
def test_a_damaged_crosscoder_is_an_error_naming_it(tiny_run, tmp_path, damage):
    run = copy_run(tiny_run, tmp_path / "run")
    weights = run / "crosscoder" / "crosscoder.safetensors"
    data = weights.read_bytes()
    if damage == "truncate":
        weights.write_bytes(data[: len(data) // 2])
    elif damage == "flip":
        weights.write_bytes(data[:-100] + bytes(b ^ 0xFF for b in data[-100:]))
    else:
        (run / "crosscoder" / "cfg.json").unlink()
    before = tree_digest(run)
    res = CliRunner().invoke(cli, ["attribute", str(run)])
    assert_one_line_error(res, "crosscoder")
    assert tree_digest(run) == before


def test_loading_a_crosscoder_of_another_format_version(tiny_run, tmp_path):
    run = copy_run(tiny_run, tmp_path / "run")
    cfg = run / "crosscoder" / "cfg.json"
    cfg.write_text(json.dumps({**json.loads(cfg.read_text()), "format_version": 99}))
    with pytest.raises(RunDirError, match="format_version 99 is not 1"):
        open_crosscoder(run)
    (run / "crosscoder" / "cfg.json").write_text("{not json")
    with pytest.raises(RunDirError, match="cfg.json"):
        open_crosscoder(run)


@pytest.mark.parametrize("target", ["activations/manifest.json", "activations/acts_00000.npy",
                                    "activations/sequences.jsonl", "probes/activations/sequences.jsonl",
                                    "latents.jsonl"])
def test_damaged_caches_are_errors_not_results(tiny_run, tmp_path, target):
    """Corrupt bytes in a cache the run did not just write: a manifest, a shard of the right size, the
    sequence index, a truncated latents.jsonl."""
    run = copy_run(tiny_run, tmp_path / "run")
    path = run / target
    data = path.read_bytes()
    if target.endswith(".npy"):
        path.write_bytes(data[:-64] + bytes(64))  # same size, other bytes
    elif target == "latents.jsonl":
        path.write_bytes(data[: len(data) * 2 // 3])
    else:
        path.write_bytes(data[:-10] + b"#corrupt!\n")
    before = tree_digest(run)
    res = rerun(run)
    assert_one_line_error(res, Path(target).name)
    assert tree_digest(run) == before


def test_a_truncated_jsonl_names_its_line(tmp_path):
    path = tmp_path / "latents.jsonl"
    path.write_text(json.dumps({"latent": 0}) + "\n" + '{"latent": 1, "cla')
    with pytest.raises(RunDirError, match="line 2 is not valid JSON"):
        read_latents(path)


STAGES = ("bench.base", "bench.tuned", "bench.deltas", "activations", "crosscoder", "transcripts", "probes",
          "latents", "attribution")  # the order a run reaches them in


def _run_until_killed(cmd: list[str], manifest: Path, targets: list[str], timeout: float = 300) -> str | None:
    """Start `cmd`; SIGKILL it as soon as one of `targets` is running in the manifest, and return that
    stage; None when the run finished first."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    t0 = time.monotonic()
    while proc.poll() is None and time.monotonic() - t0 < timeout:
        try:
            stages = json.loads(manifest.read_text())["stages"]
        except (FileNotFoundError, json.JSONDecodeError):
            stages = {}
        running = [s for s in targets if stages.get(s, {}).get("status") == "running"]
        if running:
            time.sleep(0.1)  # inside the stage's work, not at its first line
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return running[0]
        time.sleep(0.02)
    proc.wait()
    return None


@pytest.mark.long
def test_sigkill_inside_each_stage_then_rerun_gives_the_same_attribution(tiny_run, tmp_path):
    """(about 2 min: the run is restarted once per stage) SIGKILL while a stage runs, re-run, and again at the
    next stage not yet killed, until a re-run finishes; its attribution.json equals the uninterrupted run's."""
    cfg_file = tmp_path / "cfg.json"
    cfg_file.write_text((tiny_run / "config.json").read_text())
    run = tmp_path / "killed"
    cmd = [sys.executable, "-m", "diffeval", "run", "--config", str(cfg_file), "--out", str(run)]
    killed: list[str] = []
    while (stage := _run_until_killed(cmd, run / "manifest.json", [s for s in STAGES if s not in killed])):
        killed.append(stage)
    assert len(killed) >= 6, killed  # a stage that takes milliseconds can finish between two polls
    assert json.loads((run / "manifest.json").read_text())["stages"]["attribution"]["status"] == "done"
    assert json.loads((run / "attribution.json").read_text()) == json.loads((tiny_run / "attribution.json").read_text())
