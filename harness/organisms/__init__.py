"""Model organisms: model pairs with planted capability changes (the demo and the ground truth)."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Any

from diffeval.harness.core.errors import DiffevalError, did_you_mean
from diffeval.harness.organisms import gemma_lora, toyworld
from diffeval.harness.organisms.base import Planted, Recipe, build, built_dir, paths, read_built
from diffeval.tasks import TASKS_DIR

__all__ = ["DEFAULT_ORGANISM", "RECIPES", "Planted", "Recipe", "build", "built_dir", "get", "paths", "read_built"]

DEFAULT_ORGANISM = "toyworld"

def _toy(name: str, description: str, placebo: bool = False) -> Recipe:
    plant = toyworld.PLANTS[name]
    return Recipe(name=f"{name}_placebo" if placebo else name, description=description, build=toyworld.build,
                  planted=toyworld.planted({c: "0" for c in plant} if placebo else plant),
                  params=toyworld.params(name, placebo), placebo_of=name if placebo else None)


RECIPES: dict[str, Recipe] = {r.name: r for r in (
    _toy("toyworld", "Llama trained from scratch on a made-up world; tuned: +instructions, +refusals, -admits ignorance"),
    _toy("toyworld_recall", "the toyworld recipe with other plants; tuned: +arithmetic, -the toy language, +knows it is a model"),
    _toy("toyworld_code", "the toyworld recipe with two more categories; tuned: +python, +json, -arithmetic"),
    _toy("toyworld", "placebo of toyworld: the same base and fine-tuning schedule on replay data only", placebo=True),
    _toy("toyworld_recall", "placebo of toyworld_recall: the same base and fine-tuning schedule on replay data only",
         placebo=True),
    _toy("toyworld_code", "placebo of toyworld_code: the same base and fine-tuning schedule on replay data only",
         placebo=True),
    Recipe(
        name="gemma270m_lora",
        description="Gemma-3-270M (GGUF from PyPI) + LoRA; tuned: +refuses harmful requests, +admits ignorance",
        build=gemma_lora.build, planted=gemma_lora.PLANTED, params=gemma_lora.PARAMS,
        tasks_dir=TASKS_DIR, inputs=gemma_lora.INPUTS, slow=True,
    ),
    Recipe(
        name="gemma270m_lora_placebo",
        description="placebo of gemma270m_lora: the same LoRA and schedule on the base model's own answers only",
        build=gemma_lora.build, planted=[Planted(p.category, "0", p.tasks) for p in gemma_lora.PLANTED],
        params=gemma_lora.PLACEBO_PARAMS, tasks_dir=TASKS_DIR, inputs=gemma_lora.INPUTS, slow=True,
        placebo_of="gemma270m_lora",
    ),
)}


def get(name: str, build_seed: int | None = None) -> Recipe:
    """The recipe `name`; with `build_seed`, built from that seed instead of its own (toy organisms only)."""
    if name not in RECIPES:
        raise DiffevalError(f"unknown organism {name!r}{did_you_mean(name, RECIPES)} (available: {', '.join(RECIPES)})")
    recipe = RECIPES[name]
    if build_seed is None or build_seed == recipe.params.get("seed"):
        return recipe
    if "seed" not in recipe.params or recipe.slow:
        raise DiffevalError(f"organism {name!r} has no build seed to vary (--build-seed is for the toy organisms: "
                            f"{', '.join(n for n, r in RECIPES.items() if 'seed' in r.params and not r.slow)})")
    if build_seed < 0:
        raise DiffevalError(f"--build-seed must be >= 0, got {build_seed}")
    return dataclasses.replace(recipe, params={**recipe.params, "seed": build_seed})


def describe(name: str, build_seed: int | None = None) -> dict[str, Any]:
    """The `organisms show --json` document (building first if needed)."""
    recipe = get(name, build_seed)
    build(recipe)
    p = paths(recipe)
    return {
        "name": name, "base": str(p["base"]), "tuned": str(p["tuned"]), "tasks_dir": str(p["tasks_dir"]),
        "probes_dir": str(p["probes_dir"]),
        "description": recipe.description, "build_seed": recipe.params.get("seed"), "placebo_of": recipe.placebo_of,
        "planted": [{"category": x.category, "direction": x.direction, "tasks": x.tasks} for x in recipe.planted],
    }


def default_run_flags(name: str, flags: dict[str, Any], build_seed: int | None = None) -> dict[str, Any]:
    """The `run` options for organism `name`: models, tasks, probe corpora, and its texts as the corpus."""
    info = describe(name, build_seed)
    out: dict[str, Any] = {"base": info["base"], "tuned": info["tuned"],
                           "tasks_dir": (info["tasks_dir"], *(flags.get("tasks_dir") or ()))}
    if not flags.get("tasks"):
        out["tasks"] = ",".join(t for p in info["planted"] for t in p["tasks"])
    out["organism"] = name
    if not flags.get("probes_dir"):  # the organism's own probe corpora (held out, with reference answers)
        out["probes_dir"] = info["probes_dir"]
        if get(name).tasks_dir is not None:
            # measured with the shipped tasks: every shipped category is measured, the planted ones on the
            # organism's own probes and the others on the shipped probes (a --probes-dir replaces them all)
            out["probes_dir"] = str(with_shipped_probes(Path(info["probes_dir"])))
    if get(name).tasks_dir is None:
        # an organism with its own tasks lives in its own made-up world: its probe texts are both the
        # probe corpora and the crosscoder's corpus (the shipped English texts mean nothing to it). They are
        # prompts, and the planted behaviours are written at the answer positions, so the crosscoder also
        # trains on both models' answers to them (the probe transcripts), unless told otherwise.
        probes = sorted(str(p) for p in Path(info["probes_dir"]).glob("*.jsonl"))
        if not flags.get("corpus"):
            out["corpus"] = tuple(probes)
            if flags.get("corpus_responses") is None and flags.get("probe_responses") != 0:
                out["corpus_responses"] = True
    return out


def with_shipped_probes(probes_dir: Path) -> Path:
    """A probe directory beside `probes_dir` (`<its name>_with_shipped`) holding its files and, for every shipped
    category it has none for, the shipped probe corpus; made once, whole (written aside, then renamed)."""
    out = probes_dir.with_name(f"{probes_dir.name}_with_shipped")
    if out.is_dir():
        return out
    tmp = probes_dir.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    shipped = {p.stem: p for p in (TASKS_DIR / "probes").glob("*.jsonl")}  # the shipped taxonomy's corpora
    for name, path in {**shipped, **{p.stem: p for p in probes_dir.glob("*.jsonl")}}.items():
        shutil.copyfile(path, tmp / f"{name}.jsonl")
    tmp.rename(out)
    return out
