"""Scoring a pipeline run against an organism's declared planted changes."""

from __future__ import annotations

import json

from diffeval.harness.organisms.base import Planted
from diffeval.harness.organisms.score import (
    KINDS,
    VALUE_OF,
    fold_separation,
    found,
    headline_folds,
    score_run,
    suite_summary,
    suite_table,
    summarise,
)
from diffeval.reports.figures import suite_folds


def test_found_needs_the_declared_sign_with_a_ci_excluding_zero() -> None:
    assert found("+", 0.3, 0.1, 0.5) and not found("+", 0.3, -0.1, 0.5) and not found("+", -0.3, -0.5, -0.1)
    assert found("-", -0.3, -0.5, -0.1) and not found("-", -0.3, -0.5, None)
    assert found("0", 0.1, -0.1, 0.3) and not found("0", 0.3, 0.1, 0.5)
    # no estimate is never counted as a success, for a planted change or for a control
    assert not found("0", None, None, None) and not found("+", None, None, None) and not found("0", 0.0, -0.1, None)


def test_score_run_reads_attribution_json(tmp_path) -> None:
    cats = [{"category": "safety", "shift": 0.8, "ci_low": 0.2, "ci_high": 1.5, "p_value": 0.01,
             "mass_shift_rel": 0.1, "mass_rel_ci_low": -0.02, "mass_rel_ci_high": 0.2,
             "usage_shift": -0.4, "usage_ci_low": -0.5, "usage_ci_high": -0.3,
             "usage_shift_rel": 0.3, "usage_rel_ci_low": 0.1, "usage_rel_ci_high": 0.5,
             "n_changed": 9, "n_live": 30, "changed_q": 0.001, "changed_significant": True,
             "headline": {"value": 6.0, "q_value": 0.001, "significant": True, "direction": "-"}},
            {"category": "math", "shift": 0.5, "ci_low": 0.1, "ci_high": 0.9, "p_value": 0.02,
             "mass_shift_rel": 0.0, "mass_rel_ci_low": -0.1, "mass_rel_ci_high": 0.1,
             "usage_shift": 0.0, "usage_ci_low": 0.0, "usage_ci_high": 0.0,
             "usage_shift_rel": 0.0, "usage_rel_ci_low": 0.0, "usage_rel_ci_high": 0.0,
             "n_changed": 6, "n_live": 40, "changed_q": 0.03, "changed_significant": True,
             "headline": {"value": 0.3, "q_value": 0.8, "significant": False, "direction": "+"}}]
    attr = {"categories": cats, "N_tuned": 20, "N_base": 15,
            "attribution": {"spearman": 0.8, "p_value": 0.04,
                            "documents": [{"task": "t_safety", "significant": True}, {"task": "t_math", "significant": False}]},
            "causal": [{"task": "t_safety", "delta_removed": 0.6, "ci_low": 0.4, "ci_high": 0.8, "control_removed": 0.1,
                        "control_p": 0.03},
                       {"task": "t_math", "delta_removed": 0.0}]}
    (tmp_path / "attribution.json").write_text(json.dumps(attr))
    planted = [Planted("safety", "+", ["t_safety"]), Planted("math", "0", ["t_math"])]
    run = score_run(tmp_path, planted)
    rows = {r["category"]: r for r in run["categories"]}
    assert rows["safety"]["share_found"] and not rows["safety"]["mass_found"]
    assert not rows["math"]["share_found"] and rows["math"]["mass_found"]   # a planted-unchanged category moved
    assert not rows["safety"]["usage_found"] and rows["math"]["usage_found"]  # wrong sign; exactly unchanged
    assert rows["safety"]["usage_rel_found"] and rows["math"]["usage_rel_found"]
    assert rows["safety"]["changed_found"] and not rows["math"]["changed_found"]  # math changed but was planted 0
    assert run["causal"] == [{"task": "t_safety", "delta_removed": 0.6, "ci_low": 0.4, "ci_high": 0.8,
                              "control_removed": 0.1, "control_p": 0.03}]  # only planted (+/−) tasks
    assert run["documents"] == [{"task": "t_safety", "significant": True}]
    # the headline: safety changed with the wrong sign (found unsigned, not signed); math held (not significant)
    assert not rows["safety"]["headline_found"] and rows["safety"]["headline_changed_found"]
    assert rows["math"]["headline_found"] and rows["math"]["headline_changed_found"]
    summary = summarise([run, run])
    assert summary["found"]["safety"] == {"headline": 0, "headline_changed": 2, "share": 2, "mass": 0, "usage": 0,
                                          "usage_rel": 2, "changed": 2}
    assert summary["found"]["math"] == {"headline": 2, "headline_changed": 2, "share": 0, "mass": 2, "usage": 2,
                                        "usage_rel": 2, "changed": 0}
    assert summary["spearman_ge_0_7"] == 2 and summary["causal_ge_half"] == 2


