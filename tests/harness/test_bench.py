import json
import os
import shutil
from pathlib import Path

import lm_eval
import pytest
import yaml
from click.testing import CliRunner
from lm_eval.models import huggingface
from lm_eval.tasks import TaskManager
from peft import LoraConfig, get_peft_model
from transformers import AutoTokenizer

from diffeval.harness.cli import cli
from diffeval.harness.core import models
from diffeval.harness.core.config import BenchConfig
from diffeval.harness.core.errors import DiffevalError, TokenizerMismatchError
from diffeval.harness.core.files import DELTAS
from diffeval.harness.core.io import atomic_write_text
from diffeval.harness.core.rundir import RunDir
from diffeval.harness.stages import bench as bench_mod
from diffeval.harness.stages.bench import run_bench
from diffeval.harness.stages.corpus import chat_prefix
from diffeval.harness.suite import registry
from diffeval.harness.suite.authoring import new_task
from diffeval.tasks import TASKS_DIR

FIELDS = {"task", "category", "metric", "n", "base", "tuned", "delta", "ci_low", "ci_high", "p_value"}


def cfg(base, tuned, **kw):
    kw.setdefault("limit", 4)
    kw.setdefault("batch_size", 4)
    return BenchConfig(base=str(base), tuned=str(tuned), **kw)


@pytest.fixture(scope="module")
def suite_run(tiny_pair, tmp_path_factory):
    """The whole shipped suite (4 docs a task) on the tiny pair: every task runs end to end."""
    out = tmp_path_factory.mktemp("suite")
    run_bench(cfg(*tiny_pair), out)
    return out


def test_every_shipped_task_runs_and_deltas_have_the_contract_fields(suite_run):
    doc = json.loads((suite_run / DELTAS).read_text())
    rows = {r["task"]: r for r in doc["tasks"]}
    shipped = {p.stem for p in TASKS_DIR.glob("*/*.yaml")}
    assert set(rows) == shipped
    for r in rows.values():
        assert FIELDS <= set(r)
        assert r["n"] == 4 and r["delta"] == pytest.approx(r["tuned"] - r["base"])
        assert r["ci_low"] <= r["delta"] + 1e-9 and r["delta"] - 1e-9 <= r["ci_high"]
    assert (suite_run / "bench" / "deltas.md").read_text().startswith("# Benchmark deltas")
    assert json.loads((suite_run / "config.json").read_text())["limit"] == 4
    manifest = json.loads((suite_run / "manifest.json").read_text())
    assert {s["status"] for s in manifest["stages"].values()} == {"done"}
    assert manifest["packages"]["lm_eval"]


def test_identical_models_give_zero_deltas_and_p_one(tiny_pair, tmp_path):
    run_bench(cfg(tiny_pair[0], tiny_pair[0], tasks=("diffeval_factual", "diffeval_math")), tmp_path)
    for r in json.loads((tmp_path / DELTAS).read_text())["tasks"]:
        assert (r["delta"], r["p_value"], r["ci_low"], r["ci_high"]) == (0.0, 1.0, 0.0, 0.0)


@pytest.mark.parametrize("task", ["diffeval_factual", "diffeval_math", "diffeval_structured"])
def test_delta_equals_plain_lm_eval(tiny_pair, tmp_path, monkeypatch, task):
    run_bench(cfg(*tiny_pair, tasks=(task,), limit=6), tmp_path / "run")
    ours = json.loads((tmp_path / "run" / DELTAS).read_text())["tasks"][0]
    key = f"{ours['metric']},{ours['filter']}"
    task_dir = TASKS_DIR / task
    monkeypatch.chdir(task_dir)  # plain lm_eval resolves data_files against the working directory
    plain = {}
    for role, path in zip(("base", "tuned"), tiny_pair, strict=True):
        res = lm_eval.simple_evaluate(
            model="hf", model_args={"pretrained": str(path), "dtype": "float32", "device": "cpu"},
            tasks=[task], limit=6, batch_size=4, task_manager=TaskManager(include_defaults=False, include_path=str(task_dir)),
            random_seed=1234, numpy_random_seed=1234, torch_random_seed=1234, fewshot_random_seed=1234,
        )
        plain[role] = res["results"][task][key]
    assert ours["base"] == plain["base"] and ours["tuned"] == plain["tuned"]
    assert ours["delta"] == plain["tuned"] - plain["base"]


