"""Crosscoder models, training and latent statistics (issue 4: not implemented yet)."""
