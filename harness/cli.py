"""The `diffeval` command line: parse, build a config, call one library function, say where output went.

Heavy imports (torch, transformers, lm-eval) happen inside command bodies so `--help` is instant.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from pathlib import Path
from typing import Any

import click

from harness import __version__
from harness.config import BenchConfig, field_help
from harness.errors import DiffevalError
from harness.runconfig import ARCHITECTURES, ATTRIBUTION_SHIFTS, CAUSAL_MODES, SPECIFIC_BY


class UserError(click.ClickException):
    """Printed as one line, `Error: …`, exit status 2 (a usage problem, never a traceback)."""

    exit_code = 2


def user_errors(fn: Any) -> Any:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except DiffevalError as e:
            raise UserError(str(e)) from None
        except KeyboardInterrupt:
            click.echo("interrupted: finished stages are kept; re-run the same command to resume", err=True)
            sys.exit(130)

    return wrapper


def _help(name: str) -> str:
    return field_help(BenchConfig, name)


def bench_options(fn: Any) -> Any:
    """Options shared by `bench` and `run`; help texts come from BenchConfig's field docs."""
    options = [
        click.option("--base", help=_help("base")),
        click.option("--tuned", help=_help("tuned")),
        click.option("--tasks", help=_help("tasks") + " (comma-separated)"),
        click.option("--tasks-dir", multiple=True, type=click.Path(file_okay=False), help=_help("tasks_dir")),
        click.option("--limit", type=int, help=_help("limit")),
        click.option("--num-fewshot", type=int, help=_help("num_fewshot")),
        click.option("--apply-chat-template", is_flag=True, default=None, help=_help("apply_chat_template")),
        click.option("--batch-size", type=int, help=_help("batch_size")),
        click.option("--max-gen-toks", type=int, help=_help("max_gen_toks")),
        click.option("--device", help=_help("device")),
        click.option("--dtype", help=_help("dtype")),
        click.option("--seed", type=int, help=_help("seed")),
        click.option("--scores", type=click.Path(), help=_help("scores")),
        click.option("--config", "config_file", type=click.Path(), help="YAML/JSON file of options; flags override it"),
        click.option("--out", type=click.Path(file_okay=False), help="run directory (default runs/<base>-vs-<tuned>-<config hash>, so the same command resumes it)"),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def build_bench_config(config_file: str | None, cls: type = BenchConfig, **flags: Any) -> Any:
    """`cls` from the config file (if any) with the given flags overriding it."""
    from harness.config import from_dict, load_config_file

    data: dict[str, Any] = load_config_file(config_file) if config_file else {}
    for key, value in flags.items():
        if value is None or value == ():
            continue
        data[key] = [t.strip() for t in value.split(",") if t.strip()] if key == "tasks" else value
    return from_dict(cls, data, source=config_file or "options")


def _run_help(name: str) -> str:
    from harness.runconfig import RunConfig

    return field_help(RunConfig, name)


def run_options(fn: Any) -> Any:
    """The options `run` adds to the bench options (help from RunConfig's field docs)."""
    options = [
        click.option("--layer", type=float, help=_run_help("layer")),
        click.option("--tokens", type=int, help=_run_help("tokens")),
        click.option("--corpus", multiple=True, type=click.Path(), help=_run_help("corpus") + "; repeatable"),
        click.option("--n-latents", type=int, help=_run_help("n_latents")),
        click.option("--k", type=int, help=_run_help("k")),
        click.option("--architecture", type=click.Choice(ARCHITECTURES), help=_run_help("architecture")),
        click.option("--n-steps", type=int, help=_run_help("n_steps")),
        click.option("--categories", type=click.Path(), help=_run_help("categories")),
        click.option("--probes-dir", type=click.Path(file_okay=False), help=_run_help("probes_dir")),
        click.option("--probe-responses", type=int, help=_run_help("probe_responses")),
        click.option("--corpus-responses/--no-corpus-responses", default=None, help=_run_help("corpus_responses")),
        click.option("--alpha", type=float, help=_run_help("alpha")),
        click.option("--specific-by", type=click.Choice(SPECIFIC_BY), help=_run_help("specific_by")),
        click.option("--attribution-shift", type=click.Choice(ATTRIBUTION_SHIFTS), help=_run_help("attribution_shift")),
        click.option("--reference", help=_run_help("reference")),
        click.option("--causal", is_flag=True, default=None, help=_run_help("causal")),
        click.option("--causal-mode", type=click.Choice(CAUSAL_MODES), help=_run_help("causal_mode")),
        click.option("--bench-seed", type=int, help=_run_help("bench_seed")),
        click.option("--dry-run", is_flag=True, help="print the stages to run or reuse and the estimated cost, then stop"),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="diffeval")
@click.option("-v", "--verbose", count=True, help="log progress (-v) or everything (-vv)")
def cli(verbose: int) -> None:
    """diffeval: why does a fine-tuned model score differently from its base?"""
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    if verbose < 2:
        # per-task "Generating split" bars drown the output; lm-eval's own request bars stay
        os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
        for noisy in ("lm_eval", "transformers", "datasets", "httpx", "filelock"):
            logging.getLogger(noisy).setLevel(max(level, logging.WARNING))
        if verbose == 0:  # lm-eval warns about every model passed as an object; that is how we call it
            logging.getLogger("lm_eval").setLevel(logging.ERROR)


@cli.command()
@bench_options
@user_errors
def bench(out: str | None, config_file: str | None, **flags: Any) -> None:
    """Run benchmark tasks on both models and write paired deltas (bench/deltas.json)."""
    from harness.bench import run_bench

    run_dir = _run_and_show(run_bench, config_file, out, flags)
    click.echo(f"\nwrote {run_dir / 'bench' / 'deltas.json'} and deltas.md")


def _run_and_show(stage: Any, config_file: str | None, out: str | None, flags: dict[str, Any]) -> Path:
    """Build the config, run `stage(cfg, run_dir)`, print the deltas table; returns the run directory."""
    from harness.bench import deltas_table, load_deltas
    from harness.rundir import default_run_dir

    cfg = build_bench_config(config_file, **flags)
    run_dir = Path(out) if out else default_run_dir(cfg.base, cfg.tuned, cfg=cfg)
    stage(cfg, run_dir)
    click.echo(deltas_table(load_deltas(run_dir)["tasks"], "simple"))
    return run_dir


@cli.command()
@bench_options
@run_options
@user_errors
def run(out: str | None, config_file: str | None, dry_run: bool, **flags: Any) -> None:
    """Run the whole pipeline on two models (with none: on the default model organism)."""
    from harness.config import load_config_file
    from harness.pipeline import run_pipeline
    from harness.runconfig import RunConfig
    from harness.rundir import default_run_dir

    in_file = load_config_file(config_file) if config_file else {}
    if not any(flags.get(k) or in_file.get(k) for k in ("base", "tuned")):
        from harness.organisms import DEFAULT_ORGANISM, default_run_flags

        click.echo(f"no --base/--tuned given: using the default model organism '{DEFAULT_ORGANISM}'")
        flags.update(default_run_flags(DEFAULT_ORGANISM, flags))
    cfg = build_bench_config(config_file, RunConfig, **flags)
    names = (f"{cfg.organism}-base", f"{cfg.organism}-tuned") if cfg.organism else (cfg.base, cfg.tuned)
    run_dir = Path(out) if out else default_run_dir(*names, cfg=cfg)
    if dry_run:
        from harness.plan import plan

        click.echo(plan(cfg, run_dir))
        return
    run_pipeline(cfg, run_dir)
    _show_summary(run_dir)


def _show_summary(run_dir: Path) -> None:
    from harness.bench import deltas_table, load_deltas

    click.echo(deltas_table(load_deltas(run_dir)["tasks"], "simple"))
    click.echo(f"\nreport: {run_dir / 'report.md'}\nrun directory: {run_dir}")


@cli.group()
def tasks() -> None:
    """List, show, validate and scaffold task definitions."""


@tasks.command("list")
@click.option("--tasks-dir", multiple=True, type=click.Path(file_okay=False), help=_help("tasks_dir"))
@user_errors
def tasks_list(tasks_dir: tuple[str, ...]) -> None:
    """Every shipped (and --tasks-dir) task with its category."""
    from tabulate import tabulate

    from harness.taskreg import scan

    rows = [[t.name, t.category, t.output_type, t.path] for t in sorted(scan(tasks_dir).values(), key=lambda t: t.name)]
    click.echo(tabulate(rows, headers=["task", "category", "type", "file"], tablefmt="simple"))
    click.echo("\nlm-eval's own tasks (ifeval, mmlu, gsm8k, …) work too; categories: tasks/categories.yaml")


@tasks.command("show")
@click.argument("name")
@click.option("--tasks-dir", multiple=True, type=click.Path(file_okay=False), help=_help("tasks_dir"))
@user_errors
def tasks_show(name: str, tasks_dir: tuple[str, ...]) -> None:
    """Print one task's category, file and YAML."""
    from harness.taskreg import resolve

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
    from harness.taskdev import validate_task
    from harness.taskreg import read_task_yaml

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
    from harness.taskdev import new_task

    path = new_task(name, directory, category)
    click.echo(f"created {path}\nedit it and its .jsonl, then: diffeval tasks validate {path}\n"
               f"use it with: diffeval bench --tasks {name} --tasks-dir {directory} …")


@cli.group()
def organisms() -> None:
    """Model organisms: model pairs with planted capability changes."""


@organisms.command("list")
def organisms_list() -> None:
    """One organism per line (the default first): name, built or not, description."""
    from harness.organisms import DEFAULT_ORGANISM, RECIPES, read_built

    for name in sorted(RECIPES, key=lambda n: n != DEFAULT_ORGANISM):
        state = "built" if read_built(RECIPES[name]) else "not built"
        default = " (default)" if name == DEFAULT_ORGANISM else ""
        click.echo(f"{name}\t{state}\t{RECIPES[name].description}{default}")


@organisms.command("build")
@click.argument("name")
@click.option("--force", is_flag=True, help="rebuild even if a finished build is cached")
@user_errors
def organisms_build(name: str, force: bool) -> None:
    """Build an organism's base and tuned models (cached; deterministic for its seed)."""
    from harness.organisms import build, built_dir, get

    record = build(get(name), force=force)
    click.echo(f"{name}: built in {record['build_seconds']} s at {built_dir(get(name))}")


@organisms.command("show")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="print the declaration as JSON")
@user_errors
def organisms_show(name: str, as_json: bool) -> None:
    """Where an organism's models are and which changes were planted (builds it if needed)."""
    import json

    from harness.organisms import describe

    info = describe(name)
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    click.echo(f"{info['name']}: {info['description']}\nbase:  {info['base']}\ntuned: {info['tuned']}\nplanted:")
    for p in info["planted"]:
        click.echo(f"  {p['direction']} {p['category']:<26} measured by {', '.join(p['tasks'])}")


