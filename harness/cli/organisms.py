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
from diffeval.harness.organisms.score import score_organism, score_table
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


@organisms.command("build")
@click.argument("name")
@click.option("--force", is_flag=True, help="rebuild even if a finished build is cached")
@user_errors
def organisms_build(name: str, force: bool) -> None:
    """Build an organism's base and tuned models (cached; deterministic for its seed)."""

    record = build(get(name), force=force)
    click.echo(f"{name}: built in {record['build_seconds']} s at {built_dir(get(name))}")


@organisms.command("show")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="print the declaration as JSON")
@user_errors
def organisms_show(name: str, as_json: bool) -> None:
    """Where an organism's models are and which changes were planted (builds it if needed)."""

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
@field_option(BenchConfig, "device", type=str, fixed_default=True)
@user_errors
def organisms_score(name: str, seeds: int, causal: bool, out: str | None, device: str) -> None:
    """Run the whole pipeline on an organism and score it against its planted changes."""

    if seeds < 1:
        raise UserError(f"--seeds must be >= 1, got {seeds}")
    out_dir = Path(out) if out else default_run_dir("score", name)
    doc = score_organism(name, seeds, out_dir, causal=causal, device=device)
    click.echo(score_table(doc))
    click.echo(f"\nwrote {out_dir / 'score.json'}")
