"""The sparse BatchTopK building blocks give the gradients the dense formulation gives."""

import pytest
import torch

from diffeval.crosscoders import batchtopk, config
from diffeval.crosscoders.config import CrossCoderConfig
from diffeval.crosscoders.sparse import batch_topk, encoder_grad, sparse_decode, sparse_encode
from diffeval.crosscoders.train import build_crosscoder


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


@pytest.mark.parametrize("n_dead", [40, 600])  # aux_k 256 keeps every one of 40 dead latents, and 256 of 600
def test_dense_and_sparse_auxiliary_losses_agree(monkeypatch, n_dead) -> None:
    """The auxiliary loss's dense path (over a few dead latents) is the sparse path's function: same loss, same
    gradients for every parameter."""
    cfg = CrossCoderConfig(n_models=2, d_model=16, n_latents=800, k=4, dtype="float32")
    x = torch.randn(128, 2, 16, generator=torch.Generator().manual_seed(n_dead))
    dead = torch.zeros(800, dtype=torch.bool)
    dead[torch.randperm(800, generator=torch.Generator().manual_seed(1))[:n_dead]] = True
    results = []
    for density in (10**9, 0):  # every aux dense; every aux sparse
        monkeypatch.setattr(config, "DENSE_AUX_DENSITY", density)
        torch.manual_seed(0)
        model = build_crosscoder(cfg)
        model.init_from_data(x)
        loss, info = model.training_loss(x, cfg.k, dead)
        loss.backward()
        results.append((info["aux"], *(p.grad for p in (model.W_enc_T, model.b_enc, model.W_dec, model.b_dec))))
    assert float(results[0][0]) > 0
    for dense, sparse in zip(*results, strict=True):
        torch.testing.assert_close(dense, sparse, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("n_latents", [1024, 1025])  # aux_k 256 x DENSE_AUX_DENSITY 4: the last dense size, the first sparse
def test_the_auxiliary_loss_takes_the_path_that_plan_estimates(monkeypatch, n_latents) -> None:
    """With every latent dead, training decodes densely exactly where `aux_runs_dense` says so (plan's
    estimate reads the same rule)."""
    calls = []
    real = batchtopk._dense_aux_decode
    monkeypatch.setattr(batchtopk, "_dense_aux_decode", lambda *a: calls.append(1) or real(*a))
    cfg = CrossCoderConfig(n_models=2, d_model=8, n_latents=n_latents, k=4, dtype="float32")
    x = torch.randn(64, 2, 8, generator=torch.Generator().manual_seed(0))
    model = build_crosscoder(cfg)
    model.init_from_data(x)
    model.training_loss(x, cfg.k, torch.ones(n_latents, dtype=torch.bool))
    assert bool(calls) == config.aux_runs_dense(n_latents, cfg.aux_k) == (n_latents == 1024)
