"""What several stages read besides their config: the task list, the taxonomy and its probe corpora."""

from __future__ import annotations

from diffeval.harness.core.errors import DiffevalError
from diffeval.harness.core.stageconfig import ProbesConfig
from diffeval.harness.suite import registry
from diffeval.harness.suite.taxonomy import Taxonomy, load_taxonomy, organism_probes


def bench_tasks(tasks: tuple[str, ...], tasks_dir: tuple[str, ...]) -> list[str]:
    """The task names `tasks` (empty = the shipped suite) resolve to."""
    return [d.name for d in registry.resolve(tasks or registry.shipped_suite(), tasks_dir)]


def taxonomy_for(cfg: ProbesConfig) -> Taxonomy:
    overrides = organism_probes(cfg.probes_dir) if cfg.probes_dir else None
    return load_taxonomy(cfg.categories, overrides)


def probe_inputs(cfg: ProbesConfig) -> tuple[Taxonomy, dict[str, list[str]], list[str]]:
    """(taxonomy, probe texts per category, probe file per category); an error when no category has probes."""
    tax = taxonomy_for(cfg)
    probes = tax.probe_texts()  # reads (and checks) every probe corpus before any model work
    if not probes:
        raise DiffevalError(f"no category in {tax.source} has a probe corpus; the annotator needs at least two")
    return tax, probes, [str(tax.categories[c].probes) for c in probes]
