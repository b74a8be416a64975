"""`diffeval activations collect` and `diffeval crosscoder train|stats|import|export`: the caches, outside a run.

Their options and defaults come from ActivationsConfig and CrossCoderConfig, the same dataclasses `run` fills.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import click

from diffeval import crosscoders
from diffeval.crosscoders.config import ARCHITECTURES, CrossCoderConfig
from diffeval.crosscoders.data import ActivationDirError, crosscoder_config, read_manifest
from diffeval.crosscoders.files import write_json_atomic
from diffeval.crosscoders.interop import FORMATS, from_dictionary_learning, save_dictionary_learning
from diffeval.harness.cli.common import UserError, apply, field_option, user_errors
from diffeval.harness.core import files
from diffeval.harness.core.config import ActivationsConfig
from diffeval.harness.core.runconfig import RunConfig, n_latents_for
from diffeval.harness.pipeline import collect_activations, write_latents

DIR = click.Path(file_okay=False)


@click.group()
def activations() -> None:
    """Collect paired activations from both models at one layer."""


@activations.command("collect")
@apply([
    field_option(ActivationsConfig, "base", type=str, required=True),
    field_option(ActivationsConfig, "tuned", type=str, required=True),
    field_option(ActivationsConfig, "layer", fixed_default=True),
    field_option(ActivationsConfig, "corpus", multiple=True, type=click.Path()),
    field_option(ActivationsConfig, "tasks", type=str),
    field_option(ActivationsConfig, "tasks_dir", multiple=True, type=DIR),
    field_option(ActivationsConfig, "tokens", fixed_default=True),
    field_option(ActivationsConfig, "seq_len", fixed_default=True),
    field_option(ActivationsConfig, "batch_size", fixed_default=True),
    field_option(ActivationsConfig, "device", type=str, fixed_default=True),
    field_option(ActivationsConfig, "dtype", type=str, fixed_default=True),
    click.option("--out", required=True, type=DIR, help="activation directory"),
])
@user_errors
def activations_collect(tasks: str | None, out: str, **kw: Any) -> None:
    """Write memory-mapped activation shards + manifest.json (resumes an interrupted run)."""
    task_list = tuple(t.strip() for t in (tasks or "").split(",") if t.strip())
    cfg = ActivationsConfig(tasks=task_list, **{k: v for k, v in kw.items() if v is not None})
    click.echo(f"wrote {collect_activations(cfg, out)}")


@click.group()
def crosscoder() -> None:
    """Train crosscoders and compute latent statistics."""


@crosscoder.command("train")
@click.argument("acts", type=click.Path(exists=True, file_okay=False))
@apply([
    click.option("--out", required=True, type=DIR, help="output directory"),
    field_option(RunConfig, "n_latents", fixed_default=True),
    field_option(CrossCoderConfig, "k", fixed_default=True),
    field_option(CrossCoderConfig, "architecture", type=click.Choice(ARCHITECTURES), fixed_default=True),
    field_option(CrossCoderConfig, "n_steps", fixed_default=True),
    field_option(CrossCoderConfig, "batch_size", fixed_default=True),
    field_option(CrossCoderConfig, "lr", fixed_default=True),
    field_option(CrossCoderConfig, "checkpoint_every", fixed_default=True),
    field_option(CrossCoderConfig, "seed", fixed_default=True),
    field_option(CrossCoderConfig, "device", type=str, fixed_default=True),
])
@user_errors
def crosscoder_train(acts: str, out: str, n_latents: int, **kw: Any) -> None:
    """Train on an activation directory; writes crosscoder.safetensors, cfg.json, metrics.jsonl."""
    try:
        manifest = read_manifest(Path(acts))
        cfg = crosscoder_config(manifest, n_latents=n_latents_for(n_latents, manifest["d_model"]), **kw)
        crosscoders.train_crosscoder(cfg, acts, out=out)
    except (ActivationDirError, ValueError, FloatingPointError) as e:
        raise UserError(str(e)) from None
    click.echo(f"wrote {Path(out) / files.CROSSCODER_WEIGHTS} (metrics: {Path(out) / files.CROSSCODER_METRICS})")


@crosscoder.command("stats")
@click.argument("crosscoder_dir", type=click.Path(exists=True, file_okay=False))
@click.argument("acts", type=click.Path(exists=True, file_okay=False))
@click.option("--out", type=click.Path(dir_okay=False), help="latents.jsonl path (default: beside the crosscoder)")
@user_errors
def crosscoder_stats(crosscoder_dir: str, acts: str, out: str | None) -> None:
    """Δnorm, cosine, ν_ε, ν_r, frequency, class and top contexts per latent → latents.jsonl."""
    try:
        model = crosscoders.load_crosscoder(crosscoder_dir)
        path = write_latents(model, acts, Path(out) if out else Path(crosscoder_dir) / files.LATENTS)
    except (ActivationDirError, ValueError) as e:
        raise UserError(str(e)) from None
    click.echo(f"wrote {path}")


@crosscoder.command("import")
@click.argument("source")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default=FORMATS[0], show_default=True,
              help="the source's layout")
@click.option("--out", required=True, type=DIR, help="new diffeval crosscoder folder (for `diffeval run --crosscoder`)")
@user_errors
def crosscoder_import(source: str, fmt: str, out: str) -> None:
    """Convert a trained crosscoder (a .pt state dict, a .safetensors file, a folder of model.safetensors +
    config.json, or a hub repository id) to diffeval's format."""
    dest = Path(out)
    if dest.exists() and any(dest.iterdir()):
        raise UserError(f"--out {dest} is not empty: choose a new folder")
    try:
        model = from_dictionary_learning(source)
    except ValueError as e:
        raise UserError(str(e)) from None
    tmp = dest.with_name(f".{dest.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save(tmp)
    write_json_atomic(tmp / "source.json", {"source": source, "format": fmt})
    if dest.exists():
        dest.rmdir()
    tmp.replace(dest)
    c = model.cfg
    click.echo(f"wrote {dest}: {c.n_models} models, d_model {c.d_model}, {c.n_latents} latents, k {c.k}, "
               f"threshold {float(model.threshold):.4g}")


@crosscoder.command("export")
@click.argument("crosscoder_dir", type=click.Path(exists=True))
@click.option("--format", "fmt", type=click.Choice(FORMATS), default=FORMATS[0], show_default=True,
              help="the layout to write")
@click.option("--out", required=True, type=click.Path(),
              help="a .pt file (the state dict) or a folder (model.safetensors + config.json, the hub layout)")
@user_errors
def crosscoder_export(crosscoder_dir: str, fmt: str, out: str) -> None:
    """Write a diffeval crosscoder (a run's crosscoder/ folder) in dictionary_learning's layout."""
    try:
        model = crosscoders.load_crosscoder(crosscoder_dir)
        click.echo(f"wrote {save_dictionary_learning(model, out)}")
    except ValueError as e:
        raise UserError(str(e)) from None
