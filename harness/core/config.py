"""Run configuration: frozen dataclasses whose field docs double as CLI help."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from diffeval.crosscoders.config import STORE_DTYPES
from diffeval.harness.core.errors import DiffevalError

T = TypeVar("T")

DTYPES = ("float32", "float16", "bfloat16", "auto")


def opt(default: Any, help: str, key: bool = True) -> Any:
    """A dataclass field with a one-line help text (shown by `--help` and in docs/options.md); `key=False`
    keeps it out of the stage cache keys (it does not change what a stage writes, as the device)."""
    meta = {"help": help} if key else {"help": help, "key": False}
    if isinstance(default, (list, dict, set)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


def field_help(cls: type, name: str) -> str:
    return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(cls)}[name]


@dataclass(frozen=True)
class BenchConfig:
    """Everything the bench stage needs; serialised as the run's config.json."""

    base: str = opt("", "base model: Hugging Face id, local directory, .gguf file or PEFT adapter directory")
    tuned: str = opt("", "tuned model, in the same forms as --base")
    tasks: tuple[str, ...] = opt((), "task names (shipped, from --tasks-dir, or lm-eval's); empty = the shipped suite")
    tasks_dir: tuple[str, ...] = opt((), "extra directories of lm-eval YAML tasks")
    limit: int | None = opt(None, "evaluate only the first N documents of each task (for quick checks)")
    num_fewshot: int | None = opt(None, "few-shot examples per prompt; unset = each task's own setting")
    apply_chat_template: bool = opt(False, "wrap prompts in the tuned model's chat template (both models)")
    batch_size: int = opt(8, "documents per forward pass")
    max_gen_toks: int | None = opt(None, "most new tokens per generation; unset = each task's own setting")
    device: str = opt("cpu", "torch device: cpu, cuda, cuda:1, mps", key=False)
    base_device: str | None = opt(None, "device of the base model (default: --device); with --tuned-device the two "
                                  "models sit on two devices, e.g. cuda:0 and cuda:1, for a pair one GPU cannot hold "
                                  "twice", key=False)
    tuned_device: str | None = opt(None, "device of the tuned model (default: --device)", key=False)
    bench_parallelize: bool = opt(False, "bench: let lm-eval shard each model over every visible GPU (its "
                                  "parallelize=True, accelerate's device_map='auto'), for a model one GPU cannot hold; "
                                  "the device options then apply to the later stages only", key=False)
    dtype: str = opt("float32", "weights dtype: float32, float16, bfloat16 or auto")
    seed: int = opt(1234, "seed for lm-eval sampling, the bootstrap and (in run) the crosscoder")
    bootstrap_iters: int = opt(2000, "resamples for the paired bootstrap CI")
    scores: str | None = opt(None, "CSV/JSON of externally measured scores to merge (task, base, tuned)")

    def __post_init__(self) -> None:
        if not self.base or not self.tuned:
            raise DiffevalError("both base and tuned models are required (--base A --tuned B)")
        if self.dtype not in DTYPES:
            raise DiffevalError(f"dtype {self.dtype!r} is not one of {', '.join(DTYPES)}")
        if self.batch_size < 1:
            raise DiffevalError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.limit is not None and self.limit < 1:
            raise DiffevalError(f"limit must be >= 1, got {self.limit}")
        if self.num_fewshot is not None and self.num_fewshot < 0:
            raise DiffevalError(f"num_fewshot must be >= 0, got {self.num_fewshot}")
        if self.max_gen_toks is not None and self.max_gen_toks < 1:
            raise DiffevalError(f"max_gen_toks must be >= 1, got {self.max_gen_toks}")
        if self.bootstrap_iters < 100:
            raise DiffevalError(f"bootstrap_iters must be >= 100, got {self.bootstrap_iters}")
        for name in ("device", "base_device", "tuned_device"):
            check_device_name(name, getattr(self, name))

    def device_of(self, role: str) -> str:
        """The device of the base or the tuned model: its own option, else --device."""
        return (self.base_device if role == "base" else self.tuned_device) or self.device

    def model_devices(self) -> tuple[str, ...]:
        """(base device, tuned device) when either has its own, else () (both on --device)."""
        return (self.device_of("base"), self.device_of("tuned")) if self.base_device or self.tuned_device else ()


