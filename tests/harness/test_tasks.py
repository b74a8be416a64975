import json
import textwrap

import pytest

from diffeval.harness.core.errors import TaskError
from diffeval.harness.suite import registry as taskreg
from diffeval.harness.suite.authoring import new_task, validate_task
from diffeval.tasks import TASKS_DIR
from diffeval.tasks.scoring import (
    check_rule,
    first_json_object,
    is_refusal,
    process_code,
    process_safety,
    process_structured,
)

SHIPPED = sorted(TASKS_DIR.glob("*/*.yaml"))
CATEGORIES = {"instruction_following", "safety", "multilingual", "factual_recall", "hallucination_management",
              "self_reference", "code", "math", "structured_output"}


def test_suite_covers_every_category_with_50_items_and_both_task_kinds():
    defs = taskreg.scan()
    shipped = [d for d in defs.values() if TASKS_DIR in d.path.parents]
    assert {d.category for d in shipped} >= CATEGORIES
    for d in shipped:
        n = len(d.path.with_suffix(".jsonl").read_text().splitlines())
        assert n >= 50, f"{d.name} has {n} items"
    assert {d.output_type for d in shipped} == {"multiple_choice", "generate_until"}


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_every_shipped_task_validates(path):
    assert validate_task(path) == []


@pytest.mark.parametrize(("text", "check", "ok"), [
    ("all quiet here", {"type": "lowercase"}, True),
    ("All quiet", {"type": "lowercase"}, False),
    ("LOUD NOISES", {"type": "uppercase"}, True),
    ("one two three", {"type": "max_words", "n": 3}, True),
    ("one two three four", {"type": "max_words", "n": 3}, False),
    ("one two", {"type": "min_words", "n": 3}, False),
    ("Dear Sam, hello", {"type": "starts_with", "text": "Dear"}, True),
    ("bye now.", {"type": "ends_with", "text": "now."}, True),
    ("I like Paris", {"type": "contains", "text": "paris"}, True),
    ("I like Paris", {"type": "not_contains", "text": "paris"}, False),
    ("a, b", {"type": "no_commas"}, False),
    ("- a\n- b\n- c", {"type": "bullet_count", "n": 3}, True),
    ("- a\n- b", {"type": "bullet_count", "n": 3}, False),
])
def test_instruction_rules(text, check, ok):
    assert check_rule(text, check) is ok


def test_refusal_detection_and_safety_score():
    assert is_refusal("I'm sorry, but I can't help with that.")
    assert is_refusal("I cannot help with that.")
    assert not is_refusal("Sure: open the terminal and run kill -9 1234.")
    assert process_safety({"harmful": True}, ["I cannot help with that."])["safe_acc"] == 1.0
    assert process_safety({"harmful": False}, ["I cannot help with that."])["safe_acc"] == 0.0


def test_structured_output_scoring():
    doc = {"required_keys": ["name", "age"], "values": json.dumps({"name": "Maria", "age": 34})}
    assert process_structured(doc, ['Here: {"name": "maria", "age": 34}'])["format_acc"] == 1.0
    assert process_structured(doc, ['{"name": "Maria", "age": 35}']) == {"format_acc": 0.0, "json_valid": 1.0}
    assert process_structured(doc, ["name: Maria"]) == {"format_acc": 0.0, "json_valid": 0.0}
    assert first_json_object('x {bad} {"a": [1, 2]} y') == {"a": [1, 2]}


def test_code_scoring_takes_the_first_output_line():
    assert process_code({"answer": "12"}, [" 12\nmore"])["exact_match"] == 1.0
    assert process_code({"answer": "12"}, ["```\n12\n```"])["exact_match"] == 1.0
    assert process_code({"answer": "12"}, ["13"])["exact_match"] == 0.0


def test_lm_eval_task_categories():
    assert taskreg.lm_eval_category("mmlu_anatomy") == "factual_recall"
    assert taskreg.lm_eval_category("gsm8k") == "math"
    assert taskreg.lm_eval_category("xnli_fr") == "multilingual"
    assert taskreg.lm_eval_category("ifeval") == "instruction_following"
    assert taskreg.lm_eval_category("some_new_task") == "unassigned"


def test_unknown_task_suggests_close_names():
    with pytest.raises(TaskError, match="did you mean diffeval_math"):
        taskreg.resolve(["diffeval_mth"])


def test_missing_task_dir_is_an_error(tmp_path):
    with pytest.raises(TaskError, match="does not exist"):
        taskreg.scan([tmp_path / "nope"])


def _write_task(folder, body, data=None):
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "t.yaml"
    path.write_text(textwrap.dedent(body))
    if data is not None:
        (folder / "t.jsonl").write_text("".join(json.dumps(d) + "\n" for d in data))
    return path


MC = """\
    task: my_t
    dataset_path: json
    dataset_kwargs:
      data_files:
        test: t.jsonl
    test_split: test
    output_type: multiple_choice
    doc_to_text: "{text}"
    doc_to_choice: choices
    doc_to_target: answer
    metric_list:
      - metric: {metric}
    """
ITEMS = [{"question": "2+2?", "choices": ["4", "5"], "answer": 0}]


def test_validate_reports_a_missing_data_file(tmp_path):
    path = _write_task(tmp_path / "a", MC.format(text="Q: {{question}}", metric="acc"))
    (problem,) = validate_task(path)
    assert "data file 't.jsonl' not found" in problem


def test_validate_reports_an_unknown_metric(tmp_path):
    path = _write_task(tmp_path / "b", MC.format(text="Q: {{question}}", metric="accuracy_typo"), ITEMS)
    assert any("unknown metric 'accuracy_typo'" in p for p in validate_task(path))


def test_validate_reports_a_bad_template(tmp_path):
    path = _write_task(tmp_path / "c", MC.format(text="Q: {{question", metric="acc"), ITEMS)
    problems = validate_task(path)
    assert problems and any("template" in p or "cannot load" in p for p in problems)


def test_validate_reports_malformed_yaml(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("task: [unclosed\n")
    (problem,) = validate_task(path)
    assert "not valid YAML" in problem


def test_new_task_scaffold_validates_and_is_listed(tmp_path):
    path = new_task("my_probe", tmp_path, category="math")
    assert validate_task(path) == []
    assert taskreg.scan([tmp_path])["my_probe"].category == "math"
    with pytest.raises(TaskError, match="already exists"):
        new_task("my_probe", tmp_path)
    with pytest.raises(TaskError, match="not valid"):
        new_task("My-Probe", tmp_path)
    with pytest.raises(TaskError, match="unknown category 'mathz'"):
        new_task("other", tmp_path, category="mathz")
