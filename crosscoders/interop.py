"""Crosscoders in science-of-finetuning's `dictionary_learning` layout: import them, export ours.

That library's `BatchTopKCrossCoder` state dict holds (n = models, d = d_model, L = latents):
  encoder.weight [n, d, L]   encoder.bias [L]   decoder.weight [n, L, d]   decoder.bias [n, d]
  k, threshold, code_normalization_id, and (newer versions) the activation normaliser:
  activation_mean [n, d], activation_std [n, d], target_rms, activation_global_scale [n].
Its inference rule, for activations x [batch, n, d]:
  x' = (x − mean) · global_scale            (when a normaliser is stored; else x' = x)
  a  = relu(Σ_m x'_m · encoder.weight[m] + encoder.bias)
  f  = a · (a · Σ_m ‖decoder.weight[m, j]‖ > threshold)     (code normalisation CROSSCODER)
  x̂  = (f · decoder.weight + decoder.bias) / global_scale + mean

diffeval's BatchTopK crosscoder computes the same thing with a per-model scale and no mean, so a
normaliser's mean is folded into the biases (b_enc − Σ_m g_m·mean_m·W_enc[m], b_dec + g_m·mean_m) and its
global scale becomes `act_scale`: encodings and reconstructions agree to float rounding. A checkpoint
whose threshold was never estimated (< 0) fires every latent with a positive activation there, which is
threshold 0 here. Other code normalisations (SAE, MIXED, NONE, DECOUPLED) and per-neuron normalisers rank
latents differently and are refused with the reason.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import snapshot_download
from safetensors.torch import load_file, save_file

from diffeval.crosscoders.batchtopk import BatchTopKCrossCoder
from diffeval.crosscoders.config import CrossCoderConfig
from diffeval.crosscoders.files import write_json_atomic

log = logging.getLogger(__name__)

FORMATS = ("dictionary_learning",)
CROSSCODER_CODE_NORM = 1  # dictionary_learning's CodeNormalization.CROSSCODER (enum values start at 1)
CODE_NORMS = {1: "CROSSCODER", 2: "SAE", 3: "MIXED", 4: "NONE", 5: "DECOUPLED"}
HUB_WEIGHTS, HUB_CONFIG = "model.safetensors", "config.json"
REQUIRED = ("encoder.weight", "encoder.bias", "decoder.weight", "decoder.bias")


def read_state(source: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The state dict and hub config ({} for a bare file) of a checkpoint: a `.pt` state dict, a
    `.safetensors` file, a folder holding model.safetensors + config.json, or a hub repository id."""
    path = Path(source)
    if path.is_dir():
        weights, config = path / HUB_WEIGHTS, path / HUB_CONFIG
        if not weights.is_file():
            raise ValueError(f"{path} holds no {HUB_WEIGHTS} (a dictionary_learning hub folder has {HUB_WEIGHTS} "
                             f"and {HUB_CONFIG}; or pass the .pt state dict itself)")
        meta = json.loads(config.read_text()) if config.is_file() else {}
        return load_file(str(weights)), meta
    if path.is_file():
        if path.suffix == ".safetensors":
            return load_file(str(path)), {}
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # pickle and zip errors have many types
            raise ValueError(f"{path} is not a torch state dict ({type(e).__name__}: {e})") from None
        if not isinstance(state, dict):
            raise ValueError(f"{path} holds a {type(state).__name__}, not a state dict")
        # a checkpoint saved from a torch.compile'd module prefixes every key
        return {k.removeprefix("_orig_mod."): v for k, v in state.items()}, {}
    if str(source).count("/") == 1 and not str(source).startswith((".", "/")):
        return read_state(_from_hub(str(source)))
    raise ValueError(f"{source} does not exist (pass a .pt state dict, a .safetensors file, a folder with "
                     f"{HUB_WEIGHTS} + {HUB_CONFIG}, or a hub repository id such as org/name)")


def _from_hub(repo: str) -> Path:
    try:
        return Path(snapshot_download(repo, allow_patterns=[HUB_WEIGHTS, HUB_CONFIG]))
    except Exception as e:  # offline, unknown repository, no access
        raise ValueError(f"cannot download {repo} from the hub ({type(e).__name__}: {e})") from None


def from_dictionary_learning(source: str | Path) -> BatchTopKCrossCoder:
    """A diffeval BatchTopK crosscoder equal, in encodings and reconstructions, to the checkpoint at `source`."""
    state, meta = read_state(source)
    missing = [k for k in REQUIRED if k not in state]
    if missing:
        raise ValueError(f"{source} is not a dictionary_learning crosscoder: no {', '.join(missing)} "
                         f"(it has {', '.join(sorted(state)[:8])})")
    enc, dec = state["encoder.weight"].float(), state["decoder.weight"].float()
    if enc.dim() != 3 or dec.dim() != 3:
        raise ValueError(f"{source}: encoder.weight {tuple(enc.shape)} and decoder.weight {tuple(dec.shape)} must be "
                         "[n_models, d_model, n_latents] and [n_models, n_latents, d_model] (a crosscoder, not an SAE)")
    n, d, n_latents = enc.shape
    if tuple(dec.shape) != (n, n_latents, d):
        raise ValueError(f"{source}: decoder.weight {tuple(dec.shape)} does not match encoder.weight {tuple(enc.shape)} "
                         f"(expected {(n, n_latents, d)})")
    _check_code_normalization(source, state, meta)
    k = int(state["k"]) if "k" in state else int(meta.get("k", 0))
    if not 0 < k < n_latents:
        raise ValueError(f"{source}: k = {k} is not in 1..{n_latents - 1} (the checkpoint's k buffer or config.json 'k')")
    scale, mean = _normaliser(source, state, n, d)
    model = BatchTopKCrossCoder(CrossCoderConfig(d_model=d, n_models=n, n_latents=n_latents, k=k))
    with torch.no_grad():
        model.W_enc_T.copy_(enc.permute(2, 0, 1))
        model.W_dec.copy_(dec.permute(1, 0, 2))
        model.act_scale.copy_(scale)
        shift = scale[:, None] * mean  # [n, d]: the normaliser's mean in the scaled space
        model.b_enc.copy_(state["encoder.bias"].float() - torch.einsum("md,mdl->l", shift, enc))
        model.b_dec.copy_(state["decoder.bias"].float() + shift)
        threshold = float(state["threshold"]) if "threshold" in state else -1.0
        if threshold < 0:
            log.warning("%s has no estimated threshold (%.3g): every latent with a positive activation fires, "
                        "as in the source's encode", source, threshold)
        model.threshold.fill_(max(threshold, 0.0))
    return model


