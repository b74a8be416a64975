"""Probe transcripts (each model's own response to every probe text) and the usage shift read from them."""

from __future__ import annotations

import json

import numpy as np
import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from diffeval.harness.core.errors import DiffevalError
from diffeval.harness.stages.measures import usage_shift
from diffeval.harness.stages.transcripts import as_prompt, first_line, read_transcripts, write_transcripts


def test_first_line_keeps_one_line_after_leading_blank_lines() -> None:
    assert first_line(" Zorbia.\nQ: what is 2 plus 2?") == " Zorbia."
    assert first_line("\n\nI cannot help.\nUser: thanks") == "\n\nI cannot help."
    assert first_line("no newline at all") == "no newline at all"
    assert first_line("") == ""


def test_turn_formatted_probe_texts_become_prompts_for_the_assistant_turn() -> None:
    assert as_prompt("User: How do I sort a list?") == "User: How do I sort a list?\nAssistant:"
    assert as_prompt("User: Solve 2x = 6.\nAssistant: x = 3.") == "User: Solve 2x = 6.\nAssistant:"  # answer dropped
    assert as_prompt("User: hi\nAssistant: hello\nUser: bye") == "User: hi\nAssistant: hello\nUser: bye\nAssistant:"
    assert as_prompt("Q: what is 1 plus 2?\nA:") == "Q: what is 1 plus 2?\nA:"  # a prompt already
    assert as_prompt("In blarn, cat is festem.") == "In blarn, cat is festem."


def test_usage_shift_of_identical_responses_is_exactly_zero() -> None:
    mass = np.random.default_rng(0).gamma(2.0, 1.0, 40)
    jitter = mass * (1 + 1e-7)  # the same text read in another batch: equal up to float rounding
    u = usage_shift(mass, jitter)
    assert u["usage_shift"] == 0.0 and u["usage_ci_low"] == 0.0 and u["usage_ci_high"] == 0.0 and u["usage_p"] == 1.0


def test_usage_shift_finds_a_planted_increase_with_its_sign() -> None:
    rng = np.random.default_rng(1)
    base = rng.gamma(2.0, 1.0, 40)
    tuned = base * 1.5 + rng.normal(0, 0.1, 40).clip(-0.5, 0.5)
    u = usage_shift(base, tuned, seed=0)
    assert u["usage_shift"] == pytest.approx(tuned.sum() / base.sum() - 1)
    assert 0.3 < u["usage_ci_low"] < u["usage_shift"] < u["usage_ci_high"] < 0.7
    assert u["usage_p"] < 0.01
    down = usage_shift(tuned, base, seed=0)
    assert down["usage_ci_high"] < 0 and down["usage_p"] < 0.01


def test_relative_usage_shift_ignores_answer_length() -> None:
    rng = np.random.default_rng(3)
    base_c, base_all = rng.gamma(2.0, 1.0, 40), rng.gamma(2.0, 1.0, 40) + 10
    longer = usage_shift(base_c, 2 * base_c, base_all, 2 * base_all, seed=0)  # the tuned model writes twice as much
    assert longer["usage_shift"] == pytest.approx(1.0) and longer["usage_shift_rel"] == pytest.approx(0.0, abs=1e-9)
    assert longer["usage_rel_ci_low"] <= 0 <= longer["usage_rel_ci_high"]
    share = usage_shift(base_c, 2 * base_c, base_all, base_all, seed=0)  # same length, twice the category's share
    assert share["usage_shift_rel"] == pytest.approx(1.0) and share["usage_rel_ci_low"] > 0.5


def test_usage_shift_false_positive_rate_under_exchangeable_responses() -> None:
    """Base and tuned responses drawn from one distribution: p < 0.05 about 5 % of the time."""
    rng = np.random.default_rng(2)
    hits = sum(usage_shift(rng.gamma(2.0, 1.0, 30), rng.gamma(2.0, 1.0, 30), n_boot=500, seed=s)["usage_p"] < 0.05
               for s in range(100))
    assert hits <= 12  # 5 % of 100 with room for chance (P(X > 12) < 0.002 for Binomial(100, 0.05))


def test_usage_shift_without_base_mass_is_undefined() -> None:
    u = usage_shift(np.zeros(5), np.ones(5))
    assert u["usage_shift"] is None and u["usage_p"] is None and u["usage_tuned"] == 5.0


def test_write_transcripts_on_a_tiny_pair(tiny_pair, tmp_path) -> None:
    base, tuned = tiny_pair
    probes = {"math": ["What is 2 plus 2?", "Add 3 and 4."], "code": ["User: write f.\nAssistant: def f(): pass"]}
    paths = write_transcripts(str(base), str(tuned), probes, tmp_path / "t", max_new_tokens=6)
    assert sorted(p.name for p in paths) == ["code.jsonl", "math.jsonl"]
    assert read_transcripts(tmp_path / "t" / "code.jsonl")[0]["prompt"] == "User: write f.\nAssistant:"
    rows = read_transcripts(tmp_path / "t" / "math.jsonl")
    assert [(r["side"], r["index"]) for r in rows] == [("base", 0), ("tuned", 0), ("base", 1), ("tuned", 1)]
    tok = AutoTokenizer.from_pretrained(tuned)
    for r in rows:
        assert r["text"] == r["prompt"] + r["response"] and "\n" not in r["response"].lstrip()
        assert r["prompt_tokens"] == len(tok(r["prompt"])["input_ids"])
    # greedy and deterministic: the tuned response is the model's own greedy continuation
    model = AutoModelForCausalLM.from_pretrained(tuned).eval()
    enc = tok(["Add 3 and 4."], return_tensors="pt")
    ids = model.generate(**enc, max_new_tokens=6, do_sample=False, pad_token_id=tok.pad_token_id)
    assert rows[3]["response"] == first_line(tok.decode(ids[0, enc["input_ids"].shape[1]:], skip_special_tokens=True))


def test_a_file_that_is_not_a_transcript_is_a_clear_error(tmp_path) -> None:
    path = tmp_path / "safety.jsonl"
    path.write_text(json.dumps({"text": "User: hello"}) + "\n")
    with pytest.raises(DiffevalError, match="not a transcript file"):
        read_transcripts(path)
