"""Shipped task definitions (lm-eval YAML + local data), the category taxonomy and scoring rules."""

from pathlib import Path

TASKS_DIR = Path(__file__).resolve().parent
CATEGORIES_FILE = TASKS_DIR / "categories.yaml"

# A multiple-choice lm-eval task over a local `<name>.jsonl` of {question, choices, answer} rows. The
# organisms' recipes and `diffeval tasks new` fill in the header comment, the prompt and the category line.
MULTIPLE_CHOICE_YAML = """task: {name}
{header}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {name}.jsonl{data_comment}
test_split: test
output_type: multiple_choice
doc_to_text: "{prompt}"
doc_to_choice: choices
doc_to_target: answer
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
  category: {category}{category_comment}
"""
