import numpy as np
import pytest

from diffeval.harness.stages.paired_tests import (
    mcnemar_p,
    paired_bootstrap_ci,
    paired_compare,
    paired_permutation_p,
)


def test_planted_binary_difference_is_significant():
    base = np.zeros(40)
    tuned = np.r_[np.ones(30), np.zeros(10)]
    r = paired_compare(base, tuned, iters=2000)
    assert r.test == "mcnemar"
    assert r.delta == pytest.approx(0.75)
    assert r.p_value < 1e-6
    assert 0.55 < r.ci_low < r.delta < r.ci_high <= 0.9


def test_identical_scores_give_zero_delta_and_p_one():
    x = np.r_[np.ones(20), np.zeros(20)]
    r = paired_compare(x, x.copy())
    assert (r.delta, r.ci_low, r.ci_high, r.p_value) == (0.0, 0.0, 0.0, 1.0)


def test_mcnemar_matches_hand_computed_exact_value():
    # 10 docs only base gets right, 2 only tuned: p = 2 * P(X <= 2 | n=12, 1/2) = 2 * 79 / 4096
    base = np.r_[np.ones(10), np.zeros(2), np.ones(5)]
    tuned = np.r_[np.zeros(10), np.ones(2), np.ones(5)]
    assert mcnemar_p(base, tuned) == pytest.approx(158 / 4096)


def test_continuous_scores_use_paired_permutation():
    rng = np.random.default_rng(0)
    base = rng.uniform(size=60)
    shifted = base + 0.2 + rng.normal(0, 0.05, size=60)
    r = paired_compare(base, shifted)
    assert r.test == "paired_permutation"
    assert r.p_value < 0.01 and r.ci_low > 0.1
    noise = base + rng.normal(0, 0.05, size=60)
    assert paired_permutation_p(base, noise) > 0.05


def test_bootstrap_keeps_pairs_together():
    # Every doc improves by exactly 0.1: the paired CI has zero width, an unpaired one would not.
    base = np.linspace(0, 0.9, 50)
    lo, hi = paired_bootstrap_ci(base, base + 0.1)
    assert lo == pytest.approx(0.1) and hi == pytest.approx(0.1)


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="equal 1-d shapes"):
        paired_compare(np.zeros(3), np.zeros(4))
