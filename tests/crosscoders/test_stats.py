import pytest
import torch

from crosscoders.stats import BASE, TUNED, StatsConfig, _Accumulator, classify, decoder_cosine, delta_norm


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


def test_classes_follow_the_thresholds():
    dn = torch.tensor([0.95, 0.05, 0.55, 0.75, 0.99])
    freq = torch.tensor([0.1, 0.1, 0.1, 0.1, 0.0])
    assert classify(dn, freq, StatsConfig()) == ["tuned_only", "base_only", "shared", "other", "dead"]
