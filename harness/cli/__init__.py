"""The `diffeval` command line: parse, build a config, call one library function, say where output went.

Command groups load on first use (`LazyGroup`), so `diffeval --help` imports no torch, transformers or lm-eval.
"""

from __future__ import annotations

import importlib
import logging
import os

import click

from diffeval import __version__
from diffeval.harness.core import progress

# command name -> (module under diffeval.harness.cli, attribute, one-line help shown by `diffeval --help`)
COMMANDS = {
    "run": ("run", "run", "Run the whole pipeline on two models (with none: on the default model organism)."),
    "plan": ("run", "plan", "Print the stages `diffeval run` would run or reuse, with a disk, memory and time estimate."),
    "bench": ("run", "bench", "Run benchmark tasks on both models and write paired deltas (bench/deltas.json)."),
    "attribute": ("run", "attribute", "Re-run the pipeline from the latents stage on RUN_DIR (categories, shifts, attribution)."),
    "report": ("report", "report", "Re-render report.md, report.html, report.json and figures/ of RUN_DIR (no model, no GPU)."),
    "tasks": ("tasks", "tasks", "List, show, validate and scaffold task definitions."),
    "organisms": ("organisms", "organisms", "Model organisms: model pairs with planted capability changes."),
    "activations": ("caches", "activations", "Collect paired activations from both models at one layer."),
    "crosscoder": ("caches", "crosscoder", "Train crosscoders and compute latent statistics."),
    "leaderboard": ("leaderboard", "leaderboard", "Publish attribution reports of model pairs to a board and render it."),
}


class LazyGroup(click.Group):
    """A group whose commands are imported when they are run (or asked for --help), not before."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module, attr, _ = COMMANDS[name]
        return getattr(importlib.import_module(f"{__name__}.{module}"), attr)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        with formatter.section("Commands"):
            formatter.write_dl([(name, short) for name, (_, _, short) in COMMANDS.items()])


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
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
    progress.configure(verbose)


def main() -> None:
    cli(prog_name="diffeval")
