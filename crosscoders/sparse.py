"""Sparse building blocks for BatchTopK training: only the latents that fire cost compute.

After the top-k·B selection, a batch has k·B active (row, latent) pairs out of B·n_latents.
`sparse_encode` returns the pre-activations of just those pairs with a backward pass that forms
the encoder gradient from them alone (a sparse × dense product); `sparse_decode` reconstructs
with `embedding_bag`, whose backward touches only the decoder rows of active latents.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class _SparseEncode(torch.autograd.Function):
    """vals[i] = x[rows[i]] · W_enc_T[cols[i]] + b_enc[cols[i]], given the dense forward already done."""

    @staticmethod
    def forward(ctx, vals, x, W_enc_T, b_enc, rows, cols):  # noqa: ANN001 - autograd signature
        ctx.save_for_backward(x, rows, cols)
        ctx.n_latents = W_enc_T.shape[0]
        return vals

    @staticmethod
    def backward(ctx, grad_vals):  # noqa: ANN001
        x, rows, cols = ctx.saved_tensors
        grad_W = encoder_grad(grad_vals.to(x.dtype), x, rows, cols, ctx.n_latents, dense=x.is_cuda)
        grad_b = torch.zeros(ctx.n_latents, dtype=grad_vals.dtype, device=grad_vals.device).index_add_(0, cols, grad_vals)
        return None, None, grad_W, grad_b, None, None


def encoder_grad(grad_vals: torch.Tensor, x: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, n_latents: int,
                 dense: bool) -> torch.Tensor:
    """∂loss/∂W_enc_T [n_latents, d_in] from the active pairs' gradients: Σ_i grad_vals[i] · x[rows[i]] into row cols[i].

    On the CPU a sparse × dense product does only the k·B pairs' work. On a GPU a dense [n_latents, batch]
    matrix of the same gradients times x is faster: one matrix product instead of a sparse kernel
    (benches/bench_crosscoder.py --device cuda measures both paths against the dense baseline)."""
    if dense:
        g = torch.zeros(n_latents, x.shape[0], dtype=x.dtype, device=x.device)
        g.index_put_((cols, rows), grad_vals, accumulate=True)
        return g @ x
    # [n_latents, batch] sparse @ [batch, d_in] dense -> [n_latents, d_in], W_enc_T's own layout
    g = torch.sparse_coo_tensor(torch.stack([cols, rows]), grad_vals, (n_latents, x.shape[0]), check_invariants=False)
    return torch.sparse.mm(g, x)


def sparse_encode(pre: torch.Tensor, x: torch.Tensor, W_enc_T: torch.Tensor, b_enc: torch.Tensor,
                  rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """Differentiable pre-activations at (rows, cols); `pre` is the detached dense pre-activation
    and W_enc_T the encoder as [n_latents, d_in]."""
    return _SparseEncode.apply(pre[rows, cols], x, W_enc_T, b_enc, rows, cols)


def sparse_decode(rows: torch.Tensor, cols: torch.Tensor, vals: torch.Tensor, W_dec_flat: torch.Tensor,
                  batch: int) -> torch.Tensor:
    """Σ_j f_bj · W_dec[j] for each row b, from active (rows, cols, vals); rows must be sorted."""
    counts = torch.bincount(rows, minlength=batch)
    offsets = torch.cumsum(counts, 0) - counts
    return F.embedding_bag(cols, W_dec_flat, offsets, mode="sum", per_sample_weights=vals)


def batch_topk(scores: torch.Tensor, k_total: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, cols) of the k_total largest positive scores in the whole batch, sorted by row.

    Exact, but cheaper than one topk over all B·L scores: a threshold from a random sample's
    quantile keeps about 1.5·k_total candidates, and topk runs on those (falling back to the full
    topk if the sample guessed too high).
    """
    flat = scores.flatten()
    n_latents = scores.shape[1]
    idx = None
    if flat.numel() > 16 * k_total and flat.numel() > 65_536:
        sample = flat[torch.randint(0, flat.numel(), (65_536,), device=flat.device)]
        t = torch.quantile(sample.float(), 1 - 1.5 * k_total / flat.numel()).clamp_min(0)
        cand = (flat > t).nonzero().squeeze(1)
        if len(cand) >= k_total:
            idx = cand[flat[cand].topk(k_total, sorted=False).indices]
    if idx is None:  # small batch, or the sample guessed too high: one exact topk over positives
        k_total = min(k_total, int((flat > 0).sum()))
        idx = torch.topk(flat, k_total, sorted=False).indices
    idx = idx.sort().values
    return idx // n_latents, idx % n_latents
