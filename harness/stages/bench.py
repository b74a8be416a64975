"""The bench stage: lm-eval on both models with identical settings, then paired deltas.

Writes `bench/<base|tuned>/results.json` (lm-eval's results, samples removed),
`bench/<base|tuned>/samples/<task>.jsonl` (lm-eval's per-document logs), `bench/deltas.json`
and `bench/deltas.md`. Each model is its own cached stage, so changing one model re-runs one side.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import jsonlines
import numpy as np
from tabulate import tabulate

from diffeval.harness.core import files, models, progress
from diffeval.harness.core.config import BenchConfig
from diffeval.harness.core.errors import DiffevalError, TaskError
from diffeval.harness.core.io import atomic_write_json, atomic_write_jsonl, atomic_write_text, read_json
from diffeval.harness.core.rundir import RunDir
from diffeval.harness.core.stageconfig import stage_key
from diffeval.harness.stages.external_scores import read_external_scores
from diffeval.harness.stages.paired_tests import paired_compare
from diffeval.harness.suite import registry as taskreg

log = logging.getLogger(__name__)

DELTAS_VERSION = 1
LM_EVAL_LOG = "lm-eval.log"  # what lm-eval wrote to stderr while scoring (quiet level)
ROLES = ("base", "tuned")


def run_bench(cfg: BenchConfig, out: str | Path) -> Path:
    """Run the bench stage into run directory `out`; returns the path of deltas.json."""
    if cfg.scores and not Path(cfg.scores).is_file():
        raise DiffevalError(f"--scores file {cfg.scores} does not exist")
    # models and tokenizers are checked before the run directory exists: bad input leaves nothing behind
    specs = {"base": models.resolve_spec(cfg.base), "tuned": models.resolve_spec(cfg.tuned)}
    for role in ROLES:
        models.check_device(cfg.device_of(role))
    if cfg.bench_parallelize:
        check_parallelize(specs.values())
    toks = {role: models.load_tokenizer(spec) for role, spec in specs.items()}
    models.check_same_tokenizer(toks["base"], toks["tuned"], cfg.base, cfg.tuned)
    run = RunDir(out)
    run.write_config(cfg)
    if cfg.apply_chat_template:
        if not toks["tuned"].chat_template:
            raise DiffevalError(f"--apply-chat-template: the tuned model {cfg.tuned!r} has no chat template")
        toks["base"].chat_template = toks["tuned"].chat_template  # both models see the same prompt text
    defs = taskreg.resolve(cfg.tasks or taskreg.shipped_suite(), cfg.tasks_dir)
    shared = dataclasses.replace(cfg, base="-", tuned="-")  # the settings both sides share
    hashes = {}
    for role in ROLES:
        hashes[role] = stage_key(shared, models.describe(specs[role]), [(d.name, d.files_hash()) for d in defs])
        stage = f"bench.{role}"
        if run.is_done(stage, hashes[role]):
            log.info("%s: unchanged, reusing %s", stage, run.path / files.BENCH_DIR / role)
            continue
        with run.stage(stage, hashes[role]) as rec:
            rec["outputs"] = evaluate_model(specs[role], toks[role], defs, cfg, run.path / files.BENCH_DIR / role,
                                            cfg.device_of(role))
    scores_blob = Path(cfg.scores).read_bytes() if cfg.scores else b""
    delta_hash = stage_key(shared, hashes, scores_blob.hex())
    if not run.is_done("bench.deltas", delta_hash):
        with run.stage("bench.deltas", delta_hash) as rec:
            rec["outputs"] = write_deltas(run.path, defs, cfg)
    return run.path / files.DELTAS


def evaluate_model(spec: models.ModelSpec, tokenizer: Any, defs: list[taskreg.TaskDef],
                   cfg: BenchConfig, out: Path, device: str | None = None) -> list[Path]:
    """Run lm-eval on one model (on `device`, default cfg.device); write results.json and one samples file per task."""
    from lm_eval.models.huggingface import HFLM

    log.info("loading %s (%s)", spec.spec, spec.kind)
    if cfg.bench_parallelize:  # lm-eval loads the model itself, sharded over the GPUs
        return score_lm(HFLM(**parallel_lm_args(spec, cfg), tokenizer=tokenizer, batch_size=cfg.batch_size),
                        defs, cfg, out)
    device = device or cfg.device
    model = models.load_model(spec, cfg.dtype, device)
    written = evaluate_lm(model, tokenizer, defs, cfg, out, device)
    del model
    return written


def check_parallelize(specs: Any) -> None:
    """--bench-parallelize needs CUDA GPUs (on CPU, accelerate's device_map='auto' offloads the weights to disk)
    and a model lm-eval can load from its path."""
    import torch

    if not torch.cuda.is_available():
        raise DiffevalError("--bench-parallelize shards the models over CUDA GPUs, and this machine has none; "
                            "run without it (or with --device/--base-device/--tuned-device)")
    for spec in specs:
        if spec.kind == "peft" and spec.adapter_base.kind == "peft":
            raise DiffevalError(f"--bench-parallelize: {spec.spec} is an adapter on an adapter; merge the inner one first")


def parallel_lm_args(spec: models.ModelSpec, cfg: BenchConfig) -> dict[str, Any]:
    """HFLM's arguments for `spec` loaded by lm-eval and sharded over every visible GPU (parallelize=True): the
    weights' path (a hub id, a directory, or a GGUF file's directory with gguf_file), and a PEFT adapter on top."""
    model = spec.adapter_base if spec.kind == "peft" else spec
    args = {"pretrained": model.path, "parallelize": True, "dtype": cfg.dtype}
    if model.gguf_file:
        args["gguf_file"] = model.gguf_file
    if spec.kind == "peft":
        args["peft"] = spec.path
    return args


def evaluate_lm(model: Any, tokenizer: Any, defs: list[taskreg.TaskDef], cfg: BenchConfig, out: Path,
                device: str | None = None) -> list[Path]:
    """Run lm-eval on a loaded model object (e.g. one with an ablation hook, harness.causal) on `device`."""
    from lm_eval.models.huggingface import HFLM

    return score_lm(HFLM(pretrained=model, tokenizer=tokenizer, batch_size=cfg.batch_size, device=device or cfg.device),
                    defs, cfg, out)


def score_lm(lm: Any, defs: list[taskreg.TaskDef], cfg: BenchConfig, out: Path) -> list[Path]:
    """Score lm-eval model `lm` on the tasks; write results.json and one samples file per task."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    try:
        task_objs = taskreg.load_tasks(defs)
    except Exception as e:
        raise TaskError(f"lm-eval could not load the tasks: {e}; run `diffeval tasks validate` on them") from None
    gen_kwargs = {"max_gen_toks": cfg.max_gen_toks} if cfg.max_gen_toks else None
    with progress.third_party_stderr(out / LM_EVAL_LOG):  # lm-eval's bars and its git probe's complaint
        results = lm_eval.simple_evaluate(
            model=lm, tasks=list(task_objs.values()), num_fewshot=cfg.num_fewshot, limit=cfg.limit,
            log_samples=True, apply_chat_template=cfg.apply_chat_template, gen_kwargs=gen_kwargs,
            bootstrap_iters=0, random_seed=cfg.seed, numpy_random_seed=cfg.seed,
            torch_random_seed=cfg.seed, fewshot_random_seed=cfg.seed,
            # the tasks are loaded objects already: an empty manager spares lm-eval indexing its whole
            # catalogue of task YAML (about 11 s on 2 CPU cores, twice per bench stage)
            task_manager=TaskManager(include_defaults=False),
        )
    samples = results.pop("samples")
    written = [atomic_write_json(out / "results.json", results)]
    for task, rows in samples.items():
        written.append(atomic_write_jsonl(out / "samples" / f"{task}.jsonl", rows))
    del lm
    return written


