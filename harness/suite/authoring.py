"""Helping users write tasks: validate a YAML through lm-eval, scaffold a new one."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from diffeval.harness.core.errors import TaskError
from diffeval.harness.suite.registry import categories, read_task_yaml, working_dir
from diffeval.tasks import MULTIPLE_CHOICE_YAML

_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


def validate_task(path: str | Path) -> list[str]:
    """Problems with one task YAML, in plain words; an empty list means it loads and renders."""
    path = Path(path)
    if not path.is_file():
        return [f"{path}: file does not exist"]
    try:
        cfg = read_task_yaml(path)
    except TaskError as e:
        return [str(e)]
    if not isinstance(cfg.get("task"), str):
        return [f"{path}: no `task:` name (a task YAML needs `task: my_task_name`)"]
    problems = _check_data_files(path, cfg) + _check_category(cfg) + _check_metrics(path, cfg)
    if problems:
        return problems
    return _check_with_lm_eval(path, cfg)


def _check_data_files(path: Path, cfg: dict[str, Any]) -> list[str]:
    files = (cfg.get("dataset_kwargs") or {}).get("data_files")
    if files is None:
        return []
    listed = files.values() if isinstance(files, dict) else files if isinstance(files, list) else [files]
    flat = [f for item in listed for f in (item if isinstance(item, list) else [item])]
    return [
        f"{path}: data file {f!r} not found (looked in {path.parent}); data_files are relative to the YAML"
        for f in flat if not (path.parent / f).exists()
    ]


def _check_category(cfg: dict[str, Any]) -> list[str]:
    meta = cfg.get("metadata") or {}
    cat = meta.get("category") if isinstance(meta, dict) else None
    if cat is not None and cat not in categories():
        return [f"task {cfg['task']}: unknown category {cat!r}; valid: {', '.join(categories())}"]
    return []


def _check_metrics(path: Path, cfg: dict[str, Any]) -> list[str]:
    """Metrics must be lm-eval's own unless process_results computes them."""
    if "process_results" in cfg:
        return []
    from lm_eval.api.registry import get_metric

    problems = []
    for m in cfg.get("metric_list") or []:
        name = m.get("metric") if isinstance(m, dict) else None
        if isinstance(name, str) and get_metric(name) is None:
            problems.append(f"{path}: unknown metric {name!r} (not in lm-eval's registry; "
                            "use e.g. acc, acc_norm, exact_match, or compute it in process_results)")
    return problems


def _check_with_lm_eval(path: Path, cfg: dict[str, Any]) -> list[str]:
    from lm_eval.tasks import TaskManager

    try:
        with working_dir(path.parent):
            task = TaskManager(include_defaults=False, include_path=str(path.parent)).load([str(path)])["tasks"][cfg["task"]]
    except Exception as e:  # lm-eval raises anything from KeyError to jinja errors; report its words
        return [f"{path}: lm-eval cannot load the task: {type(e).__name__}: {e}"]
    problems = []
    docs = list(task.eval_docs)
    if not docs:
        return [f"{path}: the evaluation split is empty"]
    for field in ("doc_to_text", "doc_to_target") + (("doc_to_choice",) if task.OUTPUT_TYPE == "multiple_choice" else ()):
        try:
            getattr(task, field)(docs[0])
        except Exception as e:
            problems.append(f"{path}: template `{field}` fails on the first document: {type(e).__name__}: {e}")
    return problems


SCAFFOLD_HEADER = """# {name}: describe what this task measures, then fill {name}.jsonl with one item per line.
# Multiple choice: each item has question, choices (list), answer (index of the right choice).
# For a generation task, set output_type: generate_until and see tasks/diffeval_math for an example."""

EXAMPLE_ITEMS = [
    {"question": "Replace me: what colour is a clear daytime sky?", "choices": ["blue", "green", "red", "black"], "answer": 0},
    {"question": "Replace me: how many legs does a spider have?", "choices": ["six", "eight", "ten", "four"], "answer": 1},
]


def new_task(name: str, directory: str | Path, category: str = "unassigned") -> Path:
    """Scaffold `directory/name/name.yaml` and a two-item data file; returns the YAML path."""
    if not _NAME.match(name):
        raise TaskError(f"task name {name!r} is not valid: use lower-case letters, digits and _, starting with a letter")
    if category not in categories():
        raise TaskError(f"unknown category {category!r}; valid: {', '.join(categories())}")
    folder = Path(directory) / name
    if folder.exists():
        raise TaskError(f"{folder} already exists; pick another name or directory")
    folder.mkdir(parents=True)
    yaml_path = folder / f"{name}.yaml"
    yaml_path.write_text(MULTIPLE_CHOICE_YAML.format(
        name=name, header=SCAFFOLD_HEADER.format(name=name), data_comment="  # relative to this file",
        prompt="Question: {{question}}\\nAnswer:", category=category,
        category_comment=f"  # one of: {', '.join(categories())}"))
    (folder / f"{name}.jsonl").write_text("".join(json.dumps(i) + "\n" for i in EXAMPLE_ITEMS))
    return yaml_path
