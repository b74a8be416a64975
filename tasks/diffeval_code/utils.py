"""lm-eval hook for diffeval_code: scoring lives in tasks.scoring."""

from diffeval.tasks.scoring import process_code

__all__ = ["process_code"]
