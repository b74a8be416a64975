"""benches/cue_layers.py: the per-block cue folds are the headline's, on rows that the collection would keep."""

import numpy as np
import pytest
import torch

from benches.cue_layers import folds_at
from diffeval.harness.stages.headline import cue_shifts, relative_difference


def _pair(rng, n_texts: int, cue_move: float, length: int = 6, d: int = 16):
    """Per text, base and tuned rows [length, d]: the text before the cue moves a little, the cue by cue_move."""
    base, tuned = [], []
    for _ in range(n_texts):
        xb = rng.normal(size=(length, d))
        step = rng.normal(size=(length, d)) * 0.1
        step[-1] *= cue_move
        base.append(xb)
        tuned.append(xb + step)
    return base, tuned


def test_a_category_whose_cues_alone_moved_is_the_one_flagged():
    rng = np.random.default_rng(0)
    base, tuned, cats = [], [], []
    for cat, move in (("moved", 4.0), ("a", 1.0), ("b", 1.0), ("c", 1.0)):
        xb, xt = _pair(rng, 30, move)
        base += xb
        tuned += xt
        cats += [cat] * 30
    shifts = folds_at(base, tuned, cats, alpha=0.05)
    assert [c for c in shifts if shifts[c]["significant"]] == ["moved"]
    assert shifts["moved"]["value"] + 1 == pytest.approx(16, rel=0.35)  # r grows with the step's square
    assert all(shifts[c]["value"] + 1 < 1.5 for c in "abc")


def test_rows_of_one_scale_give_exactly_the_headline_measure_and_outliers_are_dropped():
    rng = np.random.default_rng(1)
    base, tuned, cats = [], [], []
    for cat in "abcd":
        xb, xt = _pair(rng, 10, 2.0 if cat == "a" else 1.0)
        base += xb
        tuned += xt
        cats += [cat] * 10
    scale = np.sqrt(16 / (np.concatenate(base) ** 2).sum(1).mean())
    tuned_scale = np.sqrt(16 / (np.concatenate(tuned) ** 2).sum(1).mean())
    r = [relative_difference(torch.as_tensor(np.stack([b * scale, t * tuned_scale], 1))).numpy()
         for b, t in zip(base, tuned, strict=True)]
    expected = cue_shifts(np.array([x[-1] for x in r], dtype=np.float64), np.asarray(cats, dtype=object), list("abcd"),
                          np.array([x[:-1].mean() for x in r], dtype=np.float64))
    got = folds_at(base, tuned, cats, alpha=0.05)
    assert got["a"]["value"] == pytest.approx(expected["a"]["value"], rel=1e-6)
    base[0] = base[0].copy()
    base[0][2] *= 1000.0  # a massive activation, as a real LM's first positions may hold: not a row
    assert folds_at(base, tuned, cats, alpha=0.05)["a"]["value"] == pytest.approx(expected["a"]["value"], rel=0.2)
