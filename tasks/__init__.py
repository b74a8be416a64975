"""Shipped task definitions (lm-eval YAML + local data), the category taxonomy and scoring rules."""

from pathlib import Path

TASKS_DIR = Path(__file__).resolve().parent
CATEGORIES_FILE = TASKS_DIR / "categories.yaml"
