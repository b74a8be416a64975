"""What a run evaluates and how latents are named: the task registry, task authoring, the taxonomy of
capability categories with their probe corpora, and the shipped crosscoder corpus."""

from pathlib import Path

CORPUS_DIR = Path(__file__).parent / "corpus"  # the shipped offline corpus: plain.jsonl, chat.jsonl
