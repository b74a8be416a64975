"""`diffeval run`, `plan`, `bench` and `attribute`: the pipeline and its parts."""

from __future__ import annotations

import dataclasses
import textwrap
from pathlib import Path
from typing import Any

import click

from diffeval.harness import pipeline
from diffeval.harness.cli.common import build_config, field_option, user_errors
from diffeval.harness.cli.options import bench_options, later_stage_options, run_options
from diffeval.harness.core import files, models, progress
from diffeval.harness.core.config import BenchConfig, from_dict, load_config_file
from diffeval.harness.core.io import read_json
from diffeval.harness.core.presets import FIELDS as PRESET_FIELDS
from diffeval.harness.core.presets import apply_preset, auto_preset
from diffeval.harness.core.runconfig import RunConfig, n_latents_for
from diffeval.harness.core.rundir import RunDir, default_run_dir
from diffeval.harness.organisms import DEFAULT_ORGANISM, default_run_flags
from diffeval.harness.pipeline.plan import model_size
from diffeval.harness.pipeline.plan import plan as plan_text


@click.command()
@bench_options
@run_options
@user_errors
def run(out: str | None, config_file: str | None, dry_run: bool, **flags: Any) -> None:
    """Run the whole pipeline on two models (with none: on the default model organism)."""
    cfg = run_config(config_file, flags)
    names = (f"{cfg.organism}-base", f"{cfg.organism}-tuned") if cfg.organism else (cfg.base, cfg.tuned)
    run_dir = Path(out) if out else default_run_dir(*names, cfg=cfg)
    if dry_run:
        click.echo("\n".join([*progress.take_notes(), plan_text(cfg, run_dir)]))
        return
    pipeline.run(cfg, run_dir)
    _show_summary(run_dir)


def run_config(config_file: str | None, flags: dict[str, Any]) -> RunConfig:
    """The RunConfig of `run`/`plan`: the file, then the flags; with no models, the default organism's."""
    in_file = load_config_file(config_file) if config_file else {}
    progress.take_notes()  # a note left by an earlier command of this process (one that failed) is not ours
    if not any(flags.get(k) or in_file.get(k) for k in ("base", "tuned")):
        name = flags.get("organism") or in_file.get("organism")
        if name:
            click.echo(f"no --base/--tuned given: using the model organism '{name}'")
        else:
            name = DEFAULT_ORGANISM
            click.echo(f"no --base/--tuned given: using the default model organism '{name}'")
        flags.update(default_run_flags(name, flags))
    return build_config(RunConfig, config_file, **sized(flags, in_file))


def sized(flags: dict[str, Any], in_file: dict[str, Any]) -> dict[str, Any]:
    """`flags` with the preset's budget filled in where neither the flags nor the config file set it: the
    named --preset, or the one the pair's size and the device call for (presets.auto_preset). Says which."""
    given = {k: flags.get(k) if flags.get(k) is not None else in_file.get(k)
             for k in (*PRESET_FIELDS, "preset", "stream")}
    if given["preset"] is None and all(given[k] is not None for k in PRESET_FIELDS):
        return flags  # the whole budget is given (e.g. a run's own config.json): no preset to choose
    device = flags.get("device") or in_file.get("device") or "cpu"
    tuned = flags.get("tuned") or in_file.get("tuned")
    d_model, n_params = model_size(models.resolve_spec(tuned)) if tuned else (0, 0)
    name = given["preset"] or auto_preset(device, n_params)
    out = {**flags, **apply_preset(name, {k: given[k] for k in (*PRESET_FIELDS, "stream")}, d_model)}
    how = "--preset" if given["preset"] else (f"chosen for {n_params / 1e6:.1f} M parameters per model on {device}"
                                              if n_params else f"chosen on {device}; the model size is unknown")
    latents = n_latents_for(out["n_latents"], d_model) if d_model else "automatic"
    shown = {"tokens": f"{out['tokens']} tokens", "n_latents": f"{latents} latents", "k": f"k {out['k']}",
             "n_steps": f"{out['n_steps']} steps"}
    set_here = [shown[k] for k in PRESET_FIELDS if given[k] is None] + (
        ["streamed"] if given["stream"] is None and out["stream"] else [])
    progress.note(f"preset {name} ({how})" + (f": {', '.join(set_here)}" if set_here else ""))
    return out


@click.command()
@bench_options
@run_options
@user_errors
def plan(out: str | None, config_file: str | None, dry_run: bool, **flags: Any) -> None:
    """Print the stages `diffeval run` would run or reuse, with a disk, memory and time estimate."""
    ctx = click.get_current_context()
    ctx.invoke(run, out=out, config_file=config_file, dry_run=True, **flags)


@click.command()
@bench_options
@user_errors
def bench(out: str | None, config_file: str | None, **flags: Any) -> None:
    """Run benchmark tasks on both models and write paired deltas (bench/deltas.json)."""
    cfg = build_config(BenchConfig, config_file, **flags)
    run_dir = Path(out) if out else default_run_dir(cfg.base, cfg.tuned, cfg=cfg)
    pipeline.run_bench(cfg, run_dir)
    click.echo(pipeline.deltas_table(pipeline.load_deltas(run_dir)["tasks"], "simple"))
    click.echo(f"\nwrote {run_dir / files.DELTAS} and {Path(files.DELTAS_MD).name}")


@click.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@later_stage_options
@field_option(BenchConfig, "device", type=str)
@user_errors
def attribute(run_dir: str, **flags: Any) -> None:
    """Re-run the pipeline from the latents stage on RUN_DIR (categories, shifts, attribution), with the
    run's config.json and these options changed."""
    run = RunDir(run_dir)
    if not (run.path / files.CONFIG).exists():
        raise click.BadParameter(f"{run_dir} has no {files.CONFIG}; is it a diffeval run directory?",
                                 param_hint="RUN_DIR")
    cfg = from_dict(RunConfig, read_json(run.path / files.CONFIG), source=str(run.path / files.CONFIG))
    cfg = dataclasses.replace(cfg, **{k: v for k, v in flags.items() if v is not None})
    run.write_config(cfg)
    pipeline.run_from_latents(run, cfg)
    click.echo(f"wrote {run.path / files.ATTRIBUTION} and {run.path / files.REPORT_MD}")


def _show_summary(run_dir: Path) -> None:
    """The benchmark table, then the report's answer (its first lines, word for word), then where to read more."""
    click.echo(pipeline.deltas_table(pipeline.load_deltas(run_dir)["tasks"], "simple"))
    answer = read_json(run_dir / files.REPORT_JSON).get("answer") or {}
    click.echo("\nAnswer:")
    for line in answer.get("lines", []):
        click.echo(textwrap.fill(line, width=110, initial_indent="- ", subsequent_indent="  "))
    click.echo(f"\nreport: {run_dir / files.REPORT_MD}\n        {run_dir / files.REPORT_HTML}\nrun directory: {run_dir}")
