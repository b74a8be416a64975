"""lm-eval hook for diffeval_structured: scoring lives in tasks.scoring."""

from tasks.scoring import process_structured

__all__ = ["process_structured"]
