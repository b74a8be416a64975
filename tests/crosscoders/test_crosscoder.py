import json

import pytest
import torch

from diffeval.crosscoders import (
    BatchTopKCrossCoder,
    CrossCoderConfig,
    L1CrossCoder,
    load_crosscoder,
    train_crosscoder,
)
from diffeval.crosscoders.synthetic import planted_dictionary, sample_activations

D, N_SHARED, N_TUNED, N_BASE = 32, 40, 20, 20
# where each kind of planted atom lives: both models for shared atoms, one model otherwise
VIEWS = {"shared": slice(0, 2), "base_only": slice(0, 1), "tuned_only": slice(1, 2)}


@pytest.fixture(scope="module")
def planted():
    d = planted_dictionary(D, N_SHARED, N_TUNED, N_BASE, seed=0)
    return d, sample_activations(d, 24_000, active=3, seed=1)


@pytest.fixture(scope="module")
def trained(planted, tmp_path_factory):
    out = tmp_path_factory.mktemp("cc")
    # every field but the first four at its default: the defaults must solve a small problem
    cfg = CrossCoderConfig(d_model=D, n_models=2, n_latents=160, k=3)
    return train_crosscoder(cfg, planted[1], out=out, progress=False), out


def test_planted_atoms_are_recovered_with_the_right_class(planted, trained):
    d, acts = planted
    model, _ = trained
    table = model.latent_stats(acts)
    W = model.W_dec.detach()
    for kind, view in VIEWS.items():
        assert _recovered(table, W, d, kind, view) >= 0.9, kind
    specific = table[table["class"] == "tuned_only"]["specific"]
    assert (specific == "tuned").mean() >= 0.9  # Latent Scaling agrees on the planted tuned-only atoms
    records = table.to_dict(orient="records")
    assert all(r["changed"] in (None, "tuned", "base", "both") for r in records)  # None stays None (not NaN)
    tuned_side = [r["changed"] for r in records if r["specific"] == "tuned"]
    assert all(c in ("tuned", "both") for c in tuned_side)  # a confirmed tuned-only latent is a changed direction
    shared = [r["changed"] for r in records if r["class"] == "shared"]
    assert sum(c is None for c in shared) >= 0.9 * len(shared)  # planted shared atoms kept their direction


def test_metrics_and_artefacts(trained):
    model, out = trained
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 2000 and min(rows[-1]["fve"]) > 0.95
    assert {"loss", "fve", "l0", "dead_fraction", "rows_per_s"} <= set(rows[-1])
    loaded = load_crosscoder(out)
    assert isinstance(loaded, BatchTopKCrossCoder)
    assert torch.equal(loaded.W_dec, model.W_dec) and loaded.threshold == model.threshold
    assert json.loads((out / "cfg.json").read_text())["format_version"] == 1


def test_resume_from_checkpoint_matches_an_uninterrupted_run(planted, tmp_path):
    acts = planted[1][:4000]
    cfg = CrossCoderConfig(d_model=D, n_models=2, n_latents=64, k=3, batch_size=256, n_steps=40, lr=3e-3,
                           checkpoint_every=20)
    full = train_crosscoder(cfg, acts, out=tmp_path / "full", progress=False)
    half = CrossCoderConfig(**{**cfg.to_dict(), "n_steps": 20})
    train_crosscoder(half, acts, out=tmp_path / "resumed", progress=False)
    resumed = train_crosscoder(cfg, acts, out=tmp_path / "resumed", progress=False)
    for name, p in full.state_dict().items():
        assert torch.allclose(p, resumed.state_dict()[name], atol=1e-6), name


@pytest.mark.parametrize(("caps", "expected"), [
    ({"avx2": True}, "float32"),  # bf16 is emulated: about 4x slower there
    ({"avx2": True, "avx512_bf16": True}, "bfloat16"),
    ({"amx_bf16": True}, "bfloat16"),
])
def test_auto_encoder_dtype_follows_the_cpus_bf16_units(monkeypatch, caps, expected):
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: caps)
    cfg = CrossCoderConfig(d_model=8, n_models=2, n_latents=64, k=4)
    assert cfg.dtype == expected
    assert CrossCoderConfig.from_dict(cfg.to_dict()).dtype == expected  # cfg.json records what ran
    assert CrossCoderConfig(d_model=8, n_models=2, n_latents=64, k=4, dtype="bfloat16").dtype == "bfloat16"


