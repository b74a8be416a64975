"""dictionary_learning crosscoders in and out: a checkpoint written here in that library's layout encodes and
reconstructs, once imported, as that library's inference rule says (written out below from its definition),
and ours exported is read back by the same rule to the same numbers."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

from diffeval.crosscoders import (
    BatchTopKCrossCoder,
    CrossCoderConfig,
    L1CrossCoder,
    load_crosscoder,
    train_crosscoder,
)
from diffeval.crosscoders.interop import from_dictionary_learning
from diffeval.harness.cli import cli

N, D, L, K = 2, 12, 40, 4


def source_checkpoint(seed: int = 0, normaliser: bool = True, threshold: float = 0.3) -> dict[str, torch.Tensor]:
    """A BatchTopKCrossCoder state dict as dictionary_learning saves it (keep_relative_variance normaliser)."""
    g = torch.Generator().manual_seed(seed)
    state = {
        "encoder.weight": torch.randn(N, D, L, generator=g) / D ** 0.5,
        "encoder.bias": torch.randn(L, generator=g) * 0.1,
        "decoder.weight": torch.randn(N, L, D, generator=g) / D ** 0.5,
        "decoder.bias": torch.randn(N, D, generator=g) * 0.1,
        "k": torch.tensor(K, dtype=torch.int),
        "threshold": torch.tensor(threshold),
        "code_normalization_id": torch.tensor(1, dtype=torch.int),  # CROSSCODER
        "target_rms": torch.tensor(1.0),
    }
    if normaliser:
        std = torch.rand(N, D, generator=g) + 0.5
        state |= {"activation_mean": torch.randn(N, D, generator=g), "activation_std": std,
                  "activation_global_scale": 1.0 / torch.sqrt((std ** 2).sum(-1) + 1e-8)}
    else:  # an older checkpoint, or one trained without a normaliser: NaN buffers
        state |= {"activation_mean": torch.full((N, D), float("nan")), "activation_std": torch.full((N, D), float("nan")),
                  "activation_global_scale": torch.ones(N)}
    return state


def source_rule(state: dict[str, torch.Tensor], x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """dictionary_learning's BatchTopKCrossCoder.encode (use_threshold) and decode, for code normalisation
    CROSSCODER: (features f [B, L], reconstruction x̂ [B, n, d])."""
    mean, scale = state["activation_mean"], state["activation_global_scale"]
    norm = not (torch.isnan(mean).any() or torch.isnan(state["activation_std"]).any())
    xn = (x - mean) * scale[None, :, None] if norm else x
    a = torch.relu(torch.einsum("bld,ldf->blf", xn, state["encoder.weight"]).sum(1) + state["encoder.bias"])
    code = state["decoder.weight"].norm(dim=2).sum(0, keepdim=True)  # Σ_layers ‖d_j‖
    f = a * (a * code > state["threshold"])
    out = torch.einsum("bf,lfd->bld", f, state["decoder.weight"]) + state["decoder.bias"]
    if norm:
        out = out / (scale[None, :, None] + 1e-8) + mean
    return f, out


def activations(seed: int = 1, rows: int = 256) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rows, N, D, generator=g) * 2 + 0.5


@pytest.mark.parametrize("normaliser", [True, False])
@pytest.mark.parametrize("layout", ["pt", "hub", "compiled"])
def test_an_imported_checkpoint_encodes_and_reconstructs_as_the_source(tmp_path, layout, normaliser) -> None:
    state = source_checkpoint(normaliser=normaliser)
    if layout == "pt":
        src = tmp_path / "cc.pt"
        torch.save(state, src)
    elif layout == "compiled":  # saved from a torch.compile'd module
        src = tmp_path / "cc.pt"
        torch.save({f"_orig_mod.{k}": v for k, v in state.items()}, src)
    else:
        src = tmp_path / "hub"
        src.mkdir()
        save_file(state, str(src / "model.safetensors"))
        (src / "config.json").write_text(json.dumps({"activation_dim": D, "dict_size": L, "num_layers": N, "k": K}))
    res = CliRunner().invoke(cli, ["crosscoder", "import", str(src), "--format", "dictionary_learning",
                                   "--out", str(tmp_path / "ours")])
    assert res.exit_code == 0, res.output
    model = load_crosscoder(tmp_path / "ours")
    assert isinstance(model, BatchTopKCrossCoder) and model.cfg.k == K and model.cfg.n_latents == L
    x = activations()
    f_ref, x_ref = source_rule(state, x)
    with torch.no_grad():
        f, recon = model.encode(x), model.reconstruct(x)
    assert 0 < (f_ref > 0).float().mean() < 0.9  # the threshold selects: neither nothing nor everything
    assert torch.equal(f > 0, f_ref > 0)
    torch.testing.assert_close(f, f_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(recon, x_ref, rtol=1e-5, atol=1e-4)


def test_a_checkpoint_without_an_estimated_threshold_fires_every_positive_latent(tmp_path) -> None:
    state = source_checkpoint(threshold=-1.0)
    torch.save(state, tmp_path / "cc.pt")
    model = from_dictionary_learning(tmp_path / "cc.pt")
    x = activations()
    f_ref, _ = source_rule(state, x)
    with torch.no_grad():
        torch.testing.assert_close(model.encode(x), f_ref, rtol=1e-5, atol=1e-5)
    assert (f_ref > 0).float().mean() > 0.3  # dense, as the source's rule gives


def test_ours_exported_reads_back_by_the_source_rule(tmp_path, trained_crosscoder) -> None:
    model, x = trained_crosscoder
    for out in (tmp_path / "cc.pt", tmp_path / "hub"):
        res = CliRunner().invoke(cli, ["crosscoder", "export", str(tmp_path / "ours"), "--out", str(out)])
        assert res.exit_code == 0, res.output
        state = torch.load(out, weights_only=True) if out.suffix == ".pt" else load_file(str(out / "model.safetensors"))
        assert state["encoder.weight"].shape == (N, D, L) and state["decoder.weight"].shape == (N, L, D)
        # the normaliser is consistent: built again from its mean and std, the source gets the same scale
        rebuilt = state["target_rms"] / torch.sqrt((state["activation_std"] ** 2).sum(-1) + 1e-8)
        torch.testing.assert_close(rebuilt, state["activation_global_scale"], rtol=1e-5, atol=0)
        f_ref, x_ref = source_rule(state, x)
        with torch.no_grad():
            assert torch.equal(model.encode(x) > 0, f_ref > 0)
            torch.testing.assert_close(model.encode(x), f_ref, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(model.reconstruct(x), x_ref, rtol=1e-4, atol=1e-4)
    config = json.loads((tmp_path / "hub/config.json").read_text())
    assert config == {"activation_dim": D, "dict_size": L, "num_layers": N, "k": K, "code_normalization": "CROSSCODER"}
    again = load_crosscoder(tmp_path / "hub")  # load_crosscoder reads the hub layout directly too
    with torch.no_grad():
        torch.testing.assert_close(again.encode(x), model.encode(x), rtol=1e-5, atol=1e-5)


@pytest.fixture()
def trained_crosscoder(tmp_path):
    """A small trained diffeval crosscoder (threshold estimated) saved at tmp_path/ours, and activations."""
    x = activations(rows=2048)
    cfg = CrossCoderConfig(d_model=D, n_models=N, n_latents=L, k=K, n_steps=60, batch_size=256, dtype="float32")
    model = train_crosscoder(cfg, x)
    assert float(model.threshold) > 0
    model.save(tmp_path / "ours")
    return model, x[:256]


@pytest.mark.parametrize(("change", "message"), [
    ({"code_normalization_id": torch.tensor(2, dtype=torch.int)}, "code normalisation SAE is not supported"),
    ({"threshold": torch.tensor([0.1, 0.2])}, "per-model threshold"),
    ({"activation_global_scale": torch.ones(N, D)}, "per neuron"),
    ({"decoder.weight": torch.zeros(N, L, D + 1)}, "does not match encoder.weight"),
    ({"k": torch.tensor(0, dtype=torch.int)}, "k = 0"),
])
def test_an_unsupported_checkpoint_is_one_clear_line_and_writes_nothing(tmp_path, change, message) -> None:
    torch.save(source_checkpoint() | change, tmp_path / "cc.pt")
    res = CliRunner().invoke(cli, ["crosscoder", "import", str(tmp_path / "cc.pt"), "--out", str(tmp_path / "ours")])
    assert res.exit_code == 2 and message in res.output and len(res.output.strip().splitlines()) == 1, res.output
    assert not (tmp_path / "ours").exists() and not any(p.name.startswith(".") for p in tmp_path.iterdir())


def test_an_sae_or_a_missing_file_is_refused(tmp_path) -> None:
    torch.save({"encoder.weight": torch.zeros(D, L), "encoder.bias": torch.zeros(L), "decoder.weight": torch.zeros(L, D),
                "decoder.bias": torch.zeros(D)}, tmp_path / "sae.pt")
    for src, message in ((tmp_path / "sae.pt", "not an SAE"), (tmp_path / "none.pt", "does not exist")):
        res = CliRunner().invoke(cli, ["crosscoder", "import", str(src), "--out", str(tmp_path / "ours")])
        assert res.exit_code == 2 and message in res.output, res.output


def test_export_refuses_an_l1_crosscoder(tmp_path) -> None:
    L1CrossCoder(CrossCoderConfig(d_model=D, n_models=N, n_latents=L, architecture="l1")).save(tmp_path / "l1")
    res = CliRunner().invoke(cli, ["crosscoder", "export", str(tmp_path / "l1"), "--out", str(tmp_path / "x.pt")])
    assert res.exit_code == 2 and "only BatchTopK" in res.output and not (tmp_path / "x.pt").exists()
