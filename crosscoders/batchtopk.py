"""BatchTopK crosscoder (Bussmann et al. 2024, applied to crosscoders as in Minder et al. 2025).

Latents are ranked by decoder-norm-weighted score f_j · Σ_m ‖d_j^m‖ and the k·B largest in the
whole batch are kept. Training uses the sparse path (crosscoders.sparse): only active latents enter
the decoder and the encoder gradient. An auxiliary loss (Gao et al. 2024) lets dead latents
reconstruct the residual. Under data parallelism the selection spans every rank's rows
(crosscoders.distributed), so it equals one process's. At inference a latent fires where its score exceeds a threshold kept as
an EMA of the smallest selected score during training.
"""

from __future__ import annotations

import torch

from diffeval.crosscoders.base import CrossCoderBase
from diffeval.crosscoders.config import CrossCoderConfig, aux_runs_dense
from diffeval.crosscoders.distributed import global_batch_topk
from diffeval.crosscoders.sparse import batch_topk, sparse_decode, sparse_encode


class BatchTopKCrossCoder(CrossCoderBase):
    architecture = "batchtopk"

    def __init__(self, cfg: CrossCoderConfig) -> None:
        super().__init__(cfg)
        self.register_buffer("threshold", torch.tensor(-1.0))  # < 0: not yet estimated

    def scores(self, pre: torch.Tensor) -> torch.Tensor:
        return pre.relu() * self.dec_norms().sum(-1)

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Latent activations [batch, L] (threshold rule; batch top-k until a threshold exists)."""
        pre = self.pre_acts(x).relu()
        s = pre * self.dec_norms().sum(-1)
        if self.threshold >= 0:
            return pre * (s > self.threshold)
        rows, cols = batch_topk(s, self.cfg.k * x.shape[0])
        f = torch.zeros_like(pre)
        f[rows, cols] = pre[rows, cols]
        return f

    def forward(self, x: torch.Tensor, k: int, dead: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
        """Training loss on a batch of raw activations [B, n, d] (what DDP wraps)."""
        return self.training_loss(x, k, dead)

    def training_loss(self, x: torch.Tensor, k: int, dead: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
        """Loss on a batch of raw activations [B, n, d]; also returns the fired latents and metrics."""
        L = self.cfg.n_latents
        xf = self.flat_in(x)  # [B, n*d]
        W_enc = self.enc_matrix()  # [L, n*d]
        W_dec = self.W_dec.reshape(L, -1)
        with torch.no_grad():
            # the only dense [B, L] work; in bfloat16 when configured (selection and values only:
            # gradients are formed in float32 by sparse_encode)
            dt = getattr(torch, self.cfg.dtype)
            pre = torch.addmm(self.b_enc.to(dt), xf.to(dt), W_enc.to(dt).t()).float().relu_()
            s = pre * self.dec_norms().sum(-1)
        # the k·B largest over the whole batch, across ranks when data-parallel
        rows, cols, smallest = global_batch_topk(s, k)
        vals = sparse_encode(pre, xf, W_enc, self.b_enc, rows, cols)
        recon = sparse_decode(rows, cols, vals, W_dec, x.shape[0]) + self.b_dec.reshape(1, -1)
        err = recon - xf
        mse = err.pow(2).sum(-1).mean()
        aux = self._aux_loss(pre, xf, -err.detach(), dead) if dead is not None and dead.any() else mse.new_zeros(())
        loss = mse + self.cfg.aux_coeff * aux
        with torch.no_grad():
            if smallest is not None:
                t = self.threshold
                self.threshold.copy_(smallest if t < 0 else self.cfg.threshold_ema * t + (1 - self.cfg.threshold_ema) * smallest)
        return loss, {"mse": mse.detach(), "aux": aux.detach(), "fired": cols, "l0": len(rows) / x.shape[0],
                      "recon": recon.detach(), "target": xf}

    def _aux_loss(self, pre: torch.Tensor, xf: torch.Tensor, residual: torch.Tensor, dead: torch.Tensor) -> torch.Tensor:
        """Dead latents (their top aux_k per row) try to reconstruct what the live ones missed (x − x̂)."""
        dead_ids = dead.nonzero().squeeze(1)
        k_aux = min(self.cfg.aux_k, len(dead_ids))
        top = pre[:, dead_ids].topk(k_aux, dim=1)
        keep = top.values > 0
        if not keep.any():
            return residual.new_zeros(())
        L = self.cfg.n_latents
        if aux_runs_dense(len(dead_ids), self.cfg.aux_k):
            approx = _dense_aux_decode(xf, self.enc_matrix(), self.b_enc, self.W_dec.reshape(L, -1), dead_ids,
                                       top.indices, keep)
        else:
            rows = torch.arange(pre.shape[0], device=pre.device)[:, None].expand_as(keep)[keep]
            cols = dead_ids[top.indices[keep]]
            vals = sparse_encode(pre, xf, self.enc_matrix(), self.b_enc, rows, cols)
            approx = sparse_decode(rows, cols, vals, self.W_dec.reshape(L, -1), pre.shape[0])
        return (approx - residual).pow(2).sum(-1).mean()


def _dense_aux_decode(xf: torch.Tensor, W_enc_flat: torch.Tensor, b_enc: torch.Tensor, W_dec_flat: torch.Tensor,
                      dead_ids: torch.Tensor, top: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """The dead latents' reconstruction [B, n*d] from the selected (row, dead latent) pairs `top` [B, aux_k]
    (where `keep`), computed as dense products over the dead latents: the same function of the weights as the
    sparse path's, and the same gradients."""
    mask = xf.new_zeros(xf.shape[0], len(dead_ids)).scatter_(1, top, keep.to(xf.dtype))
    f = torch.addmm(b_enc.index_select(0, dead_ids), xf, W_enc_flat.index_select(0, dead_ids).t()) * mask
    return f @ W_dec_flat.index_select(0, dead_ids)  # index_select's backward adds rows back without sorting
