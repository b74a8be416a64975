"""Known-answer tests of the attribution layer: share ratios, enrichment, exposure and attribution."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import permutation_test, spearmanr

from diffeval.harness.core.errors import DiffevalError, RunDirError
from diffeval.harness.core.runconfig import RunConfig
from diffeval.harness.core.rundir import RunDir
from diffeval.harness.stages import measures as A
from diffeval.harness.stages.annotators import (
    AnnotationInputs,
    EnrichmentAnnotator,
    benjamini_hochberg,
)
from diffeval.harness.stages.attribution import category_members, stage_attribution
from diffeval.harness.stages.measures import log_ratio
from diffeval.harness.suite.taxonomy import load_taxonomy

# Boughorbel et al. (EMNLP 2025): N^T = 89 tuned-specific and N^B = 56 base-specific latents;
# counts n^T:n^B per category and the percentages the paper printed.
PAPER = [((4, 1), 151.7), ((3, 1), 88.8), ((16, 7), 43.8), ((19, 9), 32.8), ((21, 16), -17.4),
         ((8, 7), -28.1), ((1, 1), -37.1), ((8, 9), -44.1), ((1, 2), -68.5)]


@pytest.mark.parametrize(("counts", "published"), PAPER)
def test_share_shift_reproduces_the_published_figures(counts: tuple[int, int], published: float) -> None:
    row = A.category_shift_row("c", A.ShareCounts(counts[0], 89, counts[1], 56), n_boot=500)
    assert row["shift_pct"] == published
    assert 0 < row["p_value"] <= 1
    assert row["N_tuned"] == 89 and row["N_base"] == 56


def test_paper_counts_of_one_to_four_latents_are_flagged_and_not_significant() -> None:
    row = A.category_shift_row("instruction_following", A.ShareCounts(4, 89, 1, 56))
    assert row["small_counts"] and "too few" in row["note"]
    assert row["p_value"] > 0.05                      # +151.7 % rests on 4 vs 1 latents
    assert row["ci_low"] < 0 < (row["ci_high"] or np.inf)


def test_share_shift_undefined_without_base_latents_but_smoothed_ratio_is_finite() -> None:
    c = A.ShareCounts(10, 50, 0, 40)
    assert A.share_shift(c) is None
    assert A.log_share_ratio(c) > 2
    assert A.log_share_ratio(A.ShareCounts(0, 40, 10, 50)) == pytest.approx(-A.log_share_ratio(A.ShareCounts(10, 50, 0, 40)), rel=0.05)


def test_large_planted_shift_is_significant_with_a_ci_excluding_zero() -> None:
    row = A.category_shift_row("c", A.ShareCounts(60, 200, 10, 200), n_boot=2000)
    assert row["shift"] == pytest.approx(5.0)
    assert row["p_value"] < 1e-6 and row["ci_low"] > 0 and not row["small_counts"]


def _planted_probe_acts(rng: np.random.Generator, n_latents: int = 300, per_cat: int = 50):
    cats = ["safety", "math", "code", "multilingual"]
    labels = [c for c in cats for _ in range(per_cat)]
    acts = rng.exponential(1.0, (len(labels), n_latents)) * (rng.random((len(labels), n_latents)) < 0.3)
    planted = {c: list(range(10 * i, 10 * i + 10)) for i, c in enumerate(cats)}
    for c, latents in planted.items():
        rows = np.array([i for i, lab in enumerate(labels) if lab == c])
        acts[np.ix_(rows, latents)] += rng.exponential(3.0, (len(rows), len(latents)))
    return cats, labels, acts, planted


def test_enrichment_finds_planted_categories() -> None:
    rng = np.random.default_rng(0)
    cats, labels, acts, planted = _planted_probe_acts(rng)
    out = EnrichmentAnnotator().annotate(AnnotationInputs(cats, {}, acts, labels))
    for c, latents in planted.items():
        assert all(out[j].category == c for j in latents), c
    others = [lab.category for lab in out[40:]]
    assert others.count("unassigned") >= 0.95 * len(others)


def test_a_latent_enriched_on_two_categories_is_a_member_of_both() -> None:
    rng = np.random.default_rng(2)
    cats, labels, acts, planted = _planted_probe_acts(rng)
    shared = 45  # unplanted so far; make it fire on the texts of two categories
    a, b = cats[0], cats[1]
    rows = np.array([i for i, lab in enumerate(labels) if lab in (a, b)])
    acts[rows, shared] += rng.exponential(3.0, len(rows))
    out = EnrichmentAnnotator().annotate(AnnotationInputs(cats, {}, acts, labels))
    assert set(out[shared].categories) == {a, b}
    rows = [{"latent": lab.latent, "category": lab.category, "categories": list(lab.categories)} for lab in out]
    for c in (a, b):
        assert shared in category_members(rows, c)
        assert set(planted[c]) <= set(category_members(rows, c))
    assert out[shared].category in (a, b)  # the share counts see it once, under its primary category
    assert category_members(rows, "unassigned") == [r["latent"] for r in rows if not r["categories"]]


def test_enrichment_on_shuffled_labels_assigns_at_most_the_fdr_rate() -> None:
    rng = np.random.default_rng(1)
    cats, labels, acts, _ = _planted_probe_acts(rng)
    false_rates = []
    for seed in range(5):
        shuffled = list(np.random.default_rng(seed).permutation(labels))
        out = EnrichmentAnnotator(alpha=0.05, min_ratio=1.0, min_fire=0.0).annotate(AnnotationInputs(cats, {}, acts, shuffled))
        false_rates.append(np.mean([lab.category != "unassigned" for lab in out]))
    assert np.mean(false_rates) <= 0.05


def test_benjamini_hochberg_matches_hand_computation() -> None:
    q = benjamini_hochberg(np.array([0.01, 0.04, 0.03, 0.5]))
    # sorted: 0.01·4/1, 0.03·4/2, 0.04·4/3, 0.5·4/4, then the running minimum from the top
    assert q == pytest.approx([0.04, 0.16 / 3, 0.16 / 3, 0.5])


def test_attribution_recovers_a_planted_linear_relation() -> None:
    rng = np.random.default_rng(2)
    tasks, cats = [f"t{i}" for i in range(8)], ["a", "b", "c"]
    w = rng.uniform(0, 3, (8, 3))
    shifts = np.array([0.8, -0.5, 0.0])
    observed = {t: float(w[i] @ shifts) + rng.normal(0, 0.02) for i, t in enumerate(tasks)}
    out = A.attribute(w, shifts, tasks, cats, observed, {})
    assert out["spearman"] > 0.9 and out["p_value"] < 0.01
    row = out["per_task"][0]
    assert sum(row["contributions"].values()) == pytest.approx(row["predicted"])
    shuffled = dict(zip(tasks, np.random.default_rng(3).permutation(list(observed.values())), strict=True))
    assert A.attribute(w, shifts, tasks, cats, shuffled, {})["spearman"] < out["spearman"]


def test_attribution_with_fewer_than_three_tasks_gives_a_reason() -> None:
    out = A.attribute(np.ones((2, 1)), np.array([1.0]), ["a", "b"], ["c"], {"a": 0.1, "b": 0.2}, {})
    assert out["spearman"] is None and "at least 3" in out["reason"]


def test_exposure_is_the_excess_over_the_corpus() -> None:
    act = np.array([[10.0, 0.0], [0.0, 10.0], [1.0, 1.0], [1.0, 1.0]])
    tokens = np.array([10, 10, 10, 10])
    w = A.exposure(act, tokens, ["x", "y", None, None], ["x", "y"])
    # category 0 fires 1.0/token on x vs 12/40 = 0.3 on the corpus: 1/0.3 - 1
    assert w[0, 0] == pytest.approx(1 / 0.3 - 1) and w[0, 1] == 0


def test_mass_shift_sign_and_latent_bootstrap_ci() -> None:
    rng = np.random.default_rng(4)
    base = rng.uniform(1, 2, 300)
    factor = np.ones(300)
    factor[:100] = 2.0                                   # category A (latents 0-99) doubles; B (100-199) unchanged
    factor[200:] = 1.5
    latent_mass = np.stack([base, base * factor], axis=1)  # [n_latents, 2]
    a = A.mass_shift(latent_mass, np.arange(100), n_boot=500)
    b = A.mass_shift(latent_mass, np.arange(100, 200), n_boot=500)
    assert a["mass_shift"] == pytest.approx(1.0) and b["mass_shift"] == pytest.approx(0.0)
    whole = latent_mass[:, 1].sum() / latent_mass[:, 0].sum()
    assert a["mass_shift_rel"] == pytest.approx(2 / whole - 1) and a["mass_rel_ci_low"] > 0
    assert b["mass_shift_rel"] == pytest.approx(1 / whole - 1) and b["mass_rel_ci_high"] < 0
    # one latent carrying the whole shift: the point estimate moves, the CI stays wide
    spiky = latent_mass.copy()
    spiky[:100, 1] = spiky[:100, 0]
    spiky[0, 1] = spiky[0, 0] * 60
    c = A.mass_shift(spiky, np.arange(100), n_boot=500)
    assert c["mass_shift"] > 0.3 and c["mass_ci_low"] < 0.05
    assert A.mass_shift(latent_mass, np.array([], dtype=np.int64))["mass_shift"] is None


def test_unknown_category_and_empty_probe_corpus_are_clear_errors(tmp_path) -> None:
    tax = load_taxonomy()
    with pytest.raises(DiffevalError, match="unknown category 'safty'.*did you mean safety"):
        tax.get("safty")
    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "cats.yaml").write_text("extends: shipped\ncategories:\n  poetry:\n    description: verse\n    probes: empty.jsonl\n")
    with pytest.raises(DiffevalError, match="poetry.*0 texts"):
        load_taxonomy(tmp_path / "cats.yaml").probe_texts()
    (tmp_path / "bad.yaml").write_text("categories: [a, b]\n")
    with pytest.raises(DiffevalError, match="non-empty mapping"):
        load_taxonomy(tmp_path / "bad.yaml")


def test_shipped_taxonomy_has_probe_corpora_of_at_least_50_texts() -> None:
    tax = load_taxonomy()
    texts = tax.probe_texts()
    assert set(texts) == set(tax.names) - {"unassigned"}
    assert min(len(v) for v in texts.values()) >= 50
    assert all(tax.categories[c].tasks for c in texts)


def test_run_dir_missing_a_stage_is_a_clear_error(tmp_path) -> None:
    cfg = RunConfig(base="a", tuned="b")
    with pytest.raises(RunDirError, match="no finished 'latents' stage"):
        stage_attribution(RunDir(tmp_path), cfg.stages().attribution)


def test_changed_enrichment_finds_the_category_whose_latents_rotated():
    rng = np.random.default_rng(0)
    cats = list(rng.choice(["a", "b", "c", "d", "e"], size=500))
    changed = [(c == "a" and rng.random() < 0.3) or rng.random() < 0.02 for c in cats]
    rows = A.changed_enrichment(cats, changed, ["a", "b", "c", "d", "e"])
    assert rows[0]["changed_significant"] and rows[0]["changed_q"] < 1e-6
    assert not any(r["changed_significant"] for r in rows[1:])
    assert rows[0]["n_live"] == cats.count("a") and rows[0]["n_changed"] == sum(ch for c, ch in zip(cats, changed, strict=True) if c == "a")


def test_changed_enrichment_on_shuffled_labels_stays_at_the_fdr_rate():
    rng = np.random.default_rng(1)
    names = [f"c{i}" for i in range(10)]
    hits = 0
    for _ in range(40):  # 400 category tests with no real enrichment
        cats = list(rng.choice(names, size=400))
        changed = list(rng.random(400) < 0.1)
        hits += sum(r["changed_significant"] for r in A.changed_enrichment(cats, changed, names))
    assert hits <= 0.05 * 400


def test_changed_enrichment_with_nothing_changed_is_never_significant():
    rows = A.changed_enrichment(["a", "b", "a"], [False, False, False], ["a", "b", "z"])
    assert [r["changed_p"] for r in rows] == [1.0, 1.0, 1.0]
    assert [r["n_live"] for r in rows] == [2, 1, 0] and not any(r["changed_significant"] for r in rows)


def test_log_ratio_is_finite_when_a_category_loses_all_its_mass() -> None:
    assert log_ratio(0.5) == pytest.approx(math.log(1.5)) and log_ratio(None) == 0.0
    assert log_ratio(-1.0) == pytest.approx(math.log(0.01)) and math.isfinite(log_ratio(-1.0))


@pytest.mark.parametrize(("n", "ties", "resamples"), [(6, False, 20000), (7, True, 20000), (12, False, 500)])
def test_spearman_p_equals_scipys_permutation_test_of_spearmanr(n, ties, resamples) -> None:
    """The vectorised statistic on ranks gives the p-value of scipy's permutation test calling spearmanr on each
    pairing: exact enumeration (n ≤ 7) and random pairings alike, ties included."""
    rng = np.random.default_rng(n)
    x = rng.normal(size=n)
    y = 0.7 * x + rng.normal(size=n)
    if ties:
        x, y = np.round(x), np.round(2 * y)
    rho, p, _ = A.spearman_with_p(x, y, n_resamples=resamples)
    ref = permutation_test((x, y), lambda a, b: spearmanr(a, b).statistic, permutation_type="pairings",
                           n_resamples=resamples, alternative="two-sided", random_state=0)
    assert rho == pytest.approx(spearmanr(x, y).statistic) and p == pytest.approx(ref.pvalue, rel=1e-12)
