"""`diffeval tasks …`: list, show, validate and scaffold lm-eval task definitions."""

from __future__ import annotations

from pathlib import Path

import click
from tabulate import tabulate

from diffeval.harness.cli.common import UserError, field_option, user_errors
from diffeval.harness.core.config import BenchConfig
from diffeval.harness.core.errors import DiffevalError
from diffeval.harness.suite.authoring import new_task, validate_task
from diffeval.harness.suite.registry import read_task_yaml, resolve, scan

TASKS_DIR_OPTION = field_option(BenchConfig, "tasks_dir", multiple=True, type=click.Path(file_okay=False))


@click.group()
def tasks() -> None:
    """List, show, validate and scaffold task definitions."""


@tasks.command("list")
@TASKS_DIR_OPTION
@user_errors
def tasks_list(tasks_dir: tuple[str, ...]) -> None:
    """Every shipped (and --tasks-dir) task with its category."""

    rows = [[t.name, t.category, t.output_type, t.path] for t in sorted(scan(tasks_dir).values(), key=lambda t: t.name)]
    click.echo(tabulate(rows, headers=["task", "category", "type", "file"], tablefmt="simple"))
    click.echo("\nlm-eval's own tasks (ifeval, mmlu, gsm8k, …) work too; categories: tasks/categories.yaml")


@tasks.command("show")
@click.argument("name")
@TASKS_DIR_OPTION
@user_errors
def tasks_show(name: str, tasks_dir: tuple[str, ...]) -> None:
    """Print one task's category, file and YAML."""

    (task,) = resolve([name], tasks_dir)
    click.echo(f"task: {task.name}\ncategory: {task.category}")
    if task.path is None:
        click.echo("source: lm-eval's catalogue")
        return
    n_items = sum(len(p.read_text().splitlines()) for p in task.path.parent.glob("*.jsonl"))
    click.echo(f"file: {task.path}\nitems: {n_items}\n")
    click.echo(task.path.read_text())


@tasks.command("validate")
@click.argument("paths", nargs=-1, required=True, type=click.Path())
def tasks_validate(paths: tuple[str, ...]) -> None:
    """Load task YAML files through lm-eval and report problems in plain words."""

    def is_task(f: Path) -> bool:
        try:
            return "task" in read_task_yaml(f)
        except DiffevalError:
            return True  # unreadable YAML: let validate_task report why

    files = [f for p in map(Path, paths) for f in (sorted(filter(is_task, p.rglob("*.yaml"))) if p.is_dir() else [p])]
    if not files:
        raise UserError(f"no task YAML files under {', '.join(paths)}")
    bad = 0
    for f in files:
        problems = validate_task(f)
        bad += bool(problems)
        click.echo(f"ok   {f}" if not problems else "\n".join(f"FAIL {p}" for p in problems))
    if bad:
        raise UserError(f"{bad} of {len(files)} task file(s) have problems")


@tasks.command("new")
@click.argument("name")
@click.option("--dir", "directory", default="my_tasks", show_default=True, type=click.Path(file_okay=False),
              help="where to create the task folder")
@click.option("--category", default="unassigned", show_default=True, help="capability category of the task")
@user_errors
def tasks_new(name: str, directory: str, category: str) -> None:
    """Scaffold a multiple-choice task (YAML + data file) to fill in."""

    path = new_task(name, directory, category)
    click.echo(f"created {path}\nedit it and its .jsonl, then: diffeval tasks validate {path}\n"
               f"use it with: diffeval bench --tasks {name} --tasks-dir {directory} …")