def test_rerun_skips_finished_stages(tiny_pair, tmp_path, monkeypatch):
    c = cfg(*tiny_pair, tasks=("diffeval_factual",))
    run_bench(c, tmp_path)
    before = (tmp_path / "manifest.json").read_text()

    def must_not_run(*a, **k):
        raise AssertionError("a finished stage was re-run")

    monkeypatch.setattr(bench_mod, "evaluate_model", must_not_run)
    run_bench(c, tmp_path)
    after = json.loads((tmp_path / "manifest.json").read_text())
    assert after["stages"] == json.loads(before)["stages"]


def test_changing_only_the_tuned_model_reruns_only_its_side(tiny_pair, tmp_path, monkeypatch):
    run_bench(cfg(*tiny_pair, tasks=("diffeval_factual",)), tmp_path)
    ran = []
    real = bench_mod.evaluate_model
    monkeypatch.setattr(bench_mod, "evaluate_model", lambda spec, *a: ran.append(spec.spec) or real(spec, *a))
    run_bench(cfg(tiny_pair[0], tiny_pair[0], tasks=("diffeval_factual",)), tmp_path)
    assert ran == [str(tiny_pair[0])] and len(ran) == 1


def test_interrupted_stage_is_not_taken_for_complete(tiny_pair, tmp_path, monkeypatch):
    c = cfg(*tiny_pair, tasks=("diffeval_factual",))

    def crash(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(lm_eval, "simple_evaluate", crash)
    with pytest.raises(KeyboardInterrupt):
        run_bench(c, tmp_path)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["stages"]["bench.base"]["status"] == "failed"
    assert not (tmp_path / DELTAS).exists()
    assert not RunDir(tmp_path).is_done("bench.base", manifest["stages"]["bench.base"]["input_hash"])
    monkeypatch.undo()
    run_bench(c, tmp_path)  # the re-run finishes the job
    assert (tmp_path / DELTAS).exists()


def test_a_crash_mid_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    target = tmp_path / "out.json"
    atomic_write_text(target, "old")

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError):
        atomic_write_text(target, "new and longer")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_deleted_output_makes_the_stage_run_again(tiny_pair, tmp_path):
    c = cfg(*tiny_pair, tasks=("diffeval_factual",))
    run_bench(c, tmp_path)
    shutil.rmtree(tmp_path / "bench" / "tuned")
    run_bench(c, tmp_path)
    assert (tmp_path / "bench" / "tuned" / "results.json").exists()


def test_corrupt_manifest_is_reported(tmp_path):
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(DiffevalError, match="manifest.json is not valid JSON"):
        RunDir(tmp_path)


def test_tokenizer_mismatch_stops_before_any_work(tiny_pair, other_tokenizer_model, tmp_path):
    with pytest.raises(TokenizerMismatchError, match="do not share a tokenizer"):
        run_bench(cfg(tiny_pair[0], other_tokenizer_model), tmp_path)
    assert not (tmp_path / "bench").exists()


def test_external_scores_are_merged_and_marked(tiny_pair, tmp_path):
    scores = tmp_path / "scores.csv"
    scores.write_text("task,base,tuned,metric\nalpaca_eval,0.20,0.35,lc_winrate\narena_hard,0.30,0.25,winrate\n")
    run_bench(cfg(*tiny_pair, tasks=("diffeval_factual",), scores=str(scores)), tmp_path / "run")
    rows = {r["task"]: r for r in json.loads((tmp_path / "run" / DELTAS).read_text())["tasks"]}
    assert rows["alpaca_eval"]["source"] == "external"
    assert rows["alpaca_eval"]["delta"] == pytest.approx(0.15)
    assert rows["alpaca_eval"]["category"] == "instruction_following"
    assert rows["arena_hard"]["p_value"] is None and rows["diffeval_factual"]["source"] == "lm-eval"
    with pytest.raises(DiffevalError, match="--scores file .*missing.csv does not exist"):
        run_bench(cfg(*tiny_pair, tasks=("diffeval_factual",), scores=str(tmp_path / "missing.csv")), tmp_path / "r3")
    bad = tmp_path / "bad.csv"
    bad.write_text("task,base\nx,0.1\n")
    with pytest.raises(DiffevalError, match="row 1: missing tuned"):
        run_bench(cfg(*tiny_pair, tasks=("diffeval_factual",), scores=str(bad)), tmp_path / "run2")


