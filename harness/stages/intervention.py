"""Editing a category's latents inside the tuned model: forward hooks at the crosscoder's block.

At that block the tuned model's hidden state h_T is replaced, at every position, by

    ablate:  h_T − Σ_{j∈S} f_j(x) · W_dec[j, tuned] / act_scale[tuned]
    revert:  h_T − Σ_{j∈S} f_j(x) · (W_dec[j, tuned] / act_scale[tuned] − W_dec[j, base] / act_scale[base])

where f = encode((h_B, h_T)) and h_B is the base model's hidden state at the same block for the same
token ids (the base model runs alongside, stopped after that block). `causal` re-scores tasks with it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

from diffeval.harness.core.errors import DiffevalError
from diffeval.harness.core.runconfig import CAUSAL_MODES
from diffeval.harness.stages.activations import decoder_blocks, truncated_hidden

log = logging.getLogger(__name__)

ENCODE_CHUNK = 4096  # rows per crosscoder encode call: bounds the [rows, n_latents] buffer


class LatentAblation:
    """Hooks that ablate (or revert) `latents` in the tuned model's residual stream at one block.

    Use as a context manager: inside it the tuned model (returned by `__enter__`) runs with the
    ablation; on exit the hooks are removed. Generation with a KV cache works: the tokens seen so far
    are kept, so the base model (which has no cache here) always sees the whole sequence.
    """

    def __init__(self, base_model: Any, tuned_model: Any, crosscoder: Any, layer: int | Sequence[int],
                 latents: Iterable[int], skip_token_ids: Iterable[int] = (), mode: str = "ablate") -> None:
        import torch


        if base_model is tuned_model:
            raise DiffevalError("ablated_model needs two distinct model objects (base and tuned)")
        if crosscoder.cfg.n_models != 2:
            raise DiffevalError(f"the crosscoder covers {crosscoder.cfg.n_models} models; the causal check needs 2 "
                                "(model 0 base, model 1 tuned)")
        self.base_model, self.tuned_model, self.crosscoder = base_model, tuned_model, crosscoder
        self.layers = (int(layer), int(layer)) if isinstance(layer, int) else tuple(int(v) for v in layer)
        self.blocks = (decoder_blocks(base_model), decoder_blocks(tuned_model))
        for blocks, at, role in zip(self.blocks, self.layers, ("base", "tuned"), strict=True):
            if not 0 <= at < len(blocks):
                raise DiffevalError(f"layer {at} is out of range for the {role} model ({len(blocks)} blocks)")
        self.latents = check_latents(latents, crosscoder.cfg.n_latents)
        if mode not in CAUSAL_MODES:
            raise DiffevalError(f"ablation mode {mode!r} is not one of {', '.join(CAUSAL_MODES)}")
        dims = crosscoder.cfg.d_models
        if mode == "revert" and dims is not None and len(set(dims)) > 1:
            raise DiffevalError(f"mode 'revert' writes the base model's decoder into the tuned model, which needs one "
                                f"hidden size; these models have {dims[0]} and {dims[1]} (use mode 'ablate')")
        self.mode = mode
        self.skip_token_ids = torch.tensor(sorted(set(skip_token_ids)), dtype=torch.long)
        if getattr(crosscoder, "threshold", None) is not None and float(crosscoder.threshold) < 0:
            log.warning("the BatchTopK crosscoder has no inference threshold: latent activations will depend "
                        "on the batch")
        self.calls = 0  # block outputs ablated so far (tests check the hook really ran)
        self._handles: list[Any] = []
        self._ids = self._pos = self._new_ids = self._h_base = None
        self._W: tuple[Any, Any] | None = None

    def __enter__(self) -> Any:
        self._handles = [
            self.tuned_model.register_forward_pre_hook(self._stash_inputs, with_kwargs=True),
            self.blocks[1][self.layers[1]].register_forward_hook(self._ablate),
        ]
        return self.tuned_model

    def __exit__(self, *exc: Any) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._ids = self._pos = self._new_ids = self._h_base = None

    # -- hooks -----------------------------------------------------------------------------------
    def _stash_inputs(self, _module: Any, args: tuple, kwargs: dict) -> None:
        """Before each tuned forward: the base hidden state for the same tokens."""
        import torch

        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is None:
            raise DiffevalError("the ablated model needs input_ids (inputs_embeds are not supported)")
        mask, pos = kwargs.get("attention_mask"), kwargs.get("position_ids")
        past = _cached_length(kwargs, ids, mask)
        if past == 0:
            self._ids, self._pos = ids, pos
        else:  # a generation step: extend what the cache has seen
            if self._ids is None or self._ids.shape[1] != past:
                raise DiffevalError(f"ablation hook: the tuned model's cache holds {past} tokens but the hook saw "
                                    f"{None if self._ids is None else self._ids.shape[1]}; start a new generation")
            self._ids = torch.cat([self._ids, ids], 1)
            self._pos = None if pos is None or self._pos is None else torch.cat([self._pos, pos], 1)
        self._new_ids = ids
        self._h_base = self._base_hidden(mask)[:, -ids.shape[1]:]

    def _base_hidden(self, mask: Any) -> Any:
        import torch


        pos = self._pos

        def base(**kwargs: Any) -> Any:  # same position ids as the tuned model got (absolute-position models)
            return self.base_model(**kwargs, **({} if pos is None else {"position_ids": pos}))

        with torch.no_grad():
            return truncated_hidden(base, self.blocks[0], self.layers[0], self._ids, mask)

    def _ablate(self, _module: Any, _inputs: Any, output: Any) -> Any:
        """After the tuned block: subtract the ablated latents' decoded contribution."""
        h = output[0] if isinstance(output, tuple) else output  # [batch, seq, d_tuned]
        if self._h_base is None or self._h_base.shape[:2] != h.shape[:2]:
            raise DiffevalError("ablation hook: the tuned block ran without a matching base hidden state "
                                "(was the block called outside the model's forward?)")
        drop = self.contribution(self._h_base, h)
        if len(self.skip_token_ids):
            keep = ~_isin(self._new_ids, self.skip_token_ids)
            drop = drop * keep[..., None].to(drop.dtype)
        self.calls += 1
        new = h - drop.to(h.dtype)
        return (new, *output[1:]) if isinstance(output, tuple) else new

    # -- the ablation itself -----------------------------------------------------------------------
    def contribution(self, h_base: Any, h_tuned: Any) -> Any:
        """What the hook subtracts, in the tuned model's raw units: Σ_{j∈S} f_j · W_dec[j, tuned] / act_scale[tuned]
        (ablate), minus the same with the base decoder and scale (revert).

        h_base [batch, seq, d_base], h_tuned [batch, seq, d_tuned] → [batch, seq, d_tuned] (float32).
        """
        import torch

        cc = self.crosscoder
        d, d_tuned = cc.cfg.d_model, h_tuned.shape[-1]
        dev = cc.W_dec.device
        with torch.no_grad():
            x = torch.stack([_pad(h_base.float(), d), _pad(h_tuned.float(), d)], dim=-2)  # [batch, seq, 2, d]
            x = x.reshape(-1, 2, d).to(dev)
            idx, W = self._decoder(d_tuned)
            f = torch.cat([cc.encode(chunk)[:, idx] for chunk in x.split(ENCODE_CHUNK)])  # [rows, |S|]
            return (f @ W).reshape(*h_tuned.shape[:-1], d_tuned).to(h_tuned.device)

    def _decoder(self, d_tuned: int) -> tuple[Any, Any]:
        """(latent ids, [|S|, d_tuned] what one unit of each latent adds in raw units), built once per width."""
        import torch

        if self._W is None or self._W[1].shape[1] != d_tuned:
            cc = self.crosscoder
            idx = torch.tensor(self.latents, dtype=torch.long, device=cc.W_dec.device)
            W = cc.W_dec[idx, 1, :d_tuned] / cc.act_scale[1]
            if self.mode == "revert":
                W = W - cc.W_dec[idx, 0, :d_tuned] / cc.act_scale[0]
            self._W = (idx, W.detach())
        return self._W


