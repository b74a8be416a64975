"""CrossCoderConfig: every field documented; the docs double as CLI help and README text."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

ARCHITECTURES = ("batchtopk", "l1")
DTYPES = ("auto", "float32", "bfloat16", "float16")
STORE_DTYPES = ("float32", "float16", "bfloat16")  # what an activation cache's shards hold (data.to_stored)
# The auxiliary loss runs densely over the dead latents when its top aux_k keeps at least this share of them
# (1/DENSE_AUX_DENSITY): a small dictionary's few hundred dead latents then cost two small matrix products,
# where the sparse path would sort B·aux_k pairs twice (benches/bench_aux.py measures both).
DENSE_AUX_DENSITY = 4


def aux_runs_dense(n_dead: int, aux_k: int) -> bool:
    """Whether the auxiliary loss decodes its `n_dead` dead latents densely: its top aux_k keeps at least
    1/DENSE_AUX_DENSITY of them (batchtopk; plan's time estimate follows the same rule)."""
    return min(aux_k, n_dead) * DENSE_AUX_DENSITY >= n_dead

STREAM_BUFFER_ROWS = 65_536  # a streamed crosscoder's shuffle buffer: 64 batches of 1024, so rows of one
# sequence rarely share a batch (crosscoders.stream)


def encoder_dtype(device: str) -> str:
    """The encoder forward's dtype that `auto` picks on `device`: bfloat16 on a GPU that computes it and on a
    CPU with bf16 matrix units (AVX512-BF16 or AMX-BF16), float32 elsewhere: on an AVX2 CPU torch emulates
    bfloat16 and the whole training step ran 4.1x slower than in float32 (benches/bench_crosscoder.py)."""
    import torch

    if device.startswith("cuda"):
        return "bfloat16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "float32"
    if device == "cpu":
        caps = getattr(torch.cpu, "get_capabilities", dict)()  # torch releases before it: no bf16 units assumed
        return "bfloat16" if caps.get("avx512_bf16") or caps.get("amx_bf16") else "float32"
    return "float32"


def _f(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class CrossCoderConfig:
    """A crosscoder over `n_models` models' activations at one layer."""

    d_model: int = _f(0, "hidden size of each model's activations (the largest one when d_models is set)")
    n_models: int = _f(2, "number of models (2 for base vs tuned)")
    n_latents: int = _f(0, "dictionary size (number of latents)")
    k: int = _f(32, "active latents per row on average (BatchTopK); ignored by L1")
    batch_size: int = _f(1024, "rows per training step")
    n_steps: int = _f(2000, "training steps")
    lr: float = _f(1e-3, "Adam learning rate (after warmup)")
    k_anneal_steps: int = _f(0, "steps over which k anneals from 4k down to k; 0 = no annealing")
    dtype: str = _f("auto", "dtype of the dense encoder forward that picks the active latents (weights, "
                           "gradients and Adam stay float32); auto = encoder_dtype(device)")
    architecture: str = _f("batchtopk", "batchtopk (top k·B over the batch) or l1 (decoder-norm-weighted L1)")
    l1_coeff: float = _f(1.0, "L1 sparsity coefficient (architecture l1)")
    aux_k: int = _f(256, "latents used by the auxiliary loss that revives dead latents (BatchTopK)")
    aux_coeff: float = _f(1 / 32, "weight of the auxiliary dead-latent loss")
    dead_after: int = _f(200, "steps without firing after which a latent counts as dead")
    warmup_steps: int = _f(50, "linear learning-rate warmup steps")
    grad_clip: float = _f(1.0, "gradient-norm clipping threshold")
    threshold_ema: float = _f(0.99, "EMA decay of the inference threshold (BatchTopK)")
    seed: int = _f(0, "random seed (initialisation and batch order)")
    device: str = _f("cpu", "torch device")
    checkpoint_every: int = _f(0, "save a resumable checkpoint every N steps; 0 = never")
    log_every: int = _f(50, "append a metrics.jsonl row every N steps")
    d_models: tuple[int, ...] | None = _f(None, "hidden size per model when they differ (None = all d_model); "
                                                "smaller models are zero-padded to d_model")

    def __post_init__(self) -> None:
        if self.dtype == "auto":
            object.__setattr__(self, "dtype", encoder_dtype(self.device))  # cfg.json records what ran
        if self.d_models is not None:
            object.__setattr__(self, "d_models", tuple(int(d) for d in self.d_models))  # JSON gives a list
            self._check_d_models()
        if self.d_model < 1:
            raise ValueError(f"d_model must be >= 1, got {self.d_model}")
        if self.n_models < 2:
            raise ValueError(f"n_models must be >= 2 (a crosscoder compares models), got {self.n_models}")
        if self.n_latents < 1:
            raise ValueError(f"n_latents must be >= 1, got {self.n_latents}")
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"architecture {self.architecture!r} is not one of {ARCHITECTURES}")
        if self.architecture == "batchtopk" and not 0 < self.k < self.n_latents:
            raise ValueError(f"k must be in 1..n_latents-1 (k={self.k}, n_latents={self.n_latents})")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype {self.dtype!r} is not one of {DTYPES}")
        for name in ("batch_size", "n_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.k_anneal_steps < 0 or self.k_anneal_steps > self.n_steps:
            raise ValueError(f"k_anneal_steps must be in 0..n_steps ({self.k_anneal_steps}, n_steps={self.n_steps})")

    def _check_d_models(self) -> None:
        if len(self.d_models) != self.n_models or min(self.d_models) < 1:
            raise ValueError(f"d_models {self.d_models} must hold one hidden size >= 1 per model (n_models={self.n_models})")
        if self.d_model != max(self.d_models):
            raise ValueError(f"d_model ({self.d_model}) must equal max(d_models) = {max(self.d_models)} "
                             f"(d_models={self.d_models})")

    def model_dims(self) -> tuple[int, ...]:
        """The hidden size of every model (d_models, or d_model for each)."""
        return self.d_models or (self.d_model,) * self.n_models

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values (d_models as a list), so a dict read back from cfg.json compares equal."""
        data = dataclasses.asdict(self)
        if data["d_models"] is not None:
            data["d_models"] = list(data["d_models"])
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CrossCoderConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names - {"format_version"})
        if unknown:
            raise ValueError(f"unknown crosscoder config key(s) {', '.join(unknown)}; valid: {', '.join(sorted(names))}")
        return cls(**{k: v for k, v in data.items() if k in names})
