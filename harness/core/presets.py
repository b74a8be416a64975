"""Crosscoder budgets by name (`--preset quick|standard|paper`) and the one a pair gets when none is named.

A preset sets four options: activation tokens, dictionary size (as an expansion of the hidden size), k and
training steps. An option given on the command line or in a --config file wins over the preset.

- quick: a first look (and the toy organisms): 50 000 rows, 8 × hidden latents, k 32, 2000 steps.
- standard: a real pair on one GPU: 2 M rows, 16 × hidden, k 64, 8000 steps (about 4 passes).
- paper: the published recipes for pairs such as Gemma-2-2B vs -it (about 100 M tokens, 32 × expansion,
  k = 100): 100 M rows, 32 × hidden, k 100, one pass of batch 1024, streamed (`--stream`: no disk cache of
  the 100 M rows, whose size `plan` prints).

Without --preset: `quick` on a CPU or for models under 100 M parameters, `standard` on a GPU otherwise.
`paper` is never chosen for you (its activation cache runs to terabytes; `plan` prints the size).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from diffeval.harness.core.errors import DiffevalError

EXPANSION = 8  # n_latents = EXPANSION × the hidden size when n_latents is 0 (runconfig.n_latents_for)


@dataclass(frozen=True)
class Preset:
    tokens: int
    expansion: int
    k: int
    n_steps: int
    summary: str
    stream: bool = False  # train on activations computed on the fly (no disk cache of `tokens` rows)


PRESETS = {
    "quick": Preset(50_000, 8, 32, 2000, "a first look; the toy organisms"),
    "standard": Preset(2_000_000, 16, 64, 8000, "a real pair on one GPU"),
    "paper": Preset(100_000_000, 32, 100, 97_657, "the published crosscoder recipes (about 100 M tokens, 32×, k 100); "
                    "streamed", stream=True),
}
SMALL_MODEL = 100e6  # parameters below which a pair gets `quick` on any device
FIELDS = ("tokens", "n_latents", "k", "n_steps")


def auto_preset(device: str, n_params: int) -> str:
    """The preset a pair gets when none is named: quick on a CPU or for small models, else standard."""
    return "quick" if device == "cpu" or n_params < SMALL_MODEL else "standard"


def preset_values(name: str, d_model: int) -> dict[str, Any]:
    """The four options `name` sets for a model of hidden size `d_model` (0 = unknown: n_latents stays
    automatic, EXPANSION × the hidden size at the crosscoder stage)."""
    if name not in PRESETS:
        raise DiffevalError(f"preset {name!r} is not one of {', '.join(PRESETS)}")
    p = PRESETS[name]
    # 0 is "EXPANSION × the hidden size", resolved at the crosscoder stage: kept where it says the same
    n_latents = 0 if p.expansion == EXPANSION or not d_model else p.expansion * d_model
    return {"tokens": p.tokens, "n_latents": n_latents, "k": p.k, "n_steps": p.n_steps}


def apply_preset(name: str, given: dict[str, Any], d_model: int) -> dict[str, Any]:
    """`given` (the options set by flags or the config file) completed with preset `name`'s values for the
    options it leaves unset (and --stream, where it is not given, as the preset says)."""
    values = {**preset_values(name, d_model), "stream": PRESETS[name].stream}
    return {**given, **{k: v for k, v in values.items() if given.get(k) is None}, "preset": name}