def test_the_suite_summary_counts_planted_controls_and_placebos() -> None:
    def run(rows):
        return {"categories": [{"category": c, "planted": p, **{f"{k}_found": ok for k in KINDS},
                                **{v: 1.0 for v in VALUE_OF.values()}} for c, p, ok in rows],
                "spearman": 0.5, "causal": [], "documents": []}

    docs = [{"organism": "o", "build_seed": 0, "placebo": False,
             "runs": [run([("a", "+", True), ("b", "-", False), ("c", "0", True), ("d", "0", False)])]},
            {"organism": "o_placebo", "build_seed": 0, "placebo": True,
             "runs": [run([("a", "0", True), ("b", "0", False)]), run([("a", "0", True), ("b", "0", True)])]}]
    s = suite_summary(docs)["headline"]
    assert (s["planted_found"], s["planted"]) == (1, 2)
    assert (s["controls_false"], s["controls"]) == (1, 2)      # d: a planted-0 category not held
    assert (s["placebo_false"], s["placebo"]) == (1, 4)        # b in the first placebo run
    assert (s["placebo_runs_any"], s["placebo_runs"]) == (1, 2)
    docs[0]["runs"][0]["categories"][3]["headline"] = None  # no estimate: not counted as a false positive
    assert suite_summary(docs)["headline"]["controls_false"] == 0
    assert suite_summary(docs)["headline"]["no_estimate"] == 1


def _suite(folds: dict[str, list[tuple[str, str, float | None]]]) -> list[dict]:
    """Suite documents with one run per organism, its categories' headline shifts being fold − 1."""
    return [{"organism": name, "build_seed": 0, "placebo": name.endswith("placebo"),
             "runs": [{"categories": [{"category": c, "planted": p, "headline": None if f is None else f - 1,
                                       "headline_ci": [None, None] if f is None else [f - 1.5, f - 0.5],
                                       "headline_min_fold": 2.0,
                                       "headline_found": f is not None and f > 2} for c, p, f in cats]}]}
            for name, cats in folds.items()]


def test_fold_separation_says_which_planted_folds_no_threshold_could_find() -> None:
    docs = _suite({"org": [("a", "+", 3.0), ("b", "-", 1.5), ("c", "0", 1.2), ("d", "0", None)],
                   "org_placebo": [("a", "0", 0.8), ("b", "0", 2.0)]})
    points = headline_folds(docs)
    assert [(p["category"], p["group"]) for p in points] == [("a", "planted"), ("b", "planted"), ("c", "control"),
                                                            ("a", "placebo"), ("b", "placebo")]  # d: no estimate
    assert points[0]["fold"] == 3.0 and points[0]["ci_low"] == 2.5 and points[0]["found"] and points[0]["min_fold"] == 2.0
    sep = fold_separation(points)
    # 3.0 exceeds all three unchanged folds, 1.5 exceeds 1.2 and 0.8 but not 2.0: 5 of 6 pairs
    assert sep["auc"] == 5 / 6
    assert (sep["unchanged_max"], sep["planted_min"], sep["planted_at_or_below_unchanged_max"]) == (2.0, 1.5, 1)
    assert fold_separation([p for p in points if p["group"] == "planted"])["auc"] is None  # nothing to compare with
    assert fold_separation(headline_folds(_suite({"org": [("a", "+", 4.0)], "org_placebo": [("a", "0", 1.0)]})))["auc"] == 1.0


def test_the_suite_table_and_figure_show_the_separation(tmp_path) -> None:
    docs = _suite({"org": [("a", "+", 3.0), ("b", "-", 1.5), ("c", "0", 1.2)], "org_placebo": [("a", "0", 0.8)]})
    for d in docs:
        for r in d["runs"]:
            r.update(spearman=None, causal=[], documents=[])
            for c in r["categories"]:
                c.update({f"{k}_found": c["headline_found"] for k in KINDS if k != "headline"},
                         headline_significant=c["headline_found"], headline_direction="+")
    text = suite_table({"seeds": 1, "organisms": docs, "summary": suite_summary(docs)})
    assert "ROC AUC 1.000" in text and "largest unchanged fold is 1.20×" in text and "0 planted folds" in text
    path = suite_folds(headline_folds(docs), 2.0, tmp_path / "folds.png")
    assert path == tmp_path / "folds.png" and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert suite_folds(headline_folds(docs), None, tmp_path / "nothreshold.png") is not None  # a run without one
    assert suite_folds([], 2.0, tmp_path / "none.png") is None and not (tmp_path / "none.png").exists()
