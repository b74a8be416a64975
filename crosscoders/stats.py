"""Latent statistics for model diffing: Δnorm, decoder cosine, Latent Scaling ν, frequency, class.

Model 0 is the base model and model 1 the tuned model (docs/method.md):
  Δnorm_j = ½((‖d_j^T‖ − ‖d_j^B‖) / max(‖d_j^T‖, ‖d_j^B‖) + 1)
  class: tuned_only Δnorm > 0.9, base_only < 0.1, shared |Δnorm − ½| < 0.1, else other; dead if it never fires.
Latent Scaling (Minder et al., arXiv 2504.02922): for a latent's decoder direction d (the tuned
model's for tuned-side latents, the base model's for base-side ones) and targets y_i,
  β = Σ_i f_j(x_i)⟨d, y_i⟩ / (‖d‖² Σ_i f_j(x_i)²),
with reconstruction targets y^{m,r} = x̂^m and error targets y^{m,ε} = x^m − (x̂^m − f_j d_j^m).
ν_ε = β^{other,ε} / β^{own,ε} and ν_r likewise: near 0 when the other model has no use for the
direction, so a latent is tuned-specific when Δnorm ≥ 0.9, ν_ε < 0.2 and ν_r < 0.5 (mirror for base).

Changed directions: fine-tuning often keeps a latent (it fires on the same inputs in both models) but
rotates its decoder, so Δnorm stays near ½ while the two models write different directions. Latent
Scaling read along *each* model's decoder catches this: `changed` is "tuned" when the tuned direction
passes the test above (ν_ε < 0.2 and ν_r < 0.5: the base model has no use for it where the latent fires)
and the tuned decoder is not negligible (Δnorm ≥ 0.1), "base" for the mirror case (Δnorm ≤ 0.9), "both"
for a rotation that passes on both sides, and None otherwise. A tuned-specific latent is changed "tuned".

Decoder cosine and Latent Scaling compare one model's direction with the other model's activations,
which needs a shared residual space. Models of different hidden size have none, so for them both
columns are NaN and `specific` is None; Δnorm and the class are still defined (norms are per model).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import torch
from tqdm.auto import tqdm

from diffeval.crosscoders.data import as_source

CLASSES = ("tuned_only", "base_only", "shared", "other", "dead")
BASE, TUNED = 0, 1


@dataclass(frozen=True)
class StatsConfig:
    tuned_only: float = field(default=0.9, metadata={"help": "Δnorm above which a latent is tuned_only"})
    base_only: float = field(default=0.1, metadata={"help": "Δnorm below which a latent is base_only"})
    shared_band: float = field(default=0.1, metadata={"help": "|Δnorm − ½| below which a latent is shared"})
    nu_eps_max: float = field(default=0.2, metadata={"help": "ν_ε below which a tail latent is model-specific"})
    nu_r_max: float = field(default=0.5, metadata={"help": "ν_r below which a tail latent is model-specific"})
    batch_size: int = field(default=4096, metadata={"help": "rows per batch while computing statistics"})
    top_contexts: int = field(default=8, metadata={"help": "top-activating rows kept per latent"})


def delta_norm(W_dec: torch.Tensor) -> torch.Tensor:
    """Relative decoder norm difference in [0, 1] per latent (W_dec [L, n, d], models 0 and 1)."""
    nb, nt = W_dec[:, BASE].norm(dim=-1), W_dec[:, TUNED].norm(dim=-1)
    return 0.5 * ((nt - nb) / torch.maximum(nt, nb).clamp_min(1e-12) + 1)


def decoder_cosine(W_dec: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cosine_similarity(W_dec[:, BASE], W_dec[:, TUNED], dim=-1, eps=1e-12)


def classify(dn: torch.Tensor, freq: torch.Tensor, cfg: StatsConfig) -> list[str]:
    out = []
    for d, f in zip(dn.tolist(), freq.tolist(), strict=True):
        if f == 0:
            out.append("dead")
        elif d > cfg.tuned_only:
            out.append("tuned_only")
        elif d < cfg.base_only:
            out.append("base_only")
        elif abs(d - 0.5) < cfg.shared_band:
            out.append("shared")
        else:
            out.append("other")
    return out


class _Accumulator:
    """Running sums for frequency, mean activation, Latent Scaling and top contexts."""

    def __init__(self, n_latents: int, top: int, scaling: bool = True, device: torch.device | str = "cpu") -> None:
        z = lambda: torch.zeros(n_latents, dtype=torch.float64, device=device)  # noqa: E731
        self.rows, self.count, self.sum_f, self.sum_f2 = 0, z(), z(), z()
        # num[side][model][target]: side = whose decoder direction; target r or eps
        self.num = {s: {m: {"r": z(), "eps": z()} for m in (BASE, TUNED)} for s in (BASE, TUNED)}
        self.top, self.scaling = top, scaling
        self.top_vals = torch.full((n_latents, top), -1.0, device=device)
        self.top_rows = torch.full((n_latents, top), -1, dtype=torch.long, device=device)

    def to(self, device: torch.device | str) -> _Accumulator:
        """Move every running sum (to finish on the CPU what was summed on the accelerator)."""
        for name, value in vars(self).items():
            if isinstance(value, torch.Tensor):
                setattr(self, name, value.to(device))
        self.num = {s: {m: {t: v.to(device) for t, v in per.items()} for m, per in by.items()} for s, by in self.num.items()}
        return self

    def add(self, f: torch.Tensor, x: torch.Tensor, recon: torch.Tensor, W_dec: torch.Tensor, row0: int) -> None:
        """f [B, L]; x, recon [B, n, d] in the crosscoder's scaled space."""
        f64 = f.double()
        self.rows += f.shape[0]
        self.count += (f > 0).sum(0)
        self.sum_f += f64.sum(0)
        self.sum_f2 += f64.pow(2).sum(0)
        for side in (BASE, TUNED) if self.scaling else ():
            direction = W_dec[:, side]  # [L, d]
            for m in (BASE, TUNED):
                own = (direction * W_dec[:, m]).sum(-1)  # ⟨d, d_j^m⟩ [L]
                proj_r = recon[:, m] @ direction.T       # ⟨d, x̂^m⟩ [B, L]
                proj_e = (x[:, m] - recon[:, m]) @ direction.T + f * own
                self.num[side][m]["r"] += (f * proj_r).double().sum(0)
                self.num[side][m]["eps"] += (f * proj_e).double().sum(0)
        vals, idx = torch.cat([self.top_vals, f.T], 1).topk(self.top, dim=1)
        rows = torch.cat([self.top_rows, torch.arange(row0, row0 + f.shape[0], device=f.device).expand(f.shape[1], -1)], 1)
        self.top_vals, self.top_rows = vals, rows.gather(1, idx)

    def nu(self, side: int, target: str, W_dec: torch.Tensor) -> torch.Tensor:
        """ν for latents read along model `side`'s decoder: β^{other} / β^{side}; NaN (undefined) where the
        own model's β ≤ 0, since a ratio over a non-positive β says nothing about the other model (a negative
        ν would otherwise pass any "ν < threshold" test)."""
        other = TUNED if side == BASE else BASE
        den = W_dec[:, side].double().norm(dim=-1).pow(2) * self.sum_f2
        beta_own = self.num[side][side][target] / den.clamp_min(1e-30)
        beta_other = self.num[side][other][target] / den.clamp_min(1e-30)
        return (beta_other / beta_own).where(beta_own > 1e-12, torch.full_like(beta_own, float("nan")))


