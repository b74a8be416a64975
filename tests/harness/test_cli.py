import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from diffeval.harness.cli import cli
from diffeval.harness.cli.reference import options_markdown


@pytest.mark.parametrize("args", [["--help"], ["run", "--help"], ["attribute", "--help"], ["leaderboard", "--help"],
                                  ["report", "--help"], ["tasks", "--help"]])
def test_help_is_instant_and_imports_no_heavy_library(args):
    """`diffeval --help` and each command's `--help` load no torch, transformers or lm-eval."""
    code = (f"import sys; from diffeval.harness.cli import cli; cli({args!r}, standalone_mode=False); "
            "print(sorted(m for m in ('torch', 'transformers', 'lm_eval') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).parents[2])
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_user_error_is_one_line_with_exit_code_2(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default run directory would be ./runs/…
    result = CliRunner().invoke(cli, ["bench", "--base", str(tmp_path / "missing"), "--tuned", str(tmp_path)])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: model path")
    assert "Traceback" not in result.output
    assert not (tmp_path / "runs").exists()  # a wrong model path leaves no half-made run directory behind


def test_missing_models_are_a_usage_error():
    result = CliRunner().invoke(cli, ["bench", "--base", "only-one"])
    assert result.exit_code == 2 and "both base and tuned models are required" in result.output


def test_unknown_config_key_is_rejected(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("base: a\ntuned: b\nbatchsize: 3\n")
    result = CliRunner().invoke(cli, ["bench", "--config", str(path)])
    assert result.exit_code == 2 and "unknown key(s) batchsize" in result.output


def test_bench_end_to_end_with_config_file_and_flag_override(tiny_pair, tmp_path):
    conf = tmp_path / "conf.yaml"
    conf.write_text(f"base: {tiny_pair[0]}\ntuned: {tiny_pair[1]}\nlimit: 9\ntasks: [diffeval_factual]\n")
    out = tmp_path / "run"
    result = CliRunner().invoke(cli, ["bench", "--config", str(conf), "--limit", "3", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "diffeval_factual" in result.output and "deltas.json" in result.output
    assert json.loads((out / "config.json").read_text())["limit"] == 3  # the flag won over the file
    assert json.loads((out / "bench" / "deltas.json").read_text())["tasks"][0]["n"] == 3


def test_tasks_list_show_new_validate(tmp_path):
    runner = CliRunner()
    listed = runner.invoke(cli, ["tasks", "list"])
    assert listed.exit_code == 0 and "diffeval_math" in listed.output and "hallucination_management" in listed.output
    shown = runner.invoke(cli, ["tasks", "show", "diffeval_code"])
    assert "category: code" in shown.output and "items: 60" in shown.output
    created = runner.invoke(cli, ["tasks", "new", "my_task", "--dir", str(tmp_path), "--category", "safety"])
    assert created.exit_code == 0, created.output
    valid = runner.invoke(cli, ["tasks", "validate", str(tmp_path)])
    assert valid.exit_code == 0 and "ok   " in valid.output and "FAIL" not in valid.output
    (tmp_path / "my_task" / "my_task.jsonl").unlink()
    invalid = runner.invoke(cli, ["tasks", "validate", str(tmp_path)])
    assert invalid.exit_code == 2 and "FAIL" in invalid.output and "not found" in invalid.output


def test_unknown_task_gets_did_you_mean():
    result = CliRunner().invoke(cli, ["tasks", "show", "diffeval_cod"])
    assert result.exit_code == 2 and "did you mean diffeval_code" in result.output


def test_organisms_list_puts_the_default_first():
    result = CliRunner().invoke(cli, ["organisms", "list"])
    assert result.exit_code == 0 and result.output.splitlines()[0].startswith("toyworld\t")


def test_attribute_rejects_a_bad_device_and_a_directory_that_is_no_run(tmp_path) -> None:
    runner = CliRunner()
    result = runner.invoke(cli, ["attribute", str(tmp_path)])
    assert result.exit_code == 2 and "no config.json" in result.output
    (tmp_path / "config.json").write_text(json.dumps({"base": "a", "tuned": "b"}))
    result = runner.invoke(cli, ["attribute", str(tmp_path), "--device", "tpu"])
    assert result.exit_code == 2 and "device 'tpu' is not valid" in result.output
    assert json.loads((tmp_path / "config.json").read_text()) == {"base": "a", "tuned": "b"}  # nothing written


def test_the_options_page_is_the_help_text():
    """docs/options.md is generated from the option definitions; regenerate it with
    `python -m diffeval.harness.cli.reference docs/options.md` when an option changes."""
    page = Path(__file__).resolve().parents[2] / "docs" / "options.md"
    assert page.read_text(encoding="utf-8") == options_markdown()


@pytest.mark.slow
def test_run_ends_with_the_answer_and_says_only_its_stages_on_stderr(tiny_pair, tmp_path):
    """The terminal of `diffeval run` at the default level: stage lines on stderr and nothing from the libraries
    (their bars and warnings land in the run's lm-eval.log); stdout ends with the report's answer and both paths."""
    base, tuned = tiny_pair
    out = tmp_path / "run"
    args = ["run", "--base", str(base), "--tuned", str(tuned), "--tasks", "diffeval_factual,diffeval_multilingual",
            "--limit", "6", "--tokens", "3000", "--seq-len", "32", "--n-latents", "64", "--k", "4", "--n-steps", "40",
            "--bootstrap-iters", "200", "--probe-responses", "4", "--out", str(out)]
    done = subprocess.run([sys.executable, "-m", "diffeval", *args], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    noise = [line for line in done.stderr.splitlines() if line.strip() and not line.startswith("diffeval: ")]
    assert not noise, noise
    said = done.stderr.splitlines()
    assert "diffeval: bench.base: running" in said and any(s.startswith("diffeval: crosscoder: done in ") for s in said)
    assert (out / "bench" / "base" / "lm-eval.log").stat().st_size > 0  # what lm-eval said is kept, not shown
    answer = json.loads((out / "report.json").read_text())["answer"]
    tail = done.stdout.split("\nAnswer:\n")[1]
    first = (answer["tasks"][0]["sentence"] if answer["tasks"] else "No benchmark delta is significant")[:60]
    assert tail.startswith("- " + first)
    assert tail.rstrip().splitlines()[-3:] == [f"report: {out / 'report.md'}", f"        {out / 'report.html'}",
                                               f"run directory: {out}"]
