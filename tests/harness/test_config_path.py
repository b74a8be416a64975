"""One configuration path: each stage's settings come from the run's RunConfig, and every command's
defaults from the same dataclasses."""

from __future__ import annotations

import dataclasses
import inspect
import json

import pytest
from click.testing import CliRunner

from diffeval.crosscoders.config import CrossCoderConfig
from diffeval.harness.cli import cli
from diffeval.harness.core.config import ActivationsConfig
from diffeval.harness.core.errors import DiffevalError
from diffeval.harness.core.runconfig import RunConfig
from diffeval.harness.core.rundir import RunDir
from diffeval.harness.core.stageconfig import stage_key
from diffeval.harness.stages import activations, attribution, causal, crosscoder, latents, transcripts
from tests.conftest import copy_run, tiny_cfg


def test_run_dtype_reaches_activation_collection(tiny_pair, tmp_path, monkeypatch):
    """`run --dtype bfloat16` collects activations with bfloat16 weights (the stage once built its config
    without the dtype and collected in float32)."""
    seen = []

    def capture(cfg, out, name):
        seen.append(cfg)
        raise KeyboardInterrupt  # stop before any model work

    monkeypatch.setattr(activations, "collect_activations", capture)
    with pytest.raises(KeyboardInterrupt):
        activations.stage_activations(RunDir(tmp_path / "run"), tiny_cfg(tiny_pair, dtype="bfloat16").stages().activations)
    assert seen[0].dtype == "bfloat16" and seen[0].device == "cpu" and seen[0].tokens == 3000


@pytest.mark.slow
def test_causal_rescoring_uses_the_bench_seed(tiny_run, tmp_path, monkeypatch):
    """The causal stage re-scores with the bench's settings: bench_seed, not the crosscoder's seed."""
    run = copy_run(tiny_run, tmp_path / "run")
    cfg_path = run / "config.json"
    cfg_path.write_text(json.dumps({**json.loads(cfg_path.read_text()), "seed": 7, "bench_seed": 3}))
    bench_cfg, metric, _ = causal._bench_inputs(run, "diffeval_factual")
    assert bench_cfg.seed == 3 and metric == "acc"


def test_commands_share_the_dataclass_defaults():
    """`activations collect`, `crosscoder train` and `run` show the same defaults for the same settings."""
    helps = {cmd: CliRunner().invoke(cli, [*cmd.split(), "--help"], terminal_width=200).output
             for cmd in ("run", "activations collect", "crosscoder train")}
    assert f"[default: {ActivationsConfig.tokens}]" in helps["activations collect"]
    assert f"[default: {RunConfig.tokens}]" in helps["run"] and RunConfig.tokens == ActivationsConfig.tokens
    assert f"[default: {CrossCoderConfig.k}]" in helps["crosscoder train"] and RunConfig.k == CrossCoderConfig.k
    assert RunConfig.n_steps == CrossCoderConfig.n_steps and RunConfig.layer == ActivationsConfig.layer
    assert "[default: 0]" in helps["crosscoder train"]  # n_latents: 0 = 8 × hidden size, as in run


def test_the_llm_annotator_is_selectable_and_checked():
    cfg = RunConfig(base="a", tuned="b", annotator="llm", annotator_url="http://localhost:8000/v1", annotator_model="m")
    assert cfg.annotator == "llm"
    with pytest.raises(DiffevalError, match="annotator_url and annotator_model"):
        RunConfig(base="a", tuned="b", annotator="llm")
    res = CliRunner().invoke(cli, ["run", "--annotator", "llm", "--base", "a", "--tuned", "b"])
    assert res.exit_code == 2 and "annotator_url and annotator_model" in res.output


def _stage_keys(**changes) -> dict[str, str]:
    """Each stage config's key (no upstream inputs) for a RunConfig with `changes`."""
    stages = RunConfig(base="a", tuned="b", causal=True, **changes).stages()
    return {f.name: stage_key(getattr(stages, f.name)) for f in dataclasses.fields(stages) if f.name != "bench"}


@pytest.mark.parametrize(("change", "moved"), [
    ({"device": "mps"}, set()),  # where it runs does not change what a stage writes,
    ({"device": "cuda"}, {"activations", "latents"}),  # except the caches' dtype: bfloat16 on a GPU
    ({"dtype": "bfloat16"}, {"activations", "latents", "causal"}),
    ({"k": 16}, {"crosscoder"}),
    ({"alpha": 0.01}, {"latents", "attribution"}),
    ({"probe_responses": 0}, {"latents"}),  # the corpus holds no transcripts unless corpus_responses
    ({"corpus_responses": True}, {"activations"}),
    ({"categories": "mine.yaml"}, {"latents", "attribution"}),
    ({"attribution_shift": "mass"}, {"attribution"}),
    ({"causal_mode": "ablate"}, {"causal"}),
    ({"seed": 7}, {"crosscoder", "attribution", "causal"}),
    ({"bench_seed": 7}, {"causal"}),
])
def test_a_stage_key_moves_only_with_its_own_settings(change, moved):
    """Every stage is keyed by its own config: an option changes the keys of the stages it reaches, no others."""
    before, after = _stage_keys(), _stage_keys(**change)
    assert {name for name in before if before[name] != after[name]} == moved


def test_stages_take_their_own_config():
    """Every stage function takes (run directory, its config), not the whole RunConfig."""
    expected = {activations.stage_activations: "ActivationsStageConfig", crosscoder.stage_crosscoder: "CrosscoderStageConfig",
                latents.stage_latents: "LatentsConfig", attribution.stage_attribution: "AttributionConfig",
                causal.stage_causal: "CausalConfig", transcripts.stage_transcripts: "TranscriptsConfig"}
    for fn, name in expected.items():
        params = list(inspect.signature(fn).parameters.values())
        assert [p.annotation for p in params] == ["RunDir", name], fn.__name__
