"""Check that a model pair shows its declared planted changes in the benchmark deltas."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tabulate import tabulate

from diffeval.harness.core.config import BenchConfig
from diffeval.harness.organisms.base import Planted
from diffeval.harness.pipeline import load_deltas, run_bench


@dataclass(frozen=True)
class Check:
    category: str
    direction: str
    task: str
    delta: float
    ci_low: float
    ci_high: float
    p_value: float
    passed: bool


def passes(direction: str, ci_low: float, ci_high: float) -> bool:
    """+ and − need a CI that excludes 0 on their side; 0 needs a CI that contains 0."""
    if direction == "+":
        return ci_low > 0
    if direction == "-":
        return ci_high < 0
    return ci_low <= 0 <= ci_high


def verify_pair(base: str, tuned: str, planted: list[Planted], tasks_dir: str | Path, out: str | Path,
                **bench_options: Any) -> list[Check]:
    """Run the planted tasks on (base, tuned) and check every declared change."""
    tasks = tuple(t for p in planted for t in p.tasks)
    cfg = BenchConfig(base=str(base), tuned=str(tuned), tasks=tasks, tasks_dir=(str(tasks_dir),), **bench_options)
    run_bench(cfg, out)
    by_task = {row["task"]: row for row in load_deltas(out)["tasks"]}
    checks = []
    for p in planted:
        for task in p.tasks:
            r = by_task[task]
            checks.append(Check(p.category, p.direction, task, r["delta"], r["ci_low"], r["ci_high"],
                                r["p_value"], passes(p.direction, r["ci_low"], r["ci_high"])))
    return checks


def checks_table(checks: list[Check]) -> str:
    rows = [[c.category, c.direction, c.task, f"{c.delta:+.3f}", f"[{c.ci_low:+.3f}, {c.ci_high:+.3f}]",
             f"{c.p_value:.3g}", "pass" if c.passed else "FAIL"] for c in checks]
    return tabulate(rows, headers=["category", "planted", "task", "Δ", "95% CI", "p", "verdict"], tablefmt="github")
