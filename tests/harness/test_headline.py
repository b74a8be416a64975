"""The headline measure (cue shift), its direction from reference answers, per-document attribution and the
one-unit-per-probe annotator input: known answers, calibration under the null, and the pipeline's output."""

from __future__ import annotations

import json

import numpy as np
import pytest

from diffeval.harness.core.errors import DiffevalError
from diffeval.harness.core.fdr import benjamini_hochberg
from diffeval.harness.stages import headline as H
from diffeval.harness.stages.latents import per_probe
from diffeval.harness.suite.taxonomy import read_probe_rows


def test_a_category_whose_cues_moved_far_more_than_the_others_is_found_and_the_rest_are_not():
    rng = np.random.default_rng(0)
    drift = rng.gamma(2.0, 0.05, 300)            # each text's mean r before its cue: about 0.1
    r = rng.gamma(2.0, 0.05, 300)                # cues that moved like the rest of the text...
    r[:50] *= 8                                  # ...except category a's: eight times as far
    r[50:100] *= 2                               # category b's cues moved twice as far: within a placebo's spread
    cats = ["a"] * 50 + ["b"] * 50 + ["c"] * 100 + ["d"] * 100
    rows = H.headline_rows(r, np.zeros(300), cats, ["a", "b", "c", "d"], 0.05, {}, drift)
    by = dict(zip("abcd", rows, strict=True))
    assert by["a"]["significant"] and by["a"]["value"] > H.MIN_FOLD - 1 and by["a"]["ci_low"] > 0
    assert not by["b"]["significant"] and by["b"]["value"] > 0.5  # moved, but not beyond MIN_FOLD × the others
    assert not by["c"]["significant"] and not by["d"]["significant"]
    assert by["a"]["n_texts"] == 50 and by["a"]["n_other"] == 250 and by["a"]["direction"] is None
    assert by["a"]["null"] == H.NULL and 6 < by["a"]["drift_fold"] < 10


def test_a_shift_common_to_every_categorys_cues_is_not_a_change_of_any_category():
    """Every cue moved four times the drift (as a real LM's adapter trained on answers moves them): measured
    against the drift every category would pass MIN_FOLD; against the other categories none does, and the
    one whose cues moved eight times further still stands out."""
    rng = np.random.default_rng(3)
    drift = rng.gamma(2.0, 0.05, 400)
    r = rng.gamma(2.0, 0.05, 400) * 4
    r[:50] *= 8
    cats = [c for c in "abcdefgh" for _ in range(50)]
    rows = {c: row for c, row in zip("abcdefgh", H.headline_rows(r, np.zeros(400), cats, list("abcdefgh"), 0.05,
                                                                  {}, drift), strict=True)}
    assert rows["a"]["significant"]
    assert not any(rows[c]["significant"] for c in "bcdefgh")
    assert all(rows[c]["drift_fold"] > H.MIN_FOLD for c in "abcdefgh")
    assert 3.5 < rows["b"]["common_fold"] < 4.5


@pytest.mark.parametrize("bound", ["other_categories", "drift"])
def test_the_cue_shift_test_holds_its_level_at_the_threshold(bound):
    """Cues that moved exactly MIN_FOLD × their baseline are the null's boundary: rejected about 5 % of the
    time, whether the baseline is the other categories' cues or (where those moved less) the drift."""
    rng = np.random.default_rng(1)
    hits, trials = 0, 200
    labels = np.array(["a"] * 30 + ["b"] * 40 + ["c"] * 40 + ["d"] * 40, dtype=object)
    for _ in range(trials):
        r = rng.lognormal(0, 0.5, len(labels))
        drift = rng.lognormal(0, 0.5, len(labels)) * (0.1 if bound == "other_categories" else 3.0)
        r[:30] *= H.MIN_FOLD * (1.0 if bound == "other_categories" else 3.0)
        row = H.cue_shifts(r, labels, ["a"], drift, n_boot=400, seed=int(rng.integers(1 << 30)))["a"]
        assert row["baseline_from"] == bound
        hits += row["p_value"] < 0.05
    assert hits / trials <= 0.1  # nominal 0.05; binomial sd over 200 trials ≈ 0.015


def test_cues_that_moved_less_than_the_text_around_them_do_not_make_a_modest_move_specific():
    """Most categories' cues moved half as far as the text before them, two moved 1.5× as far (a placebo at
    toyworld_code's build seed 1 looked like this): over the other categories alone those two are 3× and would
    pass MIN_FOLD, over the drift they are not; a category whose cues moved 6× the drift still is."""
    rng = np.random.default_rng(4)
    n = 40
    drift = rng.gamma(4.0, 0.025, 9 * n)                 # about 0.1 everywhere
    r = rng.gamma(4.0, 0.0125, 9 * n)                    # cues at half the drift...
    r[:2 * n] *= 3                                       # ...but categories a and b at 1.5× it
    r[2 * n:3 * n] *= 12                                 # and category c at 6× it
    cats = [c for c in "abcdefghi" for _ in range(n)]
    rows = {c: row for c, row in zip("abcdefghi", H.headline_rows(r, np.zeros(9 * n), cats, list("abcdefghi"),
                                                                   0.05, {}, drift), strict=True)}
    assert not rows["a"]["significant"] and not rows["b"]["significant"]
    assert rows["a"]["baseline_from"] == "drift" and rows["a"]["value"] < 1
    assert rows["c"]["significant"] and rows["c"]["value"] > 4
    assert not any(rows[c]["significant"] for c in "defghi")
    means = r.reshape(9, n).mean(1)                     # per category, in the order of "abcdefghi"
    assert means[0] / np.median(means[1:]) > 2.5  # the other categories' median alone would have let a through


