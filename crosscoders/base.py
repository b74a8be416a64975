"""Shared parts of every crosscoder: parameters, initialisation, decoding, saving and loading.

Shapes (n = n_models, d = d_model, L = n_latents):
  W_enc [n, d, L]   b_enc [L]   W_dec [L, n, d]   b_dec [n, d]
W_enc is stored transposed (parameter W_enc_T, [L, n, d]) so that the sparse encoder gradient is
formed in its storage layout without a transposing copy; `W_enc` is a view in the usual layout.
Activations are [batch, n, d]; latent activations are [batch, L].

Models of different hidden size (cfg.d_models) share these shapes with d = max(d_models): a smaller
model's activations are zero-padded, and its padded encoder/decoder/bias entries are held at exactly
zero (`dim_mask`), so norms, cosines and FVE only ever see each model's real dimensions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from diffeval.crosscoders.config import CrossCoderConfig
from diffeval.crosscoders.files import CFG_FILE, WEIGHTS_FILE, write_json_atomic
from diffeval.crosscoders.stats import latent_stats

FORMAT_VERSION = 1


class CrossCoderBase(nn.Module):
    """Encoder/decoder over several models' activations at one layer."""

    architecture = "base"

    def __init__(self, cfg: CrossCoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        n, d, L = cfg.n_models, cfg.d_model, cfg.n_latents
        gen = torch.Generator().manual_seed(cfg.seed)
        # [n, d]: 1 on each model's real dimensions, 0 on padding (None when all models have d_model)
        dims = cfg.model_dims()
        mask = (torch.arange(d)[None, :] < torch.tensor(dims)[:, None]).float() if min(dims) < d else None
        self.register_buffer("dim_mask", mask, persistent=False)
        W_dec = torch.randn(L, n, d, generator=gen)
        if mask is not None:
            W_dec = W_dec * mask
        # decoder rows start at norm 0.1 per model; the encoder is the decoder's transpose (W_enc = W_decᵀ)
        W_dec = 0.1 * W_dec / W_dec.norm(dim=-1, keepdim=True)
        self.W_dec = nn.Parameter(W_dec)
        self.W_enc_T = nn.Parameter(W_dec.clone())
        self.b_enc = nn.Parameter(torch.zeros(L))
        self.b_dec = nn.Parameter(torch.zeros(n, d))
        # per-model scale that maps raw activations to mean squared norm d (saved with the weights)
        self.register_buffer("act_scale", torch.ones(n))

    @property
    def W_enc(self) -> torch.Tensor:
        """Encoder weights [n_models, d_model, n_latents] (a view of W_enc_T)."""
        return self.W_enc_T.permute(1, 2, 0)

    def enc_matrix(self) -> torch.Tensor:
        """Encoder weights as [n_latents, n_models * d_model] (contiguous, no copy)."""
        return self.W_enc_T.reshape(self.cfg.n_latents, -1)

    # -- shapes ------------------------------------------------------------------------------------
    def flat_in(self, x: torch.Tensor) -> torch.Tensor:
        """[batch, n, d] raw activations -> [batch, n*d] scaled and flattened (padding forced to 0)."""
        scale = self.act_scale[None, :, None] if self.dim_mask is None else self.act_scale[:, None] * self.dim_mask
        return (x * scale).reshape(x.shape[0], -1)

    @torch.no_grad()
    def mask_padding(self) -> None:
        """Zero the padded entries of W_enc, W_dec and b_dec (after init and each optimizer step).

        Their gradients are already zero (padded inputs and targets are zero), so this only guards
        against drift; it is a no-op when every model has d_model dimensions."""
        if self.dim_mask is not None:
            for p in (self.W_dec, self.W_enc_T, self.b_dec):
                p.mul_(self.dim_mask)

    def dec_norms(self) -> torch.Tensor:
        """‖d_j^m‖ for every latent and model: [L, n]."""
        return self.W_dec.norm(dim=-1)

    def pre_acts(self, x: torch.Tensor) -> torch.Tensor:
        """Encoder pre-activations [batch, L] (x raw, [batch, n, d])."""
        return torch.addmm(self.b_enc, self.flat_in(x), self.enc_matrix().t())

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        """Latent activations [batch, L] -> reconstruction [batch, n, d] in the scaled space."""
        n, d = self.cfg.n_models, self.cfg.d_model
        return (f @ self.W_dec.reshape(self.cfg.n_latents, -1)).reshape(-1, n, d) + self.b_dec

    def encode(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - each architecture defines it
        raise NotImplementedError

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruction of raw x in raw units: [batch, n, d]."""
        return self.decode(self.encode(x)) / self.act_scale[None, :, None]

    # -- initialisation from data --------------------------------------------------------------------
    @torch.no_grad()
    def init_from_data(self, sample: torch.Tensor) -> None:
        """Set act_scale from a sample of raw activations and b_dec to their geometric median."""
        sample = sample.float() if self.dim_mask is None else sample.float() * self.dim_mask
        # every model is scaled to the same mean squared norm (d_model), also when hidden sizes differ,
        # so that a direction equally important to both models gets equal decoder norms (Δnorm ≈ ½)
        sq = sample.pow(2).sum(-1).mean(0)  # [n]
        self.act_scale.copy_((self.cfg.d_model / sq).sqrt())
        scaled = sample * self.act_scale[None, :, None]
        for m, d_m in enumerate(self.cfg.model_dims()):
            self.b_dec[m, :d_m] = geometric_median(scaled[:, m, :d_m])
        self.mask_padding()

    # -- persistence -----------------------------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tmp = directory / f".{WEIGHTS_FILE}.tmp"
        save_file({k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}, str(tmp))
        tmp.replace(directory / WEIGHTS_FILE)
        write_json_atomic(directory / CFG_FILE, {"format_version": FORMAT_VERSION, "architecture": self.architecture,
                                                 **self.cfg.to_dict()})
        return directory

    def latent_stats(self, acts: Any, **kwargs: Any) -> Any:
        """One row per latent (Δnorm, cosine, ν_ε, ν_r, frequency, class): see crosscoders.stats."""

        return latent_stats(self, acts, **kwargs)


@torch.no_grad()
def geometric_median(points: torch.Tensor, iters: int = 50, eps: float = 1e-6) -> torch.Tensor:
    """Weiszfeld's algorithm: the point minimising the sum of Euclidean distances to `points`."""
    guess = points.mean(0)
    for _ in range(iters):
        w = 1 / (points - guess).norm(dim=-1).clamp_min(eps)
        new = (w[:, None] * points).sum(0) / w.sum()
        if (new - guess).norm() < eps * (1 + guess.norm()):
            return new
        guess = new
    return guess