@organisms.command("verify")
@click.argument("name")
@click.option("--out", type=click.Path(file_okay=False), help="run directory (default runs/<time>-verify-<name>)")
@user_errors
def organisms_verify(name: str, out: str | None) -> None:
    """Run the organism's tasks on both models; exit 0 only if every planted change shows."""
    from harness.organisms import describe, get
    from harness.organisms.verify import checks_table, verify_pair
    from harness.rundir import default_run_dir

    info = describe(name)
    run_dir = Path(out) if out else default_run_dir("verify", name)
    checks = verify_pair(info["base"], info["tuned"], get(name).planted, info["tasks_dir"], run_dir)
    click.echo(checks_table(checks))
    failed = [c for c in checks if not c.passed]
    click.echo(f"\n{len(checks) - len(failed)}/{len(checks)} planted changes verified (run: {run_dir})")
    if failed:
        sys.exit(1)


@organisms.command("score")
@click.argument("name")
@click.option("--seeds", type=int, default=3, show_default=True, help="crosscoder seeds to run the pipeline with")
@click.option("--causal", is_flag=True, help="also run the causal ablation check")
@click.option("--out", type=click.Path(file_okay=False), help="directory (default runs/<time>-score-<name>)")
@click.option("--device", default="cpu", show_default=True, help=_help("device"))
@user_errors
def organisms_score(name: str, seeds: int, causal: bool, out: str | None, device: str) -> None:
    """Run the whole pipeline on an organism and score it against its planted changes."""
    from harness.organisms.score import score_organism, score_table
    from harness.rundir import default_run_dir

    if seeds < 1:
        raise UserError(f"--seeds must be >= 1, got {seeds}")
    out_dir = Path(out) if out else default_run_dir("score", name)
    doc = score_organism(name, seeds, out_dir, causal=causal, device=device)
    click.echo(score_table(doc))
    click.echo(f"\nwrote {out_dir / 'score.json'}")