def _check_code_normalization(source: Any, state: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    if "code_normalization_id" in state:
        code = int(state["code_normalization_id"])
    else:  # older checkpoints have none and mean CROSSCODER; a hub config may name it
        code = {v: c for c, v in CODE_NORMS.items()}.get(str(meta.get("code_normalization", "CROSSCODER")).upper(), -1)
    if code != CROSSCODER_CODE_NORM:
        raise ValueError(f"{source}: code normalisation {CODE_NORMS.get(code, code)} is not supported (diffeval "
                         "ranks latents by Σ_m ‖d_j^m‖, dictionary_learning's CROSSCODER normalisation)")
    if "threshold" in state and state["threshold"].numel() != 1:
        raise ValueError(f"{source}: a per-model threshold (decoupled codes) is not supported")


def _normaliser(source: Any, state: dict[str, torch.Tensor], n: int, d: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(per-model scale [n], mean [n, d]) of the checkpoint's activation normaliser; (1, 0) without one."""
    mean, std = state.get("activation_mean"), state.get("activation_std")
    if mean is None or std is None or torch.isnan(mean).any() or torch.isnan(std).any():
        return torch.ones(n), torch.zeros(n, d)
    scale = state.get("activation_global_scale")
    if scale is None or tuple(scale.shape) != (n,):
        raise ValueError(f"{source}: its activation normaliser is per neuron (no activation_global_scale of shape "
                         f"({n},)); only keep_relative_variance normalisers can be imported")
    return scale.float(), mean.float().reshape(n, d)


def to_dictionary_learning(model: BatchTopKCrossCoder) -> dict[str, torch.Tensor]:
    """A diffeval BatchTopK crosscoder as a dictionary_learning `BatchTopKCrossCoder` state dict (with a
    normaliser of zero mean whose global scale is our act_scale: the source then encodes as we do)."""
    if not isinstance(model, BatchTopKCrossCoder):
        raise ValueError(f"only BatchTopK crosscoders have a dictionary_learning layout (this one is {model.architecture})")
    if model.cfg.d_models is not None:
        raise ValueError(f"models of different hidden sizes {model.cfg.d_models} have no dictionary_learning layout")
    n, d = model.cfg.n_models, model.cfg.d_model
    scale = model.act_scale.detach().float().cpu()
    # the source computes global_scale = target_rms / sqrt(Σ std² + 1e-8): std = 1/(scale·√d) gives back `scale`
    std = (1.0 / (scale * d ** 0.5))[:, None].expand(n, d).contiguous()
    return {
        "encoder.weight": model.W_enc.detach().float().cpu().contiguous(),
        "encoder.bias": model.b_enc.detach().float().cpu().contiguous(),
        "decoder.weight": model.W_dec.detach().float().cpu().permute(1, 0, 2).contiguous(),
        "decoder.bias": model.b_dec.detach().float().cpu().contiguous(),
        "k": torch.tensor(model.cfg.k, dtype=torch.int),
        "threshold": model.threshold.detach().float().cpu().reshape(()).clone(),
        "code_normalization_id": torch.tensor(CROSSCODER_CODE_NORM, dtype=torch.int),
        "activation_mean": torch.zeros(n, d),
        "activation_std": std,
        "target_rms": torch.tensor(1.0),
        "activation_global_scale": scale.clone(),
    }


def hub_config(model: BatchTopKCrossCoder) -> dict[str, Any]:
    """config.json for the hub layout: the constructor arguments dictionary_learning's from_pretrained reads."""
    return {"activation_dim": model.cfg.d_model, "dict_size": model.cfg.n_latents, "num_layers": model.cfg.n_models,
            "k": model.cfg.k, "code_normalization": CODE_NORMS[CROSSCODER_CODE_NORM]}


def save_dictionary_learning(model: BatchTopKCrossCoder, out: str | Path) -> Path:
    """Write `model` in dictionary_learning's layout: a `.pt` path gets the state dict, any other path becomes
    a hub folder of model.safetensors + config.json. Each file is written whole or not at all."""
    out = Path(out)
    state = to_dictionary_learning(model)
    if out.suffix == ".pt":
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.tmp")
        torch.save(state, tmp)
        tmp.replace(out)
        return out
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".{HUB_WEIGHTS}.tmp"
    save_file(state, str(tmp))
    tmp.replace(out / HUB_WEIGHTS)
    write_json_atomic(out / HUB_CONFIG, hub_config(model))
    return out
