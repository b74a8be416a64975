"""Scoring a pipeline run against an organism's declared planted changes."""

from __future__ import annotations

import json

from diffeval.harness.organisms.base import Planted
from diffeval.harness.organisms.score import found, score_run, summarise


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
             "n_changed": 9, "n_live": 30, "changed_q": 0.001, "changed_significant": True},
            {"category": "math", "shift": 0.5, "ci_low": 0.1, "ci_high": 0.9, "p_value": 0.02,
             "mass_shift_rel": 0.0, "mass_rel_ci_low": -0.1, "mass_rel_ci_high": 0.1,
             "usage_shift": 0.0, "usage_ci_low": 0.0, "usage_ci_high": 0.0,
             "usage_shift_rel": 0.0, "usage_rel_ci_low": 0.0, "usage_rel_ci_high": 0.0,
             "n_changed": 6, "n_live": 40, "changed_q": 0.03, "changed_significant": True}]
    attr = {"categories": cats, "N_tuned": 20, "N_base": 15,
            "attribution": {"spearman": 0.8, "p_value": 0.04},
            "causal": [{"task": "t_safety", "delta_removed": 0.6, "ci_low": 0.4, "ci_high": 0.8, "control_removed": 0.1},
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
                              "control_removed": 0.1}]  # only planted (+/−) tasks
    summary = summarise([run, run])
    assert summary["found"]["safety"] == {"share": 2, "mass": 0, "usage": 0, "usage_rel": 2, "changed": 2}
    assert summary["found"]["math"] == {"share": 0, "mass": 2, "usage": 2, "usage_rel": 2, "changed": 0}
    assert summary["spearman_ge_0_7"] == 2 and summary["causal_ge_half"] == 2
