"""The crosscoder classes by architecture name, and loading any saved crosscoder."""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import load_file

from diffeval.crosscoders.base import FORMAT_VERSION, CrossCoderBase
from diffeval.crosscoders.batchtopk import BatchTopKCrossCoder
from diffeval.crosscoders.config import ARCHITECTURES, CrossCoderConfig
from diffeval.crosscoders.files import CFG_FILE, WEIGHTS_FILE
from diffeval.crosscoders.interop import HUB_WEIGHTS, from_dictionary_learning
from diffeval.crosscoders.l1 import L1CrossCoder

CLASSES: dict[str, type[CrossCoderBase]] = dict(zip(ARCHITECTURES, (BatchTopKCrossCoder, L1CrossCoder), strict=True))


def build_crosscoder(cfg: CrossCoderConfig) -> CrossCoderBase:
    """A freshly initialised crosscoder of `cfg.architecture`."""
    return CLASSES[cfg.architecture](cfg)


def load_crosscoder(directory: str | Path, device: str = "cpu") -> CrossCoderBase:
    """Load any architecture saved by `CrossCoderBase.save` (the class is chosen from cfg.json), or a
    dictionary_learning crosscoder (a folder of model.safetensors + config.json, or a .pt/.safetensors state
    dict: see crosscoders.interop), converted on the way.

    A missing or corrupt cfg.json or weights file, or a format version this code does not read, is a
    ValueError naming the file."""
    directory = Path(directory)
    if directory.is_file() or (directory.is_dir() and not (directory / CFG_FILE).exists()
                               and (directory / HUB_WEIGHTS).exists()):
        return from_dictionary_learning(directory).to(device)
    try:
        meta = json.loads((directory / CFG_FILE).read_text())
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{directory} is not a saved crosscoder ({CFG_FILE}: {e})") from None
    if not isinstance(meta, dict) or meta.get("format_version") != FORMAT_VERSION:
        found = meta.get("format_version") if isinstance(meta, dict) else None
        raise ValueError(f"{directory / CFG_FILE}: crosscoder format_version {found} is not {FORMAT_VERSION}")
    arch = meta.get("architecture")  # also a config field: keep it, or an L1 crosscoder reloads as BatchTopK
    if arch not in CLASSES:
        raise ValueError(f"{directory / CFG_FILE}: architecture {arch!r} is not one of {', '.join(ARCHITECTURES)}")
    try:
        model = CLASSES[arch](CrossCoderConfig.from_dict({k: v for k, v in meta.items() if k != "format_version"}))
    except (TypeError, ValueError) as e:
        raise ValueError(f"{directory / CFG_FILE} is not a valid crosscoder config: {e}") from None
    try:
        model.load_state_dict(load_file(str(directory / WEIGHTS_FILE), device=device))
    except Exception as e:  # safetensors raises its own error types for truncated or foreign files
        raise ValueError(f"{directory / WEIGHTS_FILE} is missing or corrupt: {e}") from None
    return model.to(device)
