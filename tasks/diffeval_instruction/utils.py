"""lm-eval hook for diffeval_instruction: scoring lives in tasks.scoring."""

from diffeval.tasks.scoring import process_instruction

__all__ = ["process_instruction"]
