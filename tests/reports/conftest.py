"""A synthetic run directory in the real file formats of every stage, with planted numbers.

Planted (so tests can assert the exact figures that must appear in the report):
- 3 lm-eval tasks + 1 external score; ifeval_mini Δ = +0.400, p = 2e-05.
- 256 latents: 20 tuned_only (16 Latent-Scaling tuned-specific), 8 base_only (all base-specific),
  150 shared, 60 other, 18 dead.
- instruction_following: n_T 12/20 vs n_B 2/8 → shift (12/20)/(2/8) − 1 = +140.0 %;
  self_reference: 1/20 vs 3/8 → −86.7 %; safety: 3/20 vs 0/8 → undefined.
- The tuned model's name and a latent context carry markdown/HTML injection.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

TUNED_NAME = "[evil](http://x.example) <img src=x onerror=alert(1)> <script>alert(3)</script> | col"
EVIL_CONTEXT = "<script>alert(1)</script> | `tick` **bold**"
# a context as the latents stage writes it: decoded pieces, the activating one at `at`, per-piece activations
DECODED_CONTEXT = {"source": "task", "task": "ifeval_mini", "doc_id": 7, "token": " Sure", "at": 2, "count": 3,
                   "pieces": ["Reply", ":", " Sure", " <script>alert(2)</script>", " |\n"], "acts": [0.0, 0.5, 2.0, 1.0, None]}


def _dump(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1))


def _latents() -> list[dict]:
    rows = []
    plan = [("tuned_only", 20, 0.95), ("base_only", 8, 0.05), ("shared", 150, 0.5), ("other", 60, 0.7),
            ("dead", 18, 0.5)]
    for cls, n, dn in plan:
        for i in range(n):
            specific = ("tuned" if cls == "tuned_only" and i < 16 else "base" if cls == "base_only" else None)
            dead = cls == "dead"
            rows.append({"format_version": 1, "latent": len(rows), "delta_norm": dn + (i % 5) * 0.005,
                         "cosine": 0.9, "nu_eps": float("nan") if dead else 0.1, "nu_r": float("nan") if dead else 0.2,
                         "freq": 0.0 if dead else 0.01, "mean_act": 0.0 if dead else 1.3, "class": cls,
                         "specific": specific, "top_rows": [] if dead else [3, 9], "top_acts": [] if dead else [2.0, 1.0],
                         "top_contexts": [] if dead else [{"source": "text", "task": None, "doc_id": None,
                                                            "token": "▁do", "context": "please▁do"}],
                         "category": "unassigned", "categories": []})
    rows[4].update({"top_contexts": [DECODED_CONTEXT], "decoder_norms": [0.5, 2.0], "category": "instruction_following",
                    "categories": ["instruction_following"]})
    return rows


def _category(cat, nt, nb, shift, lo, hi, p, mass, small, note=None) -> dict:
    return {"category": cat, "n_tuned": nt, "n_base": nb, "N_tuned": 20, "N_base": 8, "shift": shift,
            "ci_low": lo, "ci_high": hi, "p_value": p, "mass_shift": mass, "mass_ci_low": None,
            "mass_ci_high": None, "n_latents": nt + nb + 5, "small_counts": small, "note": note}


def _attribution() -> dict:
    per_task = [
        {"task": "ifeval_mini", "category": "instruction_following", "delta": 0.4, "predicted": 0.31,
         "contributions": {"instruction_following": 0.28, "self_reference": 0.03}},
        {"task": "refusal_mini", "category": "safety", "delta": 0.1, "predicted": 0.05,
         "contributions": {"instruction_following": 0.02, "self_reference": 0.03}},
        {"task": "admit_unknown", "category": "hallucination_management", "delta": -0.25, "predicted": -0.12,
         "contributions": {"instruction_following": 0.01, "self_reference": -0.13}},
    ]
    return {
        "format_version": 1, "taxonomy": "tasks/categories.yaml", "annotator": {"name": "enrichment", "alpha": 0.05},
        "reference": None, "N_tuned": 20, "N_base": 8, "headline_measure": "cue_shift",
        "categories": [
            {**_category("instruction_following", 12, 2, 1.4, 0.2, 5.1, 0.0123, 0.35, False),
             "headline": {"measure": "cue_shift", "value": 7.2, "ci_low": 5.1, "ci_high": 9.3, "p_value": 2.5e-4,
                          "q_value": 7.5e-4, "significant": True, "n_texts": 16, "n_other": 228, "own_share": 0.35,
                          "direction": "+", "margin_shift": 12.5, "direction_p": 3e-5, "n_references": 16,
                          "drift": 0.11, "min_fold": 3.0, "null": "drift_or_other_categories", "baseline": 0.11,
                          "baseline_from": "drift",
                          "drift_fold": 3.7, "common_fold": 0.45, "carriers": [{"latent": 3, "share": 0.2}]},
             "usage_shift": 0.25, "usage_ci_low": 0.1, "usage_ci_high": 0.4, "usage_p": 0.002, "n_probes": 24,
             "usage_shift_rel": 0.05, "usage_rel_ci_low": 0.02, "usage_rel_ci_high": 0.12, "empty_base": 0, "empty_tuned": 20},
            {**_category("self_reference", 1, 3, -0.8666666666666667, -0.98, -0.1, 0.041, -0.2, True),
             "headline": {"measure": "cue_shift", "value": 0.4, "ci_low": 0.1, "ci_high": 0.8, "p_value": 0.99,
                          "q_value": 0.99, "significant": False, "n_texts": 10, "n_other": 234, "own_share": 0.1,
                          "direction": None, "margin_shift": None, "direction_p": None, "n_references": 0,
                          "drift": 0.11, "min_fold": 3.0, "null": "drift_or_other_categories", "baseline": 0.11,
                          "baseline_from": "drift",
                          "drift_fold": 0.64, "common_fold": 0.45, "carriers": []}},
            _category("safety", 3, 0, None, None, None, 0.53, 0.05, True, "no base-specific latent"),
        ],
        "exposure": {t["task"]: {"instruction_following": 0.2, "self_reference": 0.1} for t in per_task},
        "attribution": {"spearman": 0.8, "p_value": 0.33, "reason": None, "n_tasks": 3, "per_task": per_task},
        "causal": [],
        "top_latents": {"instruction_following": [
            {"latent": 3, "class": "tuned_only", "delta_norm": 0.96, "enrichment": 4.25, "q_value": 0.001,
             "contexts": [{"token": "▁Sure", "context": EVIL_CONTEXT}, {"token": "▁list", "context": "Answer in a list"}]},
            {"latent": 4, "class": "tuned_only", "delta_norm": 0.93, "enrichment": 3.5, "q_value": 0.002,
             "decoder_norms": [0.5, 2.0], "contexts": [DECODED_CONTEXT]},
        ]},
        "latent_documents": {"4": [{"task": "ifeval_mini", "doc_id": 7, "outcome": 1, "change": 0.25}]},
    }


def write_run_dir(root: Path) -> Path:
    """Every stage's files, as the real stages write them (see the module docstring for what is planted)."""
    root.mkdir(parents=True, exist_ok=True)
    _dump(root / "config.json", {"base": "toy-base", "tuned": TUNED_NAME, "organism": "toyworld", "seed": 1234})
    _dump(root / "manifest.json", {
        "format_version": 1, "created": "2026-01-01T00:00:00+00:00",
        "stages": {"bench.base": {"status": "done", "seconds": 12.5, "outputs": []},
                   "bench.deltas": {"status": "done", "seconds": 0.4, "outputs": ["bench/deltas.json"]},
                   "crosscoder": {"status": "done", "seconds": 41.0, "outputs": []}},
        "packages": {"diffeval": "0.1.0", "torch": "2.4.0", "lm_eval": "0.4.5"}})
    task = {"filter": "none", "test": "mcnemar", "source": "lm-eval"}
    _dump(root / "bench" / "deltas.json", {"format_version": 1, "base": "toy-base", "tuned": TUNED_NAME, "tasks": [
        {"task": "ifeval_mini", "category": "instruction_following", "metric": "acc", "n": 50, "base": 0.2,
         "tuned": 0.6, "delta": 0.4, "ci_low": 0.24, "ci_high": 0.56, "p_value": 2e-05, **task},
        {"task": "refusal_mini", "category": "safety", "metric": "acc", "n": 40, "base": 0.5, "tuned": 0.6,
         "delta": 0.1, "ci_low": -0.05, "ci_high": 0.25, "p_value": 0.29, **task},
        {"task": "admit_unknown", "category": "hallucination_management", "metric": "acc", "n": 40, "base": 0.75,
         "tuned": 0.5, "delta": -0.25, "ci_low": -0.4, "ci_high": -0.1, "p_value": 0.004, **task},
        {"task": "alpaca_eval", "category": "instruction_following", "metric": "win_rate", "n": None, "base": 0.3,
         "tuned": 0.45, "delta": 0.15, "ci_low": None, "ci_high": None, "p_value": None, "test": None,
         "source": "external"},
    ]})
    _dump(root / "activations" / "manifest.json", {
        "format_version": 1, "complete": True, "rows": 20000, "layer": [1, 1], "d_model": 64, "n_layers": [2, 2],
        "models": [{"spec": "toy-base", "kind": "dir", "config_sha256": "aaaa1111bbbb2222"},
                   {"spec": TUNED_NAME, "kind": "dir", "config_sha256": "cccc3333dddd4444"}]})
    _dump(root / "crosscoder" / "cfg.json", {"format_version": 1, "architecture": "batchtopk", "d_model": 64,
                                             "n_models": 2, "n_latents": 256, "k": 8, "batch_size": 256,
                                             "n_steps": 400})
    metrics = [{"step": 200, "loss": 0.4, "mse": 0.3, "aux": 0.01, "fve": [0.61, 0.6], "l0": 8.0, "k": 8,
                "dead_fraction": 0.2, "rows_per_s": 1e5},
               {"step": 400, "loss": 0.2, "mse": 0.15, "aux": 0.01, "fve": [0.8123, 0.7988], "l0": 7.96, "k": 8,
                "dead_fraction": 0.0703, "rows_per_s": 1e5}]
    (root / "crosscoder" / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
    (root / "latents.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _latents()))
    _dump(root / "attribution.json", _attribution())
    return root


@pytest.fixture
def run_dir(tmp_path) -> Path:
    return write_run_dir(tmp_path / "runs" / "toyworld-run")
