import pytest
import torch

from diffeval.crosscoders.stats import (
    BASE,
    TUNED,
    StatsConfig,
    _Accumulator,
    changed_directions,
    classify,
    decoder_cosine,
    delta_norm,
)


def test_delta_norm_and_cosine_on_hand_built_decoders():
    W = torch.zeros(4, 2, 3)
    W[0, TUNED] = torch.tensor([2.0, 0, 0])                               # tuned only -> 1
    W[1, BASE] = torch.tensor([0, 3.0, 0])                                # base only -> 0
    W[2, BASE], W[2, TUNED] = torch.tensor([1.0, 0, 0]), torch.tensor([0, 1.0, 0])  # equal norms -> ½
    W[3, BASE], W[3, TUNED] = torch.tensor([4.0, 0, 0]), torch.tensor([1.0, 0, 0])  # ½((1-4)/4+1) = 0.125
    assert delta_norm(W).tolist() == pytest.approx([1.0, 0.0, 0.5, 0.125])
    assert decoder_cosine(W).tolist() == pytest.approx([0.0, 0.0, 0.0, 1.0])


def test_latent_scaling_nu_on_hand_computed_case():
    # One latent, tuned decoder e1, no base decoder; two rows with f = 1 and 2.
    W = torch.zeros(1, 2, 2)
    W[0, TUNED] = torch.tensor([1.0, 0.0])
    f = torch.tensor([[1.0], [2.0]])
    x = torch.zeros(2, 2, 2)
    x[:, BASE] = torch.tensor([[0.5, 0.0], [1.0, 0.0]])
    x[:, TUNED] = torch.tensor([[1.0, 0.0], [2.0, 0.0]])
    recon = torch.zeros(2, 2, 2)
    recon[:, TUNED] = x[:, TUNED]
    acc = _Accumulator(1, top=2)
    acc.add(f, x, recon, W, 0)
    # β^{T,ε} = (1·1 + 2·2) / (1·(1+4)) = 1; β^{B,ε} = (1·0.5 + 2·1) / 5 = 0.5  -> ν_ε = 0.5
    assert acc.nu(TUNED, "eps", W).item() == pytest.approx(0.5)
    # β^{T,r} = 1, β^{B,r} = 0 (the base reconstruction is 0)  -> ν_r = 0
    assert acc.nu(TUNED, "r", W).item() == pytest.approx(0.0)
    assert acc.top_rows[0].tolist() == [1, 0] and acc.top_vals[0].tolist() == [2.0, 1.0]


@pytest.mark.parametrize("target", ["r", "eps"])
def test_nu_is_undefined_where_the_own_models_beta_is_not_positive(target):
    """The tuned model's activations point against its decoder, so its own β is negative: ν is NaN, not a
    negative number that would pass ν < 0.2 and call the latent tuned-specific. With the reconstruction equal
    to x, β^{T,r} = (1·(−3) + 2·(−6))/5 = −3; with the reconstruction f·d, β^{T,ε} = (1·(−3) + 2·(−6))/5 = −3."""
    W = torch.zeros(1, 2, 2)
    W[0, TUNED] = torch.tensor([1.0, 0.0])
    f = torch.tensor([[1.0], [2.0]])
    x = torch.zeros(2, 2, 2)
    x[:, BASE] = torch.tensor([[0.5, 0.0], [1.0, 0.0]])
    x[:, TUNED] = torch.tensor([[-3.0, 0.0], [-6.0, 0.0]])
    recon = torch.zeros(2, 2, 2)
    recon[:, TUNED] = x[:, TUNED] if target == "r" else f * W[0, TUNED]
    acc = _Accumulator(1, top=2)
    acc.add(f, x, recon, W, 0)
    assert torch.isnan(acc.nu(TUNED, target, W)).item()
    other = "eps" if target == "r" else "r"
    assert not torch.isnan(acc.nu(TUNED, other, W)).item()  # the other β stays positive: ν defined


def test_classes_follow_the_thresholds():
    dn = torch.tensor([0.95, 0.05, 0.55, 0.75, 0.99])
    freq = torch.tensor([0.1, 0.1, 0.1, 0.1, 0.0])
    assert classify(dn, freq, StatsConfig()) == ["tuned_only", "base_only", "shared", "other", "dead"]


def _fit_stats(W, f, x):
    """latent_stats' per-side ν and the `changed` verdict for hand-built decoders and activations."""

    recon = torch.einsum("bl,lmd->bmd", f, W)
    acc = _Accumulator(W.shape[0], top=1)
    acc.add(f, x, recon, W, 0)
    nu = {side: {t: acc.nu(side, t, W) for t in ("eps", "r")} for side in (BASE, TUNED)}
    return changed_directions(delta_norm(W), ["shared"] * W.shape[0], nu, StatsConfig())


def test_a_rotated_decoder_is_changed_and_a_kept_one_is_not():
    # Latent 0 fires on the same rows in both models but writes e1 in base and e2 in tuned (a rotation,
    # Δnorm ½); latent 1 writes e3 in both (kept); latent 2 writes e4 in tuned and, weaker, e4 in base
    # (kept, only rescaled); latent 3 adds e5 in tuned while base writes e1 there, like latent 0 (tuned side new).
    d = 6
    e = torch.eye(d)
    W = torch.zeros(4, 2, d)
    W[0, BASE], W[0, TUNED] = e[0], e[1]
    W[1, BASE], W[1, TUNED] = e[2], e[2]
    W[2, BASE], W[2, TUNED] = 0.5 * e[3], e[3]
    W[3, BASE], W[3, TUNED] = 0.2 * e[0], e[4]
    gen = torch.Generator().manual_seed(0)
    f = torch.rand(64, 4, generator=gen) * (torch.rand(64, 4, generator=gen) < 0.4)
    x = torch.einsum("bl,lmd->bmd", f, W) + 0.01 * torch.randn(64, 2, d, generator=gen)
    verdict = _fit_stats(W, f, x)
    assert verdict[0] == "both"      # each direction is missing from the other model
    assert verdict[1] is None        # the same direction in both
    assert verdict[2] is None        # rescaled, not rotated
    assert verdict[3] == "both"      # e5 is new; e1 (base side) is also absent from tuned where it fires


def test_a_direction_the_other_model_writes_elsewhere_is_not_new():
    # Latent 0 rotates e1 → e2, but the base model writes e2 itself on the same rows through latent 1
    # (a shared latent with a tuned decoder of 0 weight there): the tuned direction is not new, the base one is lost.
    d = 4
    e = torch.eye(d)
    W = torch.zeros(2, 2, d)
    W[0, BASE], W[0, TUNED] = e[0], e[1]
    W[1, BASE], W[1, TUNED] = e[1], 0.05 * e[3]
    f = torch.ones(8, 2)
    x = torch.einsum("bl,lmd->bmd", f, W)
    assert _fit_stats(W, f, x)[0] == "base"
