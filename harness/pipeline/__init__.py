"""Chaining the stages over a run directory, and `plan`'s estimate of what a run will cost."""

from diffeval.harness.pipeline.chain import run, run_from_latents
from diffeval.harness.stages.bench import run_bench

__all__ = ["run", "run_bench", "run_from_latents"]