def headline_metric(task_cfg: dict[str, Any]) -> tuple[str, str]:
    """(metric, filter) of a task's headline score: the first metric, under the first filter."""
    metric_list = task_cfg.get("metric_list") or [{"metric": "acc"}]
    metric = metric_list[0]["metric"]
    filters = task_cfg.get("filter_list") or []
    flt = filters[0]["name"] if filters and isinstance(filters[0], dict) else "none"
    return (metric if isinstance(metric, str) else getattr(metric, "__name__", str(metric))), flt


def per_doc_scores(samples_path: Path, metric: str, flt: str) -> dict[int, float]:
    scores = {}
    with jsonlines.open(samples_path) as reader:
        for row in reader:
            if row.get("filter", "none") == flt and metric in row:
                scores[int(row["doc_id"])] = float(row[metric])
    return scores


def task_delta(run_path: Path, res: dict[str, Any], task: str, cfg: BenchConfig) -> dict[str, Any]:
    """Paired delta for one task from both models' per-document logs (`res`: results.json per role)."""

    metric, flt = headline_metric(res["tuned"]["configs"][task])
    per_doc = {r: per_doc_scores(run_path / files.bench_samples(r, task), metric, flt) for r in ROLES}
    docs = sorted(set(per_doc["base"]) & set(per_doc["tuned"]))
    if not docs:
        raise DiffevalError(f"task {task}: no per-document '{metric}' scores in the samples logs")
    base = np.array([per_doc["base"][d] for d in docs])
    tuned = np.array([per_doc["tuned"][d] for d in docs])
    stat = paired_compare(base, tuned, iters=cfg.bootstrap_iters, seed=cfg.seed)
    # Headline numbers are lm-eval's own aggregates, so they equal what plain `lm_eval` prints.
    key = f"{metric},{flt}"
    agg = {r: float(res[r]["results"][task][key]) for r in ROLES}
    return {
        "metric": metric, "filter": flt, "n": stat.n, "base": agg["base"], "tuned": agg["tuned"],
        "delta": agg["tuned"] - agg["base"], "ci_low": stat.ci_low, "ci_high": stat.ci_high,
        "p_value": stat.p_value, "test": stat.test, "source": "lm-eval",
    }


