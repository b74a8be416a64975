"""lm-eval hook for diffeval_structured: scoring lives in tasks.scoring."""

from diffeval.tasks.scoring import process_structured

__all__ = ["process_structured"]
