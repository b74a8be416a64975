"""The organism framework: recipes, the build cache, and planted-change declarations.

A recipe deterministically builds a base and a tuned model (ordinary Hugging Face directories
with a shared tokenizer) plus the lm-eval tasks that measure its planted changes. Builds are
cached under `$DIFFEVAL_CACHE/organisms/<name>-<recipe hash>/` (default ~/.cache/diffeval). A
build happens in a temporary directory that is renamed into place only once complete, with
`organism.json` as its last file, so an interrupted build never passes as built.
"""

from __future__ import annotations

import ast
import hashlib
import inspect
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from diffeval.harness.core import progress
from diffeval.harness.core.errors import DiffevalError
from diffeval.harness.core.io import atomic_write_json, atomic_write_jsonl, atomic_write_text
from diffeval.harness.organisms import train
from diffeval.tasks import MULTIPLE_CHOICE_YAML

log = logging.getLogger(__name__)

ORGANISM_FILE = "organism.json"
FORMAT_VERSION = 1
DIRECTIONS = ("+", "-", "0")


@dataclass(frozen=True)
class Planted:
    """One declared change: `direction` is + (improved), - (worsened) or 0 (planted unchanged)."""

    category: str
    direction: str
    tasks: list[str]

    def __post_init__(self) -> None:
        if self.direction not in DIRECTIONS:
            raise ValueError(f"planted direction {self.direction!r} for {self.category} must be one of {DIRECTIONS}")


@dataclass(frozen=True)
class Recipe:
    """How to build one organism. `build(out_dir, params)` writes base/, tuned/ and tasks/."""

    name: str
    description: str
    build: Callable[[Path, dict[str, Any]], None]
    planted: list[Planted]
    params: dict[str, Any] = field(default_factory=dict)
    tasks_dir: Path | None = None  # None: the build writes its own tasks/
    inputs: tuple[Path, ...] = ()  # data files the build reads (part of the hash)
    slow: bool = False
    placebo_of: str | None = None  # a placebo: the organism whose base it shares, with nothing planted

    def hash(self) -> str:
        """Changes when the parameters, the recipe's code or its input files change; not when only the code's
        comments, docstrings or layout do (a rebuild of the Gemma organism takes about 20 minutes)."""
        src = [code_fingerprint(inspect.getsource(m)) for m in (inspect.getmodule(self.build), train)]
        data = [hashlib.sha256(p.read_bytes()).hexdigest() for p in self.inputs]
        blob = json.dumps([self.name, self.params, [asdict(p) for p in self.planted], src, data], sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


def code_fingerprint(source: str) -> str:
    """Python source as its syntax tree without docstrings: equal for sources that differ only in comments,
    docstrings and formatting, different for any change the interpreter would see."""
    tree = ast.parse(source)
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and body
                and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)):
            node.body = body[1:] or [ast.Pass()]
    return ast.dump(tree)


def cache_root() -> Path:
    return Path(os.environ.get("DIFFEVAL_CACHE", Path.home() / ".cache" / "diffeval")) / "organisms"


def built_dir(recipe: Recipe) -> Path:
    return cache_root() / f"{recipe.name}-{recipe.hash()}"


def read_built(recipe: Recipe) -> dict[str, Any] | None:
    """The organism.json of a complete build of `recipe`, or None."""
    path = built_dir(recipe) / ORGANISM_FILE
    try:
        data = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return data if data.get("recipe_hash") == recipe.hash() else None


def build(recipe: Recipe, force: bool = False) -> dict[str, Any]:
    """Build `recipe` (or reuse the cached build); returns its organism.json."""
    if not force and (done := read_built(recipe)):
        return done
    final = built_dir(recipe)
    final.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(recipe)
    tmp = final.parent / f".tmp-{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    t0 = time.perf_counter()
    log.info("building organism %s into %s", recipe.name, final)
    progress.stage_started(f"organism {recipe.name} (build)", None)
    try:
        recipe.build(tmp, recipe.params)
        record = {
            "format_version": FORMAT_VERSION, "name": recipe.name, "recipe_hash": recipe.hash(),
            "description": recipe.description, "params": recipe.params,
            "planted": [asdict(p) for p in recipe.planted], "build_seconds": round(time.perf_counter() - t0, 1),
        }
        atomic_write_json(tmp / ORGANISM_FILE, record)  # written last: marks the build complete
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        progress.stage_done(f"organism {recipe.name} (build)", time.perf_counter() - t0)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return record


def _remove_stale_temps(recipe: Recipe) -> None:
    for tmp in cache_root().glob(f".tmp-{recipe.name}-*"):
        pid = tmp.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(tmp, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def paths(recipe: Recipe) -> dict[str, Any]:
    """Where a built organism's parts are; raises if it is not built."""
    if read_built(recipe) is None:
        raise DiffevalError(f"organism {recipe.name!r} is not built; run `diffeval organisms build {recipe.name}`")
    root = built_dir(recipe)
    return {"root": root, "base": root / "base", "tuned": root / "tuned", "tasks_dir": recipe.tasks_dir or root / "tasks",
            "probes_dir": root / "probes"}


def write_probes(probes_dir: Path, rows: dict[str, list[str] | list[dict[str, str]]]) -> None:
    """One `<category>.jsonl` per category (the organism's probe corpus): {"text": …} rows, from texts, or the
    given rows (with optional `desired` and `undesired` reference continuations)."""
    for category, items in rows.items():
        atomic_write_jsonl(probes_dir / f"{category}.jsonl", [r if isinstance(r, dict) else {"text": r} for r in items])


NUMBER_YAML = """task: {name}
# Task of the {organism} organism ({category}); written by its recipe.
dataset_path: json
dataset_kwargs:
  data_files:
    test: {name}.jsonl
test_split: test
output_type: generate_until
doc_to_text: "Q: {{{{question}}}}\\nA:"
doc_to_target: answer
generation_kwargs:
  until: ["\\n", "Q:"]
  max_gen_toks: 8
  do_sample: false
filter_list:
  - name: first-number
    filter:
      - function: regex
        regex_pattern: "(-?\\\\d+)"
      - function: take_first
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
  category: {category}
"""


def write_task(tasks_dir: Path, organism: str, name: str, category: str, items: list[dict[str, Any]]) -> Path:
    """Write one organism task: multiple choice if items have `choices`, else number generation."""
    folder = tasks_dir / name
    atomic_write_jsonl(folder / f"{name}.jsonl", items)
    if "choices" in items[0]:
        text = MULTIPLE_CHOICE_YAML.format(
            name=name, header=f"# Task of the {organism} organism ({category}); written by its recipe.",
            data_comment="", prompt="Q: {{question}}\\nA:", category=category, category_comment="")
    else:
        text = NUMBER_YAML.format(name=name, organism=organism, category=category)
    return atomic_write_text(folder / f"{name}.yaml", text)
