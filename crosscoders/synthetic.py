"""Activations synthesised from a planted dictionary: the ground truth for crosscoder tests."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class PlantedDictionary:
    atoms: torch.Tensor  # [n_atoms, n_models, d_model]
    kinds: list[str]     # "shared", "tuned_only" or "base_only" per atom (model 0 = base, 1 = tuned)


def planted_dictionary(d_model: int, n_shared: int, n_tuned: int, n_base: int, seed: int = 0,
                       d_models: tuple[int, int] | None = None) -> PlantedDictionary:
    """Unit atoms: shared ones exist in both models, the others in one.

    With equal hidden sizes a shared atom has the same direction in both models. With `d_models`
    (base, tuned sizes; d_model = their max) the models have different spaces: model m's atoms use
    only its first d_models[m] dimensions (the rest is zero padding) and a shared atom has an
    independent direction in each model.
    """
    gen = torch.Generator().manual_seed(seed)
    n = n_shared + n_tuned + n_base
    dirs = torch.randn(n, 2, d_model, generator=gen)
    if d_models is None:
        dirs[:n_shared, 1] = dirs[:n_shared, 0]
    else:
        if max(d_models) != d_model:
            raise ValueError(f"d_model ({d_model}) must equal max(d_models) ({d_models})")
        for m, d_m in enumerate(d_models):
            dirs[:, m, d_m:] = 0
    dirs[n_shared:n_shared + n_tuned, 0] = 0
    dirs[n_shared + n_tuned:, 1] = 0
    norms = dirs.norm(dim=-1, keepdim=True)
    atoms = torch.where(norms > 0, dirs / norms.clamp_min(1e-12), dirs)
    kinds = ["shared"] * n_shared + ["tuned_only"] * n_tuned + ["base_only"] * n_base
    return PlantedDictionary(atoms, kinds)


def sample_activations(d: PlantedDictionary, n_rows: int, active: int = 3, seed: int = 1) -> torch.Tensor:
    """Rows that are sparse non-negative combinations of the atoms: [n_rows, 2, d_model]."""
    gen = torch.Generator().manual_seed(seed)
    n_atoms = d.atoms.shape[0]
    idx = torch.stack([torch.randperm(n_atoms, generator=gen)[:active] for _ in range(n_rows)])
    coef = torch.rand(n_rows, active, generator=gen) * 2 + 0.5
    return torch.einsum("ra,ramd->rmd", coef, d.atoms[idx])