def test_user_task_dir_with_local_json_data(tiny_pair, tmp_path):
    new_task("my_quiz", tmp_path / "mine", category="factual_recall")
    run_bench(cfg(*tiny_pair, tasks=("my_quiz",), tasks_dir=(str(tmp_path / "mine"),)), tmp_path / "run")
    (row,) = json.loads((tmp_path / "run" / DELTAS).read_text())["tasks"]
    assert (row["task"], row["category"], row["n"]) == ("my_quiz", "factual_recall", 2)


def test_chat_template_run(tiny_pair, tmp_path):
    run_bench(cfg(*tiny_pair, tasks=("diffeval_safety",), apply_chat_template=True, limit=2), tmp_path)
    sample = json.loads((tmp_path / "bench" / "base" / "samples" / "diffeval_safety.jsonl").read_text().splitlines()[0])
    assert "Instruction:" in json.dumps(sample["arguments"])


@pytest.mark.parametrize(("kw", "msg"), [
    ({"dtype": "float64"}, "dtype 'float64' is not one of"),
    ({"device": "tpu"}, "device 'tpu' is not valid"),
    ({"batch_size": 0}, "batch_size must be >= 1"),
    ({"limit": 0}, "limit must be >= 1"),
])
def test_bad_settings_are_rejected(kw, msg):
    with pytest.raises(DiffevalError, match=msg):
        BenchConfig(base="a", tuned="b", **kw)


STANDARD = {"ifeval": "instruction_following", "gsm8k": "math", "mmlu": "factual_recall",
            "truthfulqa_mc2": "hallucination_management", "xnli_fr": "multilingual", "humaneval": "code"}


def test_standard_benchmarks_resolve_by_name_offline_with_their_categories():
    """lm-eval's own tasks resolve by name from its installed catalogue (no hub), each with its category."""
    defs = registry.resolve(list(STANDARD))
    assert {d.name: d.category for d in defs} == STANDARD
    assert all(d.path is None for d in defs)  # lm-eval's, not a local copy
    with pytest.raises(DiffevalError, match="did you mean gsm8k"):
        registry.resolve(["gsm8kk"])