def ablated_model(base_model: Any, tuned_model: Any, crosscoder: Any, layer: int | Sequence[int],
                  latents: Iterable[int], *, skip_token_ids: Iterable[int] = (), mode: str = "ablate") -> LatentAblation:
    """A context manager yielding `tuned_model` with `latents` ablated (or reverted, `mode`) at block `layer`.

    `layer` is one block index or (base_block, tuned_block). Positions holding a token in
    `skip_token_ids` (e.g. BOS, which activation collection drops) are left alone. The yielded
    model can be handed to lm-eval: `HFLM(pretrained=model, tokenizer=tok)`.
    """
    return LatentAblation(base_model, tuned_model, crosscoder, layer, latents, skip_token_ids, mode)


def check_latents(latents: Iterable[int], n_latents: int) -> list[int]:
    """Sorted, unique latent ids, each in 0..n_latents-1."""
    try:
        ids = sorted({int(j) for j in latents})
    except (TypeError, ValueError):
        raise DiffevalError(f"latents must be integer ids, got {latents!r}") from None
    bad = [j for j in ids if not 0 <= j < n_latents]
    if bad:
        raise DiffevalError(f"latent ids {bad[:5]} are out of range: the crosscoder has latents 0..{n_latents - 1}")
    return ids


def _cached_length(kwargs: dict, ids: Any, mask: Any) -> int:
    """Tokens already in the KV cache (0 for a fresh forward)."""
    for name in ("past_key_values", "cache"):  # the keyword changed across transformers versions
        cache = kwargs.get(name)
        if cache is not None and hasattr(cache, "get_seq_length"):
            return int(cache.get_seq_length())
    return 0 if mask is None else max(0, mask.shape[1] - ids.shape[1])


def _pad(h: Any, d: int) -> Any:
    """Zero-pad the last dimension to d (a smaller model inside a crosscoder of width d)."""
    import torch

    if h.shape[-1] > d:
        raise DiffevalError(f"hidden size {h.shape[-1]} exceeds the crosscoder's d_model {d}")
    return h if h.shape[-1] == d else torch.nn.functional.pad(h, (0, d - h.shape[-1]))


def _isin(ids: Any, values: Any) -> Any:
    import torch

    return torch.isin(ids, values.to(ids.device))