def check_device_name(name: str, value: str | None) -> None:
    """A torch device string diffeval accepts (None: not set)."""
    if value is not None and not (value == "cpu" or value == "mps" or value.startswith("cuda")):
        raise DiffevalError(f"{name} {value!r} is not valid: use cpu, cuda, cuda:N or mps")


@dataclass(frozen=True)
class ActivationsConfig:
    base: str = field(default="", metadata={"help": "base model spec"})
    tuned: str = field(default="", metadata={"help": "tuned model spec"})
    layer: float = field(default=0.5, metadata={"help": "block index, or a fraction of depth in (0, 1) (0.5 = middle)"})
    tokens: int = field(default=50_000, metadata={"help": "activation rows (token positions) to collect"})
    seq_len: int = field(default=128, metadata={"help": "longest sequence, in tokens"})
    batch_size: int = field(default=16, metadata={"help": "sequences per forward pass"})
    corpus: tuple[str, ...] = field(default=(), metadata={"help": "corpus files (.txt: one text per line; .jsonl: a 'text' "
                                                                  "or a 'messages' field); none: the shipped corpus"})
    extra: tuple[str, ...] = field(default=(), metadata={"help": "more corpus files read beside the corpus (or the shipped one)"})
    tasks: tuple[str, ...] = field(default=(), metadata={"help": "benchmark tasks whose prompts join the corpus; with no corpus and no tasks: the shipped suite"})
    tasks_dir: tuple[str, ...] = field(default=(), metadata={"help": "extra task directories"})
    source_root: str | None = field(default=None, metadata={"key": False, "help": "corpus files under this directory are recorded by "
                                                                    "their path relative to it (so a run directory can move)"})
    shard_rows: int = field(default=65_536, metadata={"help": "rows per shard file"})
    outlier_factor: float = field(default=20.0, metadata={"help": "drop rows whose norm exceeds this × the median norm"})
    store_dtype: str = field(default="float32", metadata={"help": "dtype of stored activations: float32, float16 or "
                                                                  "bfloat16 (a run on a GPU stores bfloat16)"})
    device: str = field(default="cpu", metadata={"key": False, "help": "torch device"})
    model_devices: tuple[str, ...] = field(default=(), metadata={"key": False, "help": "(base, tuned) devices when "
                                                                "they differ from --device"})
    dtype: str = field(default="float32", metadata={"help": "model weights dtype"})

    def __post_init__(self) -> None:
        if self.tokens < 1 or self.seq_len < 2 or self.batch_size < 1 or self.shard_rows < 1:
            raise DiffevalError("tokens, batch_size and shard_rows must be >= 1 and seq_len >= 2")
        if self.store_dtype not in STORE_DTYPES:
            raise DiffevalError(f"store_dtype {self.store_dtype!r} must be one of {', '.join(STORE_DTYPES)}")
        if self.layer < 0:
            raise DiffevalError(f"layer must be >= 0 (a block index or a fraction of depth), got {self.layer}")


def to_dict(cfg: Any) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(cfg).items()}


def from_dict(cls: type[T], data: dict[str, Any], source: str = "config") -> T:
    """Build `cls` from a dict, rejecting keys it does not know (a typo must not be silently ignored)."""
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise DiffevalError(f"{source}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(names)}")
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
    return cls(**kwargs)


def config_hash(cfg: Any, *extra: Any) -> str:
    """A stable hash of a config (and any extra inputs) used to decide whether a stage can be skipped."""
    blob = json.dumps([cfg if isinstance(cfg, dict) else to_dict(cfg), *extra], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML or JSON config file into a dict."""

    path = Path(path)
    if not path.is_file():
        raise DiffevalError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise DiffevalError(f"config file {path} is not valid YAML/JSON: {e}") from None
    if not isinstance(data, dict):
        raise DiffevalError(f"config file {path} must hold a mapping of option: value")
    return data
