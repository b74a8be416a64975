"""Chaining the stages over a run directory, `plan`'s estimate of what a run will cost, and the stage entry
points that the CLI and the organisms call one at a time (they reach the stages only through here)."""

from diffeval.harness.pipeline.chain import run, run_from_latents
from diffeval.harness.stages.activations import collect_activations
from diffeval.harness.stages.bench import deltas_table, load_deltas, run_bench
from diffeval.harness.stages.latents import write_latents

__all__ = ["collect_activations", "deltas_table", "load_deltas", "run", "run_bench", "run_from_latents", "write_latents"]
