"""Fixtures for leaderboard tests: run directories holding minimal, valid, hand-built reports."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

# a 1x1 transparent PNG: figures are copied as bytes, their content does not matter here
PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360000002000001e221bc330000000049454e44ae426082"
)


def build_report(
    base: str = "org/base-1b",
    tuned: str = "org/base-1b-simpo",
    reference: str | None = None,
    tasks: dict[str, float] | None = None,
    shifts: dict[str, tuple[float | None, float | None]] | None = None,
    spearman: float | None = 0.8,
    headline: dict[str, tuple[float, float, str | None]] | None = None,
    config: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A report.json following the report.json contract (reports/schema.py).

    `shifts` maps a category to (shift, p) with placeholder counts, or to (n_tuned, N_tuned, n_base,
    N_base, p) with the shift computed from the counts as in the paper. `headline` maps a category to the
    headline measure's (fold, q, direction); changed when q < 0.05. `config` is the run configuration.
    """
    headline = {"instruction following": (8.0, 0.001, "+"), "safety": (1.3, 0.9, None)} if headline is None else headline
    config = {"layer": 1, "seed": 0, "bench_seed": 0, "tokens": 1000, "n_latents": 64, "k": 4, "n_steps": 100} \
        if config is None else config
    tasks = {"ifeval_lite": 0.12, "gsm_lite": -0.03} if tasks is None else tasks
    shifts = {"instruction following": (1.517, 0.002), "safety": (0.328, 0.2), "self-reference": (-0.441, 0.04)} \
        if shifts is None else shifts

    def model(spec: str) -> dict[str, Any]:
        return {"spec": spec, "revision": None, "n_layers": 2, "d_model": 16}

    return {
        "schema_version": 2,
        "created": "2025-01-01T00:00:00+00:00",
        "diffeval_version": "0.1.0",
        "models": {"base": model(base), "tuned": model(tuned), "reference": model(reference) if reference else None},
        "tasks": [
            {"task": t, "category": None, "metric": "acc", "n": 50, "base": 0.5, "tuned": 0.5 + d, "delta": d,
             "ci_low": d - 0.05, "ci_high": d + 0.05, "p_value": 0.01}
            for t, d in tasks.items()
        ],
        "crosscoder": {"layer": 1, "architecture": "batchtopk", "n_latents": 64, "k": 4, "tokens": 1000,
                       "fve": {"base": 0.9, "tuned": 0.88}, "l0": 4.0, "dead_fraction": 0.1},
        "latent_classes": {"tuned_only": 10, "base_only": 8, "shared": 30, "other": 10, "dead": 6},
        "headline_measure": "cue_shift",
        "run_config": config,
        "categories": [{**_category(c, spec), "headline": _headline(headline.get(c))} for c, spec in shifts.items()]
        + [{**_category(c, (None, None)), "headline": _headline(h)} for c, h in headline.items() if c not in shifts],
        "attribution": {
            "spearman": spearman, "p_value": 0.1 if spearman is not None else None,
            "per_task": [{"task": t, "delta": d, "predicted": d / 2, "contributions": {"safety": d / 2}}
                         for t, d in tasks.items()],
        },
        "causal": [],
        "provenance": {"config_hash": "abc", "packages": {"diffeval": "0.1.0"}, "timings": {"bench": 1.0}},
    }


def _headline(spec: tuple[float, float, str | None] | None) -> dict[str, Any] | None:
    if spec is None:
        return None
    fold, q, direction = spec
    return {"value": fold - 1, "ci_low": fold - 1.5, "ci_high": fold - 0.5, "p_value": q / 2, "q_value": q,
            "significant": q < 0.05, "direction": direction}


def _category(category: str, spec: tuple) -> dict[str, Any]:
    if len(spec) == 2:
        (shift, p), (n_t, N_t, n_b, N_b) = spec, (3, 10, 2, 8)
    else:
        n_t, N_t, n_b, N_b, p = spec
        shift = (n_t / N_t) / (n_b / N_b) - 1 if n_b else None
    return {"category": category, "n_tuned": n_t, "n_base": n_b, "N_tuned": N_t, "N_base": N_b, "shift": shift,
            "ci_low": None, "ci_high": None, "p_value": p, "mass_shift": None}


def write_run(run_dir: Path, report: dict[str, Any] | str | None = None, **kwargs: Any) -> Path:
    """A run directory with report.json (a dict, or raw text to plant a malformed file), report.md, a figure."""
    run_dir.mkdir(parents=True, exist_ok=True)
    report = build_report(**kwargs) if report is None else report
    text = report if isinstance(report, str) else json.dumps(report, indent=2)
    (run_dir / "report.json").write_text(text, encoding="utf-8")
    (run_dir / "report.md").write_text("# Attribution report\n\nplanted text\n", encoding="utf-8")
    (run_dir / "figures").mkdir(exist_ok=True)
    (run_dir / "figures" / "shifts.png").write_bytes(PNG)
    return run_dir


def snapshot(root: Path) -> dict[str, str]:
    """Every path under `root` (files, folders, links) with a hash of its bytes: equal snapshots = byte-identical."""
    out = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_symlink():
            out[rel] = "link:" + str(path.readlink())
        elif path.is_dir():
            out[rel] = "dir"
        else:
            out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


@pytest.fixture
def make_run(tmp_path):
    """make_run(name, **build_report kwargs) -> a run directory under tmp_path/runs."""

    def make(name: str, report: dict[str, Any] | str | None = None, **kwargs: Any) -> Path:
        return write_run(tmp_path / "runs" / name, report, **kwargs)

    return make