@cli.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--categories", type=click.Path(), help=_run_help("categories"))
@click.option("--probe-responses", type=int, help=_run_help("probe_responses"))
@click.option("--specific-by", type=click.Choice(SPECIFIC_BY), help=_run_help("specific_by"))
@click.option("--attribution-shift", type=click.Choice(ATTRIBUTION_SHIFTS), help=_run_help("attribution_shift"))
@click.option("--causal", is_flag=True, default=None, help=_run_help("causal"))
@click.option("--causal-mode", type=click.Choice(CAUSAL_MODES), help=_run_help("causal_mode"))
@click.option("--device", help=_help("device"))
@user_errors
def attribute(run_dir: str, **flags: Any) -> None:
    """(Re)compute latent categories, category shifts and the attribution of RUN_DIR → attribution.json."""
    import dataclasses

    from harness import stages
    from harness.config import from_dict
    from harness.io import read_json
    from harness.runconfig import RunConfig
    from harness.rundir import RunDir

    run = RunDir(run_dir)
    if not (run.path / "config.json").exists():
        raise UserError(f"{run_dir} has no config.json; is it a diffeval run directory?")
    cfg = from_dict(RunConfig, read_json(run.path / "config.json"), source=str(run.path / "config.json"))
    cfg = dataclasses.replace(cfg, **{k: v for k, v in flags.items() if v is not None})
    run.write_config(cfg)
    stages.stage_latents(run, cfg)
    path = stages.stage_attribution(run, cfg)
    if cfg.causal:
        stages.stage_causal(run, cfg)
    stages.stage_report(run)
    click.echo(f"wrote {path} and {run.path / 'report.md'}")