def write_deltas(run_path: Path, defs: list[taskreg.TaskDef], cfg: BenchConfig) -> list[Path]:
    res = {role: read_json(run_path / files.bench_results(role)) for role in ROLES}  # read once, not per task
    rows = [{"task": d.name, "category": d.category, **task_delta(run_path, res, d.name, cfg)} for d in defs]
    if cfg.scores:
        rows.extend(read_external_scores(cfg.scores))
    doc = {"format_version": DELTAS_VERSION, "base": cfg.base, "tuned": cfg.tuned, "tasks": rows}
    return [atomic_write_json(run_path / files.DELTAS, doc), atomic_write_text(run_path / files.DELTAS_MD, deltas_markdown(rows))]


def deltas_table(rows: list[dict[str, Any]], fmt: str) -> str:
    def num(x: Any, spec: str = "+.3f") -> str:
        return "—" if x is None else format(x, spec)

    table = [
        [r["task"], r["category"], r["metric"], r["n"] if r["n"] is not None else "—", num(r["base"], ".3f"),
         num(r["tuned"], ".3f"), num(r["delta"]),
         "—" if r["ci_low"] is None else f"[{r['ci_low']:+.3f}, {r['ci_high']:+.3f}]",
         num(r["p_value"], ".3g"), r["source"]]
        for r in rows
    ]
    headers = ["task", "category", "metric", "n", "base", "tuned", "Δ", "95% CI", "p", "source"]
    return tabulate(table, headers=headers, tablefmt=fmt)


def deltas_markdown(rows: list[dict[str, Any]]) -> str:
    note = ("Δ = tuned − base on the same documents; CI: paired bootstrap; p: exact McNemar (0/1 metrics) "
            "or paired permutation. Rows marked `external` were merged from --scores and carry no paired test.")
    return "# Benchmark deltas\n\n" + deltas_table(rows, "github") + "\n\n" + note + "\n"


def load_deltas(run_path: str | Path) -> dict[str, Any]:
    return read_json(Path(run_path) / files.DELTAS)