def test_auto_encoder_dtype_on_a_gpu_without_bf16_is_float32(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert CrossCoderConfig(d_model=8, n_models=2, n_latents=64, k=4, device="cuda").dtype == "float32"


@pytest.mark.parametrize(("kw", "msg"), [
    ({"k": 64}, "k must be in 1..n_latents-1"),
    ({"n_models": 1}, "n_models must be >= 2"),
    ({"architecture": "topk"}, "architecture 'topk'"),
])
def test_bad_configs(kw, msg):
    base = {"d_model": 8, "n_models": 2, "n_latents": 64, "k": 4}
    with pytest.raises(ValueError, match=msg):
        CrossCoderConfig(**{**base, **kw})


def test_nan_activations_stop_with_a_clear_error():
    acts = torch.randn(600, 2, 8)
    acts[5:, 0, 0] = float("nan")
    cfg = CrossCoderConfig(d_model=8, n_models=2, n_latents=32, k=2, batch_size=128, n_steps=3)
    with pytest.raises(FloatingPointError, match="check the activations"):
        train_crosscoder(cfg, acts, progress=False)


def test_shape_mismatch_is_reported():
    cfg = CrossCoderConfig(d_model=8, n_models=2, n_latents=32, k=2)
    with pytest.raises(ValueError, match="config says n_models=2, d_model=8"):
        train_crosscoder(cfg, torch.randn(100, 2, 9), progress=False)


def _recovered(table, W, d, kind, view, threshold=0.9):
    """Fraction of the planted atoms of `kind` matched (cosine > threshold) by a latent of that class."""
    idx = [i for i, k in enumerate(d.kinds) if k == kind]
    w = torch.nn.functional.normalize(W[:, view].reshape(W.shape[0], -1), dim=-1)
    a = torch.nn.functional.normalize(d.atoms[idx][:, view].reshape(len(idx), -1), dim=-1)
    cos, best = (a @ w.T).max(1)
    return sum(bool(c > threshold) and table["class"][int(b)] == kind for c, b in zip(cos, best, strict=True)) / len(idx)


def test_models_of_different_hidden_size(tmp_path):
    # base 24-dim, tuned 32-dim: each model has its own directions; the base's are zero-padded to 32
    d = planted_dictionary(32, N_SHARED, N_TUNED, N_BASE, seed=0, d_models=(24, 32))
    acts = sample_activations(d, 24_000, active=3, seed=1)
    assert not acts[:, 0, 24:].any()
    cfg = CrossCoderConfig(d_model=32, n_models=2, n_latents=160, k=3, n_steps=800, d_models=(24, 32))
    model = train_crosscoder(cfg, acts, out=tmp_path, progress=False)
    W = model.W_dec.detach()
    # padded decoder, encoder and bias entries of the smaller model never move off zero
    assert not W[:, 0, 24:].any() and not model.W_enc[0, 24:].any() and not model.b_dec[0, 24:].any()
    table = model.latent_stats(acts)
    for kind, view in VIEWS.items():
        assert _recovered(table, W, d, kind, view) >= 0.9, kind
    # no shared space: cosine and Latent Scaling are undefined, Δnorm still classifies
    assert table["cosine"].isna().all() and table["nu_eps"].isna().all() and table["specific"].isna().all()
    assert table["changed"].isna().all()
    last = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])
    assert min(last["fve"]) > 0.95
    loaded = load_crosscoder(tmp_path)
    assert loaded.cfg.d_models == (24, 32) and torch.equal(loaded.W_dec, model.W_dec)


@pytest.mark.parametrize(("kw", "msg"), [
    ({"d_models": (24, 30)}, r"d_model \(32\) must equal max\(d_models\) = 30"),
    ({"d_models": (32,)}, "one hidden size >= 1 per model"),
])
def test_bad_d_models(kw, msg):
    with pytest.raises(ValueError, match=msg):
        CrossCoderConfig(d_model=32, n_models=2, n_latents=64, k=4, **kw)


def test_padding_must_be_zero_for_smaller_models():
    acts = torch.randn(100, 2, 8)
    cfg = CrossCoderConfig(d_model=8, n_models=2, n_latents=32, k=2, d_models=(6, 8))
    with pytest.raises(ValueError, match="non-zero entries beyond d_models"):
        train_crosscoder(cfg, acts, progress=False)


def test_l1_crosscoder_reloads_as_l1(tmp_path) -> None:
    cfg = CrossCoderConfig(d_model=8, n_models=2, n_latents=16, architecture="l1")  # k (32) > n_latents: fine for L1
    L1CrossCoder(cfg).save(tmp_path)
    loaded = load_crosscoder(tmp_path)
    assert isinstance(loaded, L1CrossCoder) and loaded.cfg.architecture == "l1"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_latent_stats_on_cuda_match_the_cpu(planted, trained):
    _, acts = planted
    model, out = trained
    cpu = model.latent_stats(acts[:4000])
    gpu = load_crosscoder(out, device="cuda").latent_stats(acts[:4000])
    assert list(gpu["class"]) == list(cpu["class"])
    for col in ("delta_norm", "freq", "mean_act"):
        assert gpu[col].to_numpy() == pytest.approx(cpu[col].to_numpy(), rel=1e-3, abs=1e-4), col
