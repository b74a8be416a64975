"""lm-eval hook for diffeval_safety: scoring lives in tasks.scoring."""

from diffeval.tasks.scoring import process_safety

__all__ = ["process_safety"]