@torch.no_grad()
def latent_stats(model: Any, acts: Any, cfg: StatsConfig | None = None, contexts: Any = None,
                 batches: Callable[[range], Iterable[int]] | None = None) -> Any:
    """A pandas DataFrame with one row per latent; `contexts(row) -> dict` labels top rows; `batches` wraps the
    loop over batch starts (a caller's progress report; tqdm's bar by default)."""

    cfg = cfg or StatsConfig()
    source = as_source(acts, model.cfg)
    W_dec = model.W_dec.detach().float()
    shared_space = len(set(model.cfg.model_dims())) == 1
    device = W_dec.device
    acc = _Accumulator(model.cfg.n_latents, cfg.top_contexts, scaling=shared_space, device=device)
    starts = range(0, len(source), cfg.batch_size)
    for start in (batches or (lambda r: tqdm(r, desc="latent stats", disable=None)))(starts):
        x_raw = source[torch.arange(start, min(start + cfg.batch_size, len(source)))].to(device)
        f = model.encode(x_raw).float()
        x = x_raw * model.act_scale[None, :, None]
        acc.add(f, x, model.decode(f), W_dec, start)
    acc, W_dec = acc.to("cpu"), W_dec.cpu()
    dn = delta_norm(W_dec)
    freq = (acc.count / max(acc.rows, 1)).float()
    side_tuned = dn >= 0.5
    if shared_space:
        per_side = {side: {t: acc.nu(side, t, W_dec) for t in ("eps", "r")} for side in (BASE, TUNED)}
        nu_eps = torch.where(side_tuned, per_side[TUNED]["eps"], per_side[BASE]["eps"])
        nu_r = torch.where(side_tuned, per_side[TUNED]["r"], per_side[BASE]["r"])
        cosine = decoder_cosine(W_dec)
    else:
        nan = torch.full_like(dn, float("nan"))
        nu_eps = nu_r = cosine = nan
        per_side = {side: {"eps": nan, "r": nan} for side in (BASE, TUNED)}
    classes = classify(dn, freq, cfg)
    table = pd.DataFrame({
        "latent": range(model.cfg.n_latents), "delta_norm": dn.tolist(), "cosine": cosine.tolist(),
        "nu_eps": nu_eps.tolist(), "nu_r": nu_r.tolist(), "freq": freq.tolist(),
        "mean_act": (acc.sum_f / acc.count.clamp_min(1)).tolist(), "class": classes,
        **{f"nu_{t}_{name}": per_side[side][t].tolist() for side, name in ((BASE, "base"), (TUNED, "tuned"))
           for t in ("eps", "r")},
    })
    # object Series keep None as None (a plain list of None and strings would become NaN)
    table["specific"] = pd.Series([
        _specific(c, e, r, cfg) for c, e, r in zip(classes, table["nu_eps"], table["nu_r"], strict=True)
    ], dtype=object)
    table["changed"] = pd.Series(changed_directions(dn, classes, per_side, cfg), dtype=object)
    table["top_rows"] = [[int(r) for r, v in zip(rs, vs, strict=True) if v > 0]
                         for rs, vs in zip(acc.top_rows.tolist(), acc.top_vals.tolist(), strict=True)]
    table["top_acts"] = [[round(v, 4) for v in vs if v > 0] for vs in acc.top_vals.tolist()]
    if contexts is not None:
        table["top_contexts"] = [[contexts(r) for r in rows] for rows in table["top_rows"]]
    return table


