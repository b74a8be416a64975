"""The sparse BatchTopK building blocks give the gradients the dense formulation gives."""

import torch

from diffeval.crosscoders.sparse import batch_topk, encoder_grad, sparse_decode, sparse_encode


def _problem(seed: int = 0, B: int = 64, d: int = 24, L: int = 200, k: int = 5):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, d, generator=g)
    W_enc_T = torch.randn(L, d, generator=g, requires_grad=True)
    b_enc = torch.randn(L, generator=g, requires_grad=True)
    W_dec = torch.randn(L, d, generator=g, requires_grad=True)
    pre = (x @ W_enc_T.t() + b_enc).detach().relu()
    rows, cols = batch_topk(pre, k * B)
    return x, W_enc_T, b_enc, W_dec, pre, rows, cols


def test_sparse_encode_and_decode_match_dense_autograd() -> None:
    x, W_enc_T, b_enc, W_dec, pre, rows, cols = _problem()
    mask = torch.zeros_like(pre, dtype=torch.bool)
    mask[rows, cols] = True
    assert int(mask.sum()) == len(rows) == 5 * 64
    dense = ((x @ W_enc_T.t() + b_enc) * mask) @ W_dec
    target = torch.randn_like(dense)
    (dense - target).pow(2).sum().backward()
    want = [t.grad.clone() for t in (W_enc_T, b_enc, W_dec)]
    for t in (W_enc_T, b_enc, W_dec):
        t.grad = None
    recon = sparse_decode(rows, cols, sparse_encode(pre, x, W_enc_T, b_enc, rows, cols), W_dec, x.shape[0])
    torch.testing.assert_close(recon.detach(), dense.detach(), rtol=1e-4, atol=1e-4)
    (recon - target).pow(2).sum().backward()
    for got, ref in zip((W_enc_T.grad, b_enc.grad, W_dec.grad), want, strict=True):
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-3)


def test_dense_and_sparse_encoder_gradients_agree() -> None:
    x, _, _, _, _, rows, cols = _problem(seed=1)
    grad_vals = torch.randn(len(rows))
    sparse = encoder_grad(grad_vals, x, rows, cols, 200, dense=False)
    dense = encoder_grad(grad_vals, x, rows, cols, 200, dense=True)
    torch.testing.assert_close(dense, sparse, rtol=1e-5, atol=1e-5)
    assert dense.abs().sum() > 0
