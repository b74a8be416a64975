"""Task registry: find task YAMLs, their categories, and load them for lm-eval.

Shipped tasks and `--tasks-dir` tasks are lm-eval YAML files. Their `data_files` may be relative
to the YAML file, so each is loaded with the YAML's directory as the working directory — the same
thing plain `lm_eval` does when run from that directory. Names that are not local are looked up
in lm-eval's own catalogue (slower: lm-eval scans its ~15k YAMLs).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import logging
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from diffeval.harness.core.errors import TaskError, did_you_mean
from diffeval.tasks import CATEGORIES_FILE, TASKS_DIR

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TaskDef:
    """A task known to diffeval. `path` is None for tasks from lm-eval's own catalogue."""

    name: str
    category: str
    path: Path | None
    output_type: str = "unknown"

    def files_hash(self) -> str:
        """Hash of every file beside the YAML (config, data, scoring), for the stage cache."""
        if self.path is None:
            return "lm_eval-" + importlib.metadata.version("lm_eval")
        h = hashlib.sha256()
        for f in sorted(self.path.parent.rglob("*")):
            if f.is_file() and "__pycache__" not in f.parts:
                h.update(f.name.encode())
                h.update(f.read_bytes())
        return h.hexdigest()[:16]


class _LenientLoader(yaml.SafeLoader):
    """Reads lm-eval YAML without executing `!function` tags (kept as their text)."""


_LenientLoader.add_constructor("!function", lambda loader, node: f"!function {loader.construct_scalar(node)}")


def read_task_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_LenientLoader)
    except yaml.YAMLError as e:
        raise TaskError(f"{path} is not valid YAML: {e}".replace("\n", " ")) from None
    return data if isinstance(data, dict) else {}


@lru_cache(maxsize=1)
def taxonomy() -> dict[str, Any]:
    return yaml.safe_load(CATEGORIES_FILE.read_text(encoding="utf-8"))


def categories() -> list[str]:
    return list(taxonomy()["categories"])


def lm_eval_category(name: str) -> str:
    """Category of a task from lm-eval's catalogue: the longest matching name prefix, else unassigned."""
    table = taxonomy()["lm_eval_tasks"]
    best = max((k for k in table if name == k or name.startswith(k + "_")), key=len, default=None)
    return table[best] if best else "unassigned"


def scan(dirs: Iterable[str | Path] = ()) -> dict[str, TaskDef]:
    """Every task YAML under the shipped folder and `dirs` (later dirs override earlier ones)."""
    found: dict[str, TaskDef] = {}
    for root in [TASKS_DIR, *map(Path, dirs)]:
        if not root.is_dir():
            raise TaskError(f"task directory {root} does not exist")
        for path in sorted(root.rglob("*.yaml")):
            cfg = read_task_yaml(path)
            name = cfg.get("task")
            if not isinstance(name, str):
                continue  # groups, includes-only files, the taxonomy itself
            meta = cfg.get("metadata") or {}
            category = meta.get("category") if isinstance(meta, dict) else None
            found[name] = TaskDef(name, category or lm_eval_category(name), path.resolve(),
                                  cfg.get("output_type", "unknown"))
    return found


def shipped_suite() -> list[str]:
    return sorted(t.name for t in scan().values() if t.path and TASKS_DIR in t.path.parents)


@lru_cache(maxsize=1)
def lm_eval_catalogue() -> frozenset[str]:
    from lm_eval.tasks import TaskManager

    log.info("scanning lm-eval's task catalogue")
    return frozenset(TaskManager().all_tasks)


def resolve(names: Iterable[str], dirs: Iterable[str | Path] = ()) -> list[TaskDef]:
    """TaskDefs for `names`; an unknown name raises with the closest matches."""
    local = scan(dirs)
    out = []
    for name in names:
        if name in local:
            out.append(local[name])
        elif name in lm_eval_catalogue():
            out.append(TaskDef(name, lm_eval_category(name), None))
        else:
            shipped = ", ".join(sorted(local))
            raise TaskError(f"unknown task {name!r}{did_you_mean(name, [*local, *lm_eval_catalogue()], n=3)} "
                            f"(shipped: {shipped}; `diffeval tasks list` shows all; add your own with --tasks-dir)")
    return out


@contextmanager
def working_dir(path: Path) -> Iterator[None]:
    old = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


def load_tasks(defs: list[TaskDef]) -> dict[str, Any]:
    """lm-eval Task objects for `defs` (fresh objects: lm-eval mutates tasks while evaluating)."""
    from lm_eval.tasks import TaskManager

    out: dict[str, Any] = {}
    local = [d for d in defs if d.path is not None]
    if local:
        tm = TaskManager(include_defaults=False, include_path=sorted({str(d.path.parent) for d in local}))
        for d in local:
            with working_dir(d.path.parent):
                out.update(tm.load([str(d.path)])["tasks"])
    remote = [d.name for d in defs if d.path is None]
    if remote:
        out.update(TaskManager().load(remote)["tasks"])
    return out
