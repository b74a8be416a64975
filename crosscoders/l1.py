"""L1 crosscoder (Lindsey et al. 2024): ReLU latents with a decoder-norm-weighted L1 penalty.

loss = ‖x − x̂‖² + l1_coeff · Σ_j f_j Σ_m ‖d_j^m‖. Activations are not sparse during training, so
this architecture uses the dense path.
"""

from __future__ import annotations

import torch

from diffeval.crosscoders.base import CrossCoderBase


class L1CrossCoder(CrossCoderBase):
    architecture = "l1"

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.pre_acts(x).relu()

    def forward(self, x: torch.Tensor, k: int, dead: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
        """Training loss on a batch of raw activations [B, n, d] (what DDP wraps)."""
        return self.training_loss(x, k, dead)

    def training_loss(self, x: torch.Tensor, k: int, dead: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
        xf = self.flat_in(x)
        f = torch.addmm(self.b_enc, xf, self.enc_matrix().t()).relu()
        recon = f @ self.W_dec.reshape(self.cfg.n_latents, -1) + self.b_dec.reshape(1, -1)
        mse = (recon - xf).pow(2).sum(-1).mean()
        sparsity = (f * self.dec_norms().sum(-1)).sum(-1).mean()
        active = f > 0
        return mse + self.cfg.l1_coeff * sparsity, {
            "mse": mse.detach(), "aux": sparsity.detach(), "fired": active.any(0).nonzero().squeeze(1),
            "l0": active.sum(-1).float().mean().item(), "recon": recon.detach(), "target": xf,
        }
