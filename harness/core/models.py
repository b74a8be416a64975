"""Model specs: resolve, load, and check that two models share a tokenizer.

A spec is a Hugging Face id, a local model directory, a `.gguf` file, or a PEFT adapter
directory (loaded on its base model and merged). Loading errors name the spec and say what a
valid one looks like; a tokenizer mismatch is reported before any model weights are loaded.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from diffeval.harness.core import progress
from diffeval.harness.core.errors import ModelSpecError, TokenizerMismatchError

log = logging.getLogger(__name__)

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
VALID_SPECS = "a Hugging Face id (org/name), a model directory with config.json, a .gguf file, or a PEFT adapter directory"


@dataclass(frozen=True)
class ModelSpec:
    """A resolved model spec. `kind` is one of hub, dir, gguf, peft."""

    spec: str
    kind: str
    path: str
    gguf_file: str | None = None
    adapter_base: ModelSpec | None = None

    @property
    def name(self) -> str:
        return Path(self.spec.rstrip("/")).name or self.spec


def resolve_spec(spec: str) -> ModelSpec:
    """Work out what kind of model `spec` names, without loading it."""
    p = Path(spec).expanduser()
    if p.is_file():
        if p.suffix != ".gguf":
            raise ModelSpecError(f"model {spec!r} is a file but not a .gguf file; expected {VALID_SPECS}")
        return ModelSpec(spec, "gguf", str(p.parent), gguf_file=p.name)
    if p.is_dir():
        if (p / "adapter_config.json").is_file():
            return ModelSpec(spec, "peft", str(p), adapter_base=resolve_spec(_adapter_base(p)))
        if (p / "config.json").is_file():
            return ModelSpec(spec, "dir", str(p))
        ggufs = sorted(p.glob("*.gguf"))
        if len(ggufs) == 1:
            return ModelSpec(spec, "gguf", str(p), gguf_file=ggufs[0].name)
        raise ModelSpecError(
            f"model directory {spec!r} holds no config.json, adapter_config.json or single .gguf file; "
            f"expected {VALID_SPECS}"
        )
    looks_local = spec.startswith((".", "/", "~")) or spec.endswith(".gguf") or spec.count("/") > 1
    if looks_local or not _HUB_ID.match(spec):
        raise ModelSpecError(f"model path {spec!r} does not exist; expected {VALID_SPECS}")
    return ModelSpec(spec, "hub", spec)


def _adapter_base(adapter_dir: Path) -> str:
    cfg = json.loads((adapter_dir / "adapter_config.json").read_text())
    base = cfg.get("base_model_name_or_path")
    if not base:
        raise ModelSpecError(f"PEFT adapter {adapter_dir} does not name its base (base_model_name_or_path)")
    if not Path(base).exists() and (adapter_dir / base).exists():
        base = str(adapter_dir / base)
    return base


def load_tokenizer(spec: ModelSpec) -> Any:
    from transformers import AutoTokenizer

    if spec.kind == "peft":
        has_own = any((Path(spec.path) / f).exists() for f in ("tokenizer.json", "tokenizer_config.json"))
        if not has_own:
            return load_tokenizer(spec.adapter_base)
    kwargs = {"gguf_file": spec.gguf_file} if spec.gguf_file else {}
    try:
        with progress.third_party_stderr(None):  # a GGUF tokenizer's conversion bar
            tok = AutoTokenizer.from_pretrained(spec.path, **kwargs)
    except Exception as e:  # transformers raises many types here; the user needs the spec and reason
        raise ModelSpecError(f"cannot load the tokenizer of {spec.spec!r}: {_first_line(e)}") from None
    if tok.pad_token is None and tok.eos_token is not None:  # many base models ship none; batches need one
        tok.pad_token = tok.eos_token
    return tok


def check_same_tokenizer(base_tok: Any, tuned_tok: Any, base_name: str, tuned_name: str) -> None:
    """Stop unless both tokenizers map the same strings to the same ids."""
    vb, vt = base_tok.get_vocab(), tuned_tok.get_vocab()
    if vb == vt:
        return
    only_b = sorted(set(vb) - set(vt), key=vb.get)
    only_t = sorted(set(vt) - set(vb), key=vt.get)
    moved = sorted((tok for tok in set(vb) & set(vt) if vb[tok] != vt[tok]), key=vb.get)
    parts = [f"vocabulary sizes {len(vb)} vs {len(vt)}"]
    if only_b:
        parts.append(f"{len(only_b)} tokens only in base (e.g. {only_b[:3]})")
    if only_t:
        parts.append(f"{len(only_t)} tokens only in tuned (e.g. {only_t[:3]})")
    if moved:
        tok = moved[0]
        parts.append(f"{len(moved)} tokens with different ids (e.g. {tok!r}: {vb[tok]} vs {vt[tok]})")
    raise TokenizerMismatchError(
        f"{base_name} and {tuned_name} do not share a tokenizer: " + "; ".join(parts)
        + ". Both models must use the same vocabulary and token ids."
    )


def check_device(device: str) -> None:
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelSpecError(f"device {device!r} requested but CUDA is not available here; use --device cpu")
    if device == "mps" and not torch.backends.mps.is_available():
        raise ModelSpecError("device 'mps' requested but MPS is not available here; use --device cpu")


def load_model(spec: ModelSpec, dtype: str = "float32", device: str = "cpu") -> Any:
    """Load a causal LM for `spec` in eval mode on `device`."""
    import torch
    from transformers import AutoModelForCausalLM

    check_device(device)
    torch_dtype = dtype if dtype == "auto" else getattr(torch, dtype)
    if spec.kind == "peft":
        from peft import PeftModel

        base = load_model(spec.adapter_base, dtype, device)
        try:
            model = PeftModel.from_pretrained(base, spec.path).merge_and_unload()
        except Exception as e:
            raise ModelSpecError(f"cannot apply PEFT adapter {spec.spec!r}: {_first_line(e)}") from None
        return model.eval()
    kwargs = {"gguf_file": spec.gguf_file} if spec.gguf_file else {}
    try:
        with progress.third_party_stderr(None):  # transformers' GGUF de-quantisation bar has no off switch
            model = AutoModelForCausalLM.from_pretrained(spec.path, dtype=torch_dtype, **kwargs)
    except Exception as e:
        hint = " (no network? pass a local directory instead)" if spec.kind == "hub" else ""
        raise ModelSpecError(f"cannot load model {spec.spec!r}{hint}: {_first_line(e)}") from None
    return model.to(device).eval()


def describe(spec: ModelSpec) -> dict[str, Any]:
    """Provenance of a spec: kind, path, and a short hash of its config where local."""

    out: dict[str, Any] = {"spec": spec.spec, "kind": spec.kind}
    if spec.kind in ("dir", "peft"):
        cfg = Path(spec.path) / ("adapter_config.json" if spec.kind == "peft" else "config.json")
        out["config_sha256"] = hashlib.sha256(cfg.read_bytes()).hexdigest()[:16]
        out["weights_mtime"] = max((f.stat().st_mtime for f in Path(spec.path).glob("*.safetensors")), default=None)
    if spec.kind == "gguf":
        st = (Path(spec.path) / spec.gguf_file).stat()
        out["gguf_size"], out["weights_mtime"] = st.st_size, st.st_mtime
    if spec.adapter_base:
        out["adapter_base"] = describe(spec.adapter_base)
    return out


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__