@cli.command()
@bench_options
@run_options
@user_errors
def plan(out: str | None, config_file: str | None, dry_run: bool, **flags: Any) -> None:
    """Print the stages `diffeval run` would run or reuse, with a disk, memory and time estimate."""
    ctx = click.get_current_context()
    ctx.invoke(run, out=out, config_file=config_file, dry_run=True, **flags)


@cli.group()
def activations() -> None:
    """Collect paired activations from both models at one layer."""


@activations.command("collect")
@click.option("--base", required=True, help="base model spec")
@click.option("--tuned", required=True, help="tuned model spec")
@click.option("--layer", type=float, default=0.5, show_default=True, help="block index or fraction of depth")
@click.option("--corpus", multiple=True, type=click.Path(), help="text file (.txt lines or .jsonl 'text'); repeatable")
@click.option("--tasks", default="", help="benchmark tasks whose prompts join the corpus (comma-separated)")
@click.option("--tasks-dir", multiple=True, type=click.Path(file_okay=False), help="extra task directories")
@click.option("--tokens", type=int, default=100_000, show_default=True, help="activation rows to collect")
@click.option("--seq-len", type=int, default=128, show_default=True, help="longest sequence in tokens")
@click.option("--device", default="cpu", show_default=True, help="torch device")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="activation directory")
@user_errors
def activations_collect(tasks: str, **kw: Any) -> None:
    """Write memory-mapped activation shards + manifest.json (resumes an interrupted run)."""
    from harness.activations import ActivationsConfig, collect_activations

    task_list = tuple(t.strip() for t in tasks.split(",") if t.strip())
    out = kw.pop("out")
    cfg = ActivationsConfig(tasks=task_list, **{k: tuple(v) if isinstance(v, tuple) else v for k, v in kw.items()})
    click.echo(f"wrote {collect_activations(cfg, out)}")