def test_a_local_copy_of_gsm8k_runs_the_whole_bench_with_the_chat_template(tiny_pair, tmp_path):
    """lm-eval's gsm8k YAML, pointed at local data, through the bench with --apply-chat-template: the task
    keeps its name, category (math), metric and filters, and both models are scored on every document."""
    source = yaml.safe_load((Path(lm_eval.__file__).parent / "tasks/gsm8k/gsm8k.yaml").read_text())
    task_dir = tmp_path / "tasks"
    task_dir.mkdir()
    rows = [{"question": f"Tom has {a} apples and buys {b} more. How many apples does he have?",
             "answer": f"He has {a} + {b} = {a + b} apples.\n#### {a + b}"} for a, b in ((2, 3), (4, 5), (1, 6), (7, 2))]
    for split in ("train", "test"):
        (task_dir / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    source.pop("dataset_name")
    source |= {"dataset_path": "json", "num_fewshot": 1,
               "dataset_kwargs": {"data_files": {"train": str(task_dir / "train.jsonl"), "test": str(task_dir / "test.jsonl")}},
               "generation_kwargs": {**source["generation_kwargs"], "max_gen_toks": 8}}
    (task_dir / "gsm8k.yaml").write_text(yaml.safe_dump(source))
    run_bench(cfg(*tiny_pair, tasks=("gsm8k",), tasks_dir=(str(task_dir),), apply_chat_template=True), tmp_path / "run")
    (row,) = json.loads((tmp_path / "run" / DELTAS).read_text())["tasks"]
    assert (row["task"], row["category"], row["n"]) == ("gsm8k", "math", 4)
    assert row["metric"].startswith("exact_match")
    user_turn = chat_prefix(AutoTokenizer.from_pretrained(str(tiny_pair[1])))
    assert user_turn
    for side in ("base", "tuned"):
        logged = [json.loads(x) for x in next((tmp_path / "run" / "bench" / side).rglob("*gsm8k*.jsonl")).read_text().splitlines()]
        assert {r["doc_id"] for r in logged} == {0, 1, 2, 3}  # one row per document and filter
        assert all(user_turn in r["arguments"][0][0] for r in logged)  # the prompt is in the chat template


def test_base_and_tuned_devices_route_each_model(tiny_pair, tmp_path, monkeypatch):
    """With --base-device cuda:0 --tuned-device cuda:1 each model's bench stage gets its own device (the
    evaluation itself runs on the CPU here: a test machine has no GPU)."""
    checked, routed = [], {}
    monkeypatch.setattr(bench_mod.models, "check_device", checked.append)
    real = bench_mod.evaluate_model

    def on_cpu(spec, tok, defs, cfg, out, device=None):
        routed[out.name] = device
        return real(spec, tok, defs, cfg, out, "cpu")

    monkeypatch.setattr(bench_mod, "evaluate_model", on_cpu)
    c = cfg(*tiny_pair, tasks=("diffeval_factual",), base_device="cuda:0", tuned_device="cuda:1")
    assert c.model_devices() == ("cuda:0", "cuda:1") and cfg(*tiny_pair).model_devices() == ()
    run_bench(c, tmp_path)
    assert routed == {"base": "cuda:0", "tuned": "cuda:1"} and checked[:2] == ["cuda:0", "cuda:1"]  # before any load
    with pytest.raises(DiffevalError, match="tuned_device 'gpu' is not valid"):
        cfg(*tiny_pair, tuned_device="gpu")


def test_bench_parallelize_hands_lm_eval_the_paths_and_scores_as_the_plain_bench(tiny_pair, tmp_path, monkeypatch):
    """--bench-parallelize lets lm-eval load each model from its path with parallelize=True (a PEFT adapter
    through lm-eval's own `peft` argument). A test machine has no GPU, so the recorded HFLM arguments are
    loaded without sharding: the scores must equal the plain bench's, document for document."""
    model = models.load_model(models.resolve_spec(str(tiny_pair[0])))
    lora = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    adapter = tmp_path / "adapter"
    lora.save_pretrained(adapter)
    meta = json.loads((adapter / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(json.dumps({**meta, "base_model_name_or_path": str(tiny_pair[0])}))

    made, real = [], huggingface.HFLM

    def recorded(**kw):
        made.append({k: v for k, v in kw.items() if k != "tokenizer"})
        if kw.pop("parallelize", False):
            kw["device"] = "cpu"
        return real(**kw)

    plain = run_bench(cfg(tiny_pair[0], adapter, tasks=("diffeval_factual",)), tmp_path / "plain")
    monkeypatch.setattr(huggingface, "HFLM", recorded)
    monkeypatch.setattr(bench_mod, "check_parallelize", lambda specs: None)  # its CUDA test: the next test
    sharded = run_bench(cfg(tiny_pair[0], adapter, tasks=("diffeval_factual",), bench_parallelize=True),
                        tmp_path / "sharded")
    assert made == [{"pretrained": str(tiny_pair[0]), "parallelize": True, "dtype": "float32", "batch_size": 4},
                    {"pretrained": str(tiny_pair[0]), "parallelize": True, "dtype": "float32", "batch_size": 4,
                     "peft": str(adapter)}]
    for role in ("base", "tuned"):
        rows = [[json.loads(line) for line in (out.parent / role / "samples" / "diffeval_factual.jsonl")
                 .read_text().splitlines()] for out in (plain, sharded)]
        assert [r["acc"] for r in rows[0]] == [r["acc"] for r in rows[1]] and len(rows[0]) == 4
        logliks = [[float(x[0]) for r in rs for x in r["filtered_resps"]] for rs in rows]
        assert logliks[0] == pytest.approx(logliks[1], abs=1e-4) and len(set(logliks[0])) > 4
    assert json.loads(plain.read_text())["tasks"] == json.loads(sharded.read_text())["tasks"]


def test_bench_parallelize_without_a_gpu_is_a_clear_error(tiny_pair, tmp_path):
    result = CliRunner().invoke(cli, ["bench", "--base", str(tiny_pair[0]), "--tuned", str(tiny_pair[1]),
                                      "--bench-parallelize", "--out", str(tmp_path / "b")])
    assert result.exit_code == 2 and "--bench-parallelize shards the models over CUDA GPUs" in result.output
    assert not (tmp_path / "b").exists()
