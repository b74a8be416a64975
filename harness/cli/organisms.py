"""`diffeval organisms …`: list, build, show, verify and score the model organisms."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from diffeval.harness.cli.common import UserError, field_option, user_errors
from diffeval.harness.core.config import BenchConfig
from diffeval.harness.core.rundir import default_run_dir
from diffeval.harness.organisms import DEFAULT_ORGANISM, RECIPES, build, built_dir, describe, get, read_built
from diffeval.harness.organisms.score import score_organism, score_suite, score_table, suite_table
from diffeval.harness.organisms.verify import checks_table, verify_pair


@click.group()
def organisms() -> None:
    """Model organisms: model pairs with planted capability changes."""


@organisms.command("list")
def organisms_list() -> None:
    """One organism per line (the default first): name, built or not, description."""

    for name in sorted(RECIPES, key=lambda n: n != DEFAULT_ORGANISM):
        state = "built" if read_built(RECIPES[name]) else "not built"
        default = " (default)" if name == DEFAULT_ORGANISM else ""
        click.echo(f"{name}\t{state}\t{RECIPES[name].description}{default}")


BUILD_SEED = click.option("--build-seed", type=int, default=None,
                          help="build a toy organism from this seed (its own world and training); default: its own seed")


@organisms.command("build")
@click.argument("name")
@click.option("--force", is_flag=True, help="rebuild even if a finished build is cached")
@BUILD_SEED
@user_errors
def organisms_build(name: str, force: bool, build_seed: int | None) -> None:
    """Build an organism's base and tuned models (cached; deterministic for its seed)."""

    recipe = get(name, build_seed)
    record = build(recipe, force=force)
    click.echo(f"{name}: built in {record['build_seconds']} s at {built_dir(recipe)}")


@organisms.command("show")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="print the declaration as JSON")
@BUILD_SEED
@user_errors
def organisms_show(name: str, as_json: bool, build_seed: int | None) -> None:
    """Where an organism's models are and which changes were planted (builds it if needed)."""

    info = describe(name, build_seed)
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

    info = describe(name)
    run_dir = Path(out) if out else default_run_dir("verify", name)
    checks = verify_pair(info["base"], info["tuned"], get(name).planted, info["tasks_dir"], run_dir)
    click.echo(checks_table(checks))
    failed = [c for c in checks if not c.passed]
    click.echo(f"\n{len(checks) - len(failed)}/{len(checks)} planted changes verified (run: {run_dir})")
    if failed:
        sys.exit(1)


@organisms.command("score")
@click.argument("name", required=False)
@click.option("--suite", is_flag=True, help="score every toy organism and placebo (scores.json, scores.md)")
@click.option("--seeds", type=int, default=3, show_default=True, help="crosscoder seeds to run the pipeline with")
@click.option("--build-seeds", type=int, default=1, show_default=True,
              help="with --suite: builds of each toy organism (seeds 0..M-1), so scores replicate over organisms")
@click.option("--slow", "include_slow", is_flag=True, help="with --suite: include the slow organisms (Gemma)")
@click.option("--only", help="with --suite: score only these organisms (comma-separated names), e.g. one organism "
              "and its placebo over --build-seeds builds")
@click.option("--causal", is_flag=True, help="also run the causal check (with its random control sets)")
@click.option("--out", type=click.Path(file_okay=False), help="directory (default runs/<time>-score-<name>)")
@field_option(BenchConfig, "device", type=str, fixed_default=True)
@user_errors
def organisms_score(name: str | None, suite: bool, seeds: int, build_seeds: int, include_slow: bool, only: str | None,
                    causal: bool, out: str | None, device: str) -> None:
    """Run the whole pipeline on an organism (or the suite) and score it against its planted changes."""

    if seeds < 1 or build_seeds < 1:
        raise UserError(f"--seeds and --build-seeds must be >= 1, got {seeds} and {build_seeds}")
    if suite == bool(name):
        raise UserError("give an organism NAME or --suite (not both)")
    if only and not suite:
        raise UserError("--only narrows --suite; to score one organism give its NAME")
    out_dir = Path(out) if out else default_run_dir("score", name or "suite")
    if suite:
        doc = score_suite(seeds, build_seeds, out_dir, causal=causal, include_slow=include_slow,
                          only=[n.strip() for n in only.split(",")] if only else None, device=device)
        click.echo(suite_table(doc))
        click.echo(f"\nwrote {out_dir / 'scores.json'} and {out_dir / 'scores.md'}")
        return
    doc = score_organism(name, seeds, out_dir, causal=causal, device=device)
    click.echo(score_table(doc))
    click.echo(f"\nwrote {out_dir / 'score.json'}")