@cli.group()
def crosscoder() -> None:
    """Train crosscoders and compute latent statistics."""


@crosscoder.command("train")
@click.argument("acts", type=click.Path(exists=True, file_okay=False))
@click.option("--out", required=True, type=click.Path(file_okay=False), help="output directory")
@click.option("--n-latents", type=int, default=4096, show_default=True, help="dictionary size")
@click.option("--k", type=int, default=32, show_default=True, help="active latents per row (BatchTopK)")
@click.option("--architecture", type=click.Choice(ARCHITECTURES), default="batchtopk", show_default=True)
@click.option("--steps", type=int, default=2000, show_default=True, help="training steps")
@click.option("--batch-size", type=int, default=1024, show_default=True, help="rows per step")
@click.option("--lr", type=float, default=1e-3, show_default=True, help="Adam learning rate")
@click.option("--checkpoint-every", type=int, default=500, show_default=True, help="checkpoint interval (steps)")
@click.option("--device", default="cpu", show_default=True, help="torch device")
@user_errors
def crosscoder_train(acts: str, out: str, steps: int, **kw: Any) -> None:
    """Train on an activation directory; writes crosscoder.safetensors, cfg.json, metrics.jsonl."""
    from crosscoders import CrossCoderConfig, train_crosscoder
    from crosscoders.data import ActivationDirError, config_d_models, read_manifest

    try:
        manifest = read_manifest(Path(acts))
        cfg = CrossCoderConfig(d_model=manifest["d_model"], n_models=manifest["n_models"],
                               d_models=config_d_models(manifest), n_steps=steps, **kw)
        train_crosscoder(cfg, acts, out=out)
    except (ActivationDirError, ValueError, FloatingPointError) as e:
        raise UserError(str(e)) from None
    click.echo(f"wrote {Path(out) / 'crosscoder.safetensors'} (metrics: {Path(out) / 'metrics.jsonl'})")


@crosscoder.command("stats")
@click.argument("crosscoder_dir", type=click.Path(exists=True, file_okay=False))
@click.argument("acts", type=click.Path(exists=True, file_okay=False))
@click.option("--out", type=click.Path(dir_okay=False), help="latents.jsonl path (default: beside the crosscoder)")
@user_errors
def crosscoder_stats(crosscoder_dir: str, acts: str, out: str | None) -> None:
    """Δnorm, cosine, ν_ε, ν_r, frequency, class and top contexts per latent → latents.jsonl."""
    from crosscoders import CrossCoderBase
    from crosscoders.data import ActivationDirError
    from harness.latents import write_latents

    try:
        model = CrossCoderBase.load(crosscoder_dir)
        path = write_latents(model, acts, Path(out) if out else Path(crosscoder_dir) / "latents.jsonl")
    except (ActivationDirError, ValueError) as e:
        raise UserError(str(e)) from None
    click.echo(f"wrote {path}")


@cli.command("report")
@click.argument("run_dir", type=click.Path(file_okay=False))
@user_errors
def report(run_dir: str) -> None:
    """Re-render report.md, report.json and figures/ of RUN_DIR (no model, no GPU)."""
    from reports.render import report_main

    paths = report_main(run_dir)
    click.echo(f"wrote {paths[0]} ({len(paths) - 2} figures, report.json validated)")


def _add_leaderboard() -> None:
    from leaderboards.cli import leaderboard

    cli.add_command(leaderboard)


_add_leaderboard()


def main() -> None:
    cli(prog_name="diffeval")


if __name__ == "__main__":
    main()
