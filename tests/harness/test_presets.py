"""Presets: the budget a pair gets by name or by its size and device, flags winning, and what plan prints."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from diffeval.crosscoders.config import DENSE_AUX_DENSITY, STREAM_BUFFER_ROWS, CrossCoderConfig
from diffeval.harness.cli import cli
from diffeval.harness.cli.run import run_config
from diffeval.harness.core.errors import DiffevalError
from diffeval.harness.core.presets import PRESETS, auto_preset, preset_values
from diffeval.harness.core.runconfig import STREAM_CACHE_ROWS, RunConfig
from diffeval.harness.pipeline.plan import RATES, Size, aux_step_s, estimates


def test_a_pair_gets_quick_on_a_cpu_or_when_small_and_standard_on_a_gpu() -> None:
    assert auto_preset("cpu", 9e9) == "quick"
    assert auto_preset("cuda", 50e6) == "quick"
    assert auto_preset("cuda:1", 2.6e9) == "standard"
    assert "paper" not in {auto_preset(d, n) for d in ("cpu", "cuda") for n in (1e6, 1e8, 1e10)}


def test_preset_values_scale_the_dictionary_with_the_hidden_size() -> None:
    assert preset_values("quick", 96) == {"tokens": 50_000, "n_latents": 0, "k": 32, "n_steps": 2000}  # 0: 8 × d
    assert preset_values("standard", 2304)["n_latents"] == 16 * 2304
    paper = preset_values("paper", 2304)
    assert (paper["tokens"], paper["n_latents"], paper["k"]) == (100_000_000, 32 * 2304, 100)
    assert paper["n_steps"] * 1024 >= paper["tokens"]  # one pass over the activations
    quick = RunConfig(base="a", tuned="b")  # the quick preset is the configuration's own defaults
    assert (quick.tokens, quick.n_latents, quick.k, quick.n_steps) == tuple(preset_values("quick", 96).values())
    with pytest.raises(DiffevalError, match="must be one of quick, standard, paper"):
        RunConfig(base="a", tuned="b", preset="huge")


def test_flags_and_the_config_file_win_over_the_preset(tiny_pair, tmp_path) -> None:
    base, tuned = map(str, tiny_pair)
    cfg = run_config(None, {"base": base, "tuned": tuned, "preset": "standard", "k": 8})
    d_model = 64
    assert (cfg.preset, cfg.tokens, cfg.k, cfg.n_steps) == ("standard", 2_000_000, 8, 8000)
    assert cfg.n_latents == 16 * d_model
    conf = tmp_path / "c.yaml"
    conf.write_text(f"base: {base}\ntuned: {tuned}\ntokens: 3000\npreset: paper\n")
    cfg = run_config(str(conf), {})
    assert (cfg.preset, cfg.tokens, cfg.k) == ("paper", 3000, 100)
    auto = run_config(None, {"base": base, "tuned": tuned})
    assert (auto.preset, auto.tokens, auto.n_latents) == ("quick", 50_000, 0)


def test_plan_prints_the_preset_and_its_estimates(tiny_pair, tmp_path) -> None:
    base, tuned = map(str, tiny_pair)
    res = CliRunner().invoke(cli, ["plan", "--base", base, "--tuned", tuned, "--preset", "standard", "--k", "8",
                                   "--out", str(tmp_path / "r")])
    assert res.exit_code == 0, res.output
    assert "preset standard (--preset): 2000000 tokens, 1024 latents, 8000 steps" in res.output  # k was given
    assert "preset standard: 2000000 tokens, 1024 latents, k 8, 8000 steps" in res.output
    assert "disk: activation cache" in res.output and "time: crosscoder training" in res.output
    res = CliRunner().invoke(cli, ["plan", "--base", base, "--tuned", tuned, "--preset", "huge"])
    assert res.exit_code == 2 and "'huge' is not one of" in res.output


def test_estimates_grow_with_the_budget_and_skip_training_for_a_given_crosscoder(tmp_path) -> None:
    size = Size(d_model=2304, n_params=2_600_000_000, body_params=2_000_000_000, n_layers=26, gguf=False)
    quick, paper = (estimates(RunConfig(base="a", tuned="b", device="cuda", **dict(preset_values(p, 2304), preset=p)), size)
                    for p in ("quick", "paper"))
    assert paper["activations_s"] > 1000 * quick["activations_s"] and paper["crosscoder_s"] > quick["crosscoder_s"]
    assert paper["cache_bytes"] == 100_000_000 * 2 * 2304 * 2  # bfloat16 rows of both models (on a GPU)
    streamed = estimates(RunConfig(base="a", tuned="b", device="cuda", stream=True,
                                   **dict(preset_values("paper", 2304), preset="paper")), size)
    assert streamed["cache_bytes"] == STREAM_CACHE_ROWS * 2 * 2304 * 2  # only the analysis cache
    assert streamed["buffer_bytes"] == STREAM_BUFFER_ROWS * 2 * 2304 * 4 and paper["buffer_bytes"] == 0
    # the stream computes the forward passes while training: the collection's time moves into the training's
    assert streamed["crosscoder_s"] > paper["crosscoder_s"] + 0.9 * paper["activations_s"]
    assert streamed["activations_s"] < 0.01 * paper["activations_s"]
    assert quick["crosscoder_s"] < quick["crosscoder_max_s"]
    (tmp_path / "cc").mkdir()
    given = estimates(RunConfig(base="a", tuned="b", crosscoder=str(tmp_path / "cc")), size)
    assert given["crosscoder_s"] == given["crosscoder_max_s"] == 0
    assert set(PRESETS) == {"quick", "standard", "paper"}


def test_the_auxiliary_loss_estimate_follows_the_path_training_takes() -> None:
    """Up to aux_k × DENSE_AUX_DENSITY latents every dead set is decoded densely, at a cost that grows with the
    dictionary; above, the estimate is the dearer of the largest dense decode and the sparse path."""
    rates, aux_k = RATES["cpu"], CrossCoderConfig.aux_k
    largest = aux_k * DENSE_AUX_DENSITY
    assert aux_step_s(rates, 64, 96) < aux_step_s(rates, 768, 96) < aux_step_s(rates, largest, 96)
    above = [aux_step_s(rates, n, 96) for n in (largest + 1, 4 * largest, 64 * largest)]
    assert above[0] == above[1] == above[2] >= aux_step_s(rates, largest, 96)  # the worst case stops growing
    for r in (RATES["cpu"], RATES["cuda"]):  # neither path's worst case is left out, whichever is dearer
        assert aux_step_s(r, largest + 1, 2304) >= aux_step_s(r, largest, 2304)


def test_a_config_that_gives_the_whole_budget_gets_no_preset(tiny_pair, tmp_path) -> None:
    """A run's own config.json (all four options set, no preset) runs as it says: nothing chosen, nothing noted."""
    base, tuned = map(str, tiny_pair)
    conf = tmp_path / "c.yaml"
    conf.write_text(f"base: {base}\ntuned: {tuned}\ntokens: 3000\nn_latents: 64\nk: 4\nn_steps: 40\n")
    cfg = run_config(str(conf), {})
    assert (cfg.preset, cfg.tokens, cfg.n_latents, cfg.k, cfg.n_steps) == (None, 3000, 64, 4, 40)


def test_the_paper_preset_streams_unless_told_not_to(tiny_pair) -> None:
    base, tuned = map(str, tiny_pair)
    pair = {"base": base, "tuned": tuned}
    assert run_config(None, {**pair, "preset": "paper"}).stream is True
    assert run_config(None, {**pair, "preset": "paper", "stream": False}).stream is False
    assert run_config(None, {**pair, "preset": "standard"}).stream is False
    assert run_config(None, {**pair, "preset": "quick", "stream": True}).stream is True