def test_the_cue_shift_is_not_estimated_without_two_other_categories():
    r = np.r_[np.full(10, 5.0), np.ones(10)]
    labels = np.array(["a"] * 10 + ["b"] * 10, dtype=object)
    rows = H.headline_rows(r, np.zeros(20), list(labels), ["a", "b"], 0.05, {}, np.ones(20))
    assert all(row["value"] is None and row["p_value"] is None and not row["significant"] for row in rows)
    assert rows[0]["drift_fold"] == 5.0  # the drift fold is still reported


def test_the_direction_follows_the_reference_margins_and_abstains_without_evidence():
    rng = np.random.default_rng(2)
    assert H.direction(rng.normal(2, 1, 30), 0.05)["direction"] == "+"
    assert H.direction(rng.normal(-2, 1, 30), 0.05)["direction"] == "-"
    null = H.direction(rng.normal(0, 1, 30), 0.01)
    assert null["direction"] is None and null["direction_p"] > 0.01
    assert H.direction(np.zeros(0), 0.05) == {"direction": None, "margin_shift": None, "direction_p": None,
                                              "n_references": 0}


def test_probe_rows_read_reference_answers_and_reject_half_given_ones(tmp_path):
    good = tmp_path / "good.jsonl"
    good.write_text("".join(json.dumps({"text": f"Q: {i}?\nA:", "desired": " yes.", "undesired": " no."}) + "\n"
                            for i in range(10)) + json.dumps({"text": "plain"}) + "\n")
    rows = read_probe_rows(good, "x")
    assert rows[0] == ("Q: 0?\nA:", (" yes.", " no.")) and rows[-1] == ("plain", None)
    bad = tmp_path / "bad.jsonl"
    bad.write_text("".join(json.dumps({"text": f"t{i}", "desired": " a"}) + "\n" for i in range(10)))
    with pytest.raises(DiffevalError, match=r"bad.jsonl:1: 'desired' and 'undesired' must both be given"):
        read_probe_rows(bad, "x")


def test_a_probe_continued_by_both_models_counts_once_in_the_enrichment_test(tmp_path):
    tdir = tmp_path / "probes" / "transcripts"
    tdir.mkdir(parents=True)
    (tdir / "math.jsonl").write_text("".join(json.dumps({"index": i // 2, "side": ("base", "tuned")[i % 2], "text": "Q: 1 plus 1?\nA: 2.",
                                                         "prompt_tokens": 5}) + "\n"
                                             for i in range(4)))
    seqs = {0: {"source": "probes/transcripts/math.jsonl", "doc_id": 0},
            1: {"source": "probes/transcripts/math.jsonl", "doc_id": 1},
            2: {"source": "probes/transcripts/math.jsonl", "doc_id": 2},
            3: {"source": "probes/transcripts/math.jsonl", "doc_id": 3},
            4: {"source": "/abs/safety.jsonl", "doc_id": 0}}
    acts = np.array([[1.0, 0], [3.0, 0], [0, 2.0], [0, 5.0], [7.0, 7.0]])
    out, labels = per_probe(np.arange(5), acts, seqs, {"probes/transcripts/math.jsonl": "math",
                                                       "/abs/safety.jsonl": "safety"}, tmp_path)
    assert labels == ["math", "math", "safety"]  # two math probes (not four texts) and one safety text
    assert out.tolist() == [[3.0, 0.0], [0.0, 5.0], [7.0, 7.0]]  # each probe's maximum over both responses


def test_benjamini_hochberg_known_values():
    assert benjamini_hochberg([0.01, 0.04, 0.03, 0.5]).round(4).tolist() == [0.04, 0.0533, 0.0533, 0.5]
    assert benjamini_hochberg([]).size == 0


@pytest.mark.slow
def test_the_pipeline_writes_the_headline_and_document_attribution(tiny_run):
    attr = json.loads((tiny_run / "attribution.json").read_text())
    assert attr["headline_measure"] == "cue_shift" and attr["attribution"]["shift_used"] == "cue_shift"
    heads = [c["headline"] for c in attr["categories"] if c.get("headline")]
    assert heads and all({"value", "ci_low", "ci_high", "p_value", "q_value", "significant", "own_share",
                          "direction", "n_texts"} <= set(h) for h in heads)
    transcripts = (tiny_run / "probes" / "transcripts").glob("*.jsonl")
    n_probes = sum(len(p.read_text().splitlines()) // 2 for p in transcripts)  # two transcripts per probe
    assert sum(h["n_texts"] for h in heads) == n_probes  # each probe text's answer cue once
    docs = attr["attribution"]["documents"]
    for d in docs:
        assert {"task", "category", "n_up", "n_down", "n_same", "effect", "p_value", "q_value", "significant"} <= set(d)
        assert d["n_up"] + d["n_down"] + d["n_same"] == 6  # the tiny config's --limit
