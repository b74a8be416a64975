"""Every file and folder of a run directory, named once (paths relative to the run directory).

    config.json                   the run's RunConfig
    manifest.json                 the stage cache: each stage's key, status, outputs and time
    bench/<side>/                 lm-eval results.json and per-document samples/<task>.jsonl, per side
    bench/deltas.json, .md        paired per-task deltas
    activations/                  the paired activation cache (its own manifest.json, shards, sequences.jsonl)
    probes/transcripts/           both models' responses to every probe text, <category>.jsonl
    probes/activations/           the activation cache of the probe texts (or transcripts)
    crosscoder/                   crosscoder.safetensors, cfg.json, metrics.jsonl
    latents.jsonl                 one row per latent: statistics, class, categories, top contexts
    attribution.json              category shifts, exposure, attribution, causal rows
    causal/                       per (task, category) causal results and their lm-eval logs
    reference/<pair>/             with --reference: the two crosscoders against the reference model
    report.md, report.json        the report (and figures/*.png)
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from diffeval.crosscoders import files as cc_files
from diffeval.harness.core.errors import DiffevalError

CONFIG = "config.json"
MANIFEST = cc_files.MANIFEST  # the run's stage manifest is named like an activation cache's
SIDES = ("base", "tuned")
BENCH_DIR = "bench"
RESULTS = "results.json"  # lm-eval's aggregate results, in bench/<side>/
SAMPLES_DIR = "samples"  # lm-eval's per-document logs, in bench/<side>/
DELTAS = "bench/deltas.json"
DELTAS_MD = "bench/deltas.md"
ACTS_DIR = "activations"
ACTS_MANIFEST = f"{ACTS_DIR}/{MANIFEST}"
SEQUENCES = cc_files.SEQUENCES  # in every activation cache
TRANSCRIPTS_DIR = "probes/transcripts"
PROBE_ACTS_DIR = "probes/activations"
CROSSCODER_DIR = "crosscoder"
CROSSCODER_WEIGHTS = cc_files.WEIGHTS_FILE
CROSSCODER_CFG = cc_files.CFG_FILE
CROSSCODER_METRICS = cc_files.METRICS_FILE
LATENTS = "latents.jsonl"
ATTRIBUTION = "attribution.json"
CAUSAL_DIR = "causal"
REFERENCE_DIRS = {"tuned": "reference/tuned_vs_reference", "base": "reference/base_vs_reference"}
REPORT_MD = "report.md"
REPORT_HTML = "report.html"
REPORT_JSON = "report.json"
FIGURES_DIR = "figures"
STAGE_KEY = ".stage_key"  # inside a stage's folder: the key of the inputs its partial output belongs to


def bench_results(side: str) -> str:
    return f"{BENCH_DIR}/{side}/{RESULTS}"


def bench_samples(side: str, task: str) -> str:
    return f"{BENCH_DIR}/{side}/{SAMPLES_DIR}/{task}.jsonl"


def source_name(path: str | Path, root: str | Path | None) -> str:
    """How a corpus file is named in stage keys and sequences.jsonl: relative to `root` (the run directory)
    when inside it, so a run moved or copied elsewhere keeps its keys; else the path as given."""
    if root is not None:
        try:
            return Path(path).resolve().relative_to(Path(root).resolve()).as_posix()
        except ValueError:
            pass
    return str(path)


# a name that becomes a file or folder name inside a run or a board: a category, a task, an organism, a
# board entry. One path component, never hidden, never `..`, no separator.
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")


def check_name(kind: str, name: Any) -> str:
    """`name` when it is safe as one path component inside the run; else an error naming it."""
    if not isinstance(name, str) or not _SAFE_NAME.match(name) or ".." in name:
        raise DiffevalError(f"{kind} name {name!r} is not allowed: use letters, digits, '.', '_' and '-' "
                            "(starting with a letter or digit, no '..', at most 200 characters)")
    return name
