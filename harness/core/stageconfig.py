"""Each stage's own configuration, derived from a RunConfig by `RunConfig.stages()`.

A stage takes (run directory, its config). Its cache key is `stage_key(config, *inputs)`: the config's
fields that change the stage's output (a field made with `nokey`, such as the device, does not enter it),
plus whatever else it reads — file stamps, model descriptions and the keys of the stages before it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from diffeval.harness.core.config import ActivationsConfig, BenchConfig, config_hash

PROBE_TOKENS = 10**9  # the probe collection reads every probe text in full


def nokey(default: Any) -> Any:
    """A field that does not change the stage's output, so it stays out of the cache key (a device)."""
    return field(default=default, metadata={"key": False})


def key_fields(cfg: Any) -> dict[str, Any]:
    """The fields of a (nested) stage config that enter its cache key."""
    out = {}
    for f in dataclasses.fields(cfg):
        if f.metadata.get("key", True):
            value = getattr(cfg, f.name)
            out[f.name] = key_fields(value) if dataclasses.is_dataclass(value) else value
    return out


def stage_key(cfg: Any, *inputs: Any) -> str:
    """A stage's cache key: its config's key fields and `inputs` (file stamps, upstream keys)."""
    return config_hash(key_fields(cfg), *inputs)


@dataclass(frozen=True)
class ProbesConfig:
    """Where the taxonomy and its probe corpora come from (read by transcripts, latents and attribution)."""

    categories: str | None = None  # taxonomy YAML; None = the shipped one
    probes_dir: str | None = None  # <category>.jsonl files overriding the taxonomy's probe corpora


@dataclass(frozen=True)
class TranscriptsConfig:
    """Both models' responses to every probe text."""

    probes: ProbesConfig
    base: str
    tuned: str
    max_new_tokens: int
    dtype: str
    device: str = nokey("cpu")
    model_devices: tuple[str, ...] = nokey(())  # (base, tuned) when they differ from device


@dataclass(frozen=True)
class ActivationsStageConfig:
    """Paired activations on the crosscoder's corpus and the benchmark prompts.

    `collect` leaves `tasks` as the run's (empty = the shipped suite) and `extra` empty: the stage resolves
    the tasks and adds the probe transcripts (with `transcripts`, i.e. --corpus-responses)."""

    collect: ActivationsConfig
    transcripts: TranscriptsConfig | None = None


@dataclass(frozen=True)
class CrosscoderStageConfig:
    """The crosscoder's training settings; the stage completes them into a CrossCoderConfig with the hidden
    sizes of the activation cache it reads (crosscoders.data.crosscoder_config)."""

    n_latents: int  # 0 = EXPANSION × the hidden size
    k: int
    n_steps: int
    architecture: str
    seed: int
    device: str = nokey("cpu")
    source: str | None = nokey(None)  # a trained crosscoder to use (its files' hashes enter the key, not its path)
    stream: ActivationsStageConfig | None = None  # with --stream: the collection the crosscoder trains on, on the fly


@dataclass(frozen=True)
class LatentsConfig:
    """Per-latent statistics and categories from the probe corpora (the probe collection is part of it)."""

    probes: ProbesConfig
    collect: ActivationsConfig  # the probe collection: models, layer, sequence length, dtype
    transcripts: TranscriptsConfig | None  # with --probe-responses: the probes as each model continues them
    alpha: float
    annotator: str
    annotator_url: str | None = None
    annotator_model: str | None = None
    device: str = nokey("cpu")


@dataclass(frozen=True)
class AttributionConfig:
    """Category shifts and each task's delta attributed to them."""

    probes: ProbesConfig
    specific_by: str
    shift: str
    alpha: float
    seed: int
    reference: str | None = None
    device: str = nokey("cpu")


@dataclass(frozen=True)
class CausalConfig:
    """Re-scoring each task with its category's latents reverted or ablated."""

    bench: BenchConfig  # the bench stage's settings (bench_seed applied): re-scoring matches them
    mode: str
    specific_by: str
    seed: int  # the control sets' draw and the bootstrap
    controls: int = 20  # random latent sets reverted as the null distribution (revert mode)


@dataclass(frozen=True)
class StageConfigs:
    """Every stage's config of one run."""

    bench: BenchConfig
    activations: ActivationsStageConfig
    crosscoder: CrosscoderStageConfig
    latents: LatentsConfig
    attribution: AttributionConfig
    causal: CausalConfig | None  # None without --causal