def changed_directions(dn: torch.Tensor, classes: list[str], nu: dict[int, dict[str, torch.Tensor]],
                       cfg: StatsConfig) -> list[str | None]:
    """Per latent: "tuned", "base", "both" or None — whose decoder direction the other model does not use.

    nu[side][target] is ν read along model `side`'s decoder (NaN where undefined, which never passes).
    """
    def passes(side: int) -> torch.Tensor:
        return (nu[side]["eps"] < cfg.nu_eps_max) & (nu[side]["r"] < cfg.nu_r_max)

    live = torch.tensor([c != "dead" for c in classes], dtype=torch.bool)
    tuned = live & passes(TUNED) & (dn >= cfg.base_only)
    base = live & passes(BASE) & (dn <= cfg.tuned_only)
    names = {(True, True): "both", (True, False): "tuned", (False, True): "base", (False, False): None}
    return [names[(t, b)] for t, b in zip(tuned.tolist(), base.tolist(), strict=True)]


def _specific(cls: str, nu_eps: float, nu_r: float, cfg: StatsConfig) -> str | None:
    """Latent Scaling's verdict on a tail latent: 'tuned', 'base' or None."""
    if cls not in ("tuned_only", "base_only") or nu_eps != nu_eps or nu_r != nu_r:  # NaN: never fired
        return None
    if nu_eps < cfg.nu_eps_max and nu_r < cfg.nu_r_max:
        return "tuned" if cls == "tuned_only" else "base"
    return None
