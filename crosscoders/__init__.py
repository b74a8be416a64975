"""Crosscoders for model diffing: models, training, latent statistics. Usable on its own:

    from crosscoders import CrossCoderConfig, train_crosscoder
    cc = train_crosscoder(CrossCoderConfig(d_model=64, n_models=2, n_latents=512, k=8), acts)
    rows = cc.latent_stats(acts)
"""

from crosscoders.base import CrossCoderBase
from crosscoders.batchtopk import BatchTopKCrossCoder
from crosscoders.config import CrossCoderConfig
from crosscoders.l1 import L1CrossCoder
from crosscoders.train import train_crosscoder

ARCHITECTURES = {"batchtopk": BatchTopKCrossCoder, "l1": L1CrossCoder}

__all__ = ["ARCHITECTURES", "BatchTopKCrossCoder", "CrossCoderBase", "CrossCoderConfig", "L1CrossCoder",
           "train_crosscoder"]
