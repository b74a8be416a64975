"""The options of `bench`, `run`, `plan` and `attribute`, each generated from a BenchConfig/RunConfig field."""

from __future__ import annotations

import click

from diffeval.crosscoders.config import ARCHITECTURES
from diffeval.harness.cli.common import apply, field_option
from diffeval.harness.core.config import BenchConfig
from diffeval.harness.core.presets import PRESETS
from diffeval.harness.core.runconfig import (
                           ANNOTATORS,
                           ATTRIBUTION_SHIFTS,
                           CAUSAL_MODES,
                           SPECIFIC_BY,
                           RunConfig,
)

DIR = click.Path(file_okay=False)

CONFIG_FILE = click.option("--config", "config_file", type=click.Path(),
                           help="YAML/JSON file of options (keys as in config.json); flags override it")
OUT = click.option("--out", type=DIR, help="run directory (default runs/<base>-vs-<tuned>-<config hash>, so the "
                                           "same command resumes it)")
DRY_RUN = click.option("--dry-run", is_flag=True, help="print the stages to run or reuse and the estimated cost, then stop")

BENCH = [
    field_option(BenchConfig, "base", type=str),
    field_option(BenchConfig, "tuned", type=str),
    field_option(BenchConfig, "tasks", type=str, show_default="the shipped suite"),
    field_option(BenchConfig, "tasks_dir", multiple=True, type=DIR),
    field_option(BenchConfig, "limit", type=int),
    field_option(BenchConfig, "num_fewshot", type=int),
    field_option(BenchConfig, "apply_chat_template"),
    field_option(BenchConfig, "batch_size"),
    field_option(BenchConfig, "max_gen_toks", type=int),
    field_option(BenchConfig, "device", type=str),
    field_option(BenchConfig, "base_device", type=str),
    field_option(BenchConfig, "tuned_device", type=str),
    field_option(BenchConfig, "bench_parallelize"),
    field_option(BenchConfig, "dtype", type=str),
    field_option(BenchConfig, "seed"),
    field_option(BenchConfig, "bootstrap_iters"),
    field_option(BenchConfig, "scores", type=click.Path()),
    CONFIG_FILE,
    OUT,
]

LATER_STAGES = [  # the options `attribute` can change on an existing run
    field_option(RunConfig, "categories", type=click.Path()),
    field_option(RunConfig, "probes_dir", type=DIR),
    field_option(RunConfig, "probe_responses"),
    field_option(RunConfig, "alpha"),
    field_option(RunConfig, "annotator", type=click.Choice(ANNOTATORS)),
    field_option(RunConfig, "annotator_url", type=str),
    field_option(RunConfig, "annotator_model", type=str),
    field_option(RunConfig, "specific_by", type=click.Choice(SPECIFIC_BY)),
    field_option(RunConfig, "attribution_shift", type=click.Choice(ATTRIBUTION_SHIFTS)),
    field_option(RunConfig, "causal"),
    field_option(RunConfig, "causal_mode", type=click.Choice(CAUSAL_MODES)),
    field_option(RunConfig, "causal_controls"),
]

RUN = [
    field_option(RunConfig, "layer"),
    field_option(RunConfig, "tokens"),
    field_option(RunConfig, "seq_len"),
    field_option(RunConfig, "corpus", multiple=True, type=click.Path()),
    field_option(RunConfig, "n_latents"),
    field_option(RunConfig, "k"),
    field_option(RunConfig, "architecture", type=click.Choice(ARCHITECTURES)),
    field_option(RunConfig, "n_steps"),
    field_option(RunConfig, "preset", type=click.Choice(PRESETS)),
    field_option(RunConfig, "stream", "--stream/--no-stream"),
    field_option(RunConfig, "crosscoder", type=click.Path(exists=False)),
    field_option(RunConfig, "corpus_responses", "--corpus-responses/--no-corpus-responses"),
    *LATER_STAGES,
    field_option(RunConfig, "reference", type=str),
    field_option(RunConfig, "bench_seed", type=int),
    field_option(RunConfig, "organism", type=str),
    DRY_RUN,
]

bench_options = apply(BENCH)
run_options = apply(RUN)
later_stage_options = apply(LATER_STAGES)
