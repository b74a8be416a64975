"""The headline measure: where each category's probe texts ask for an answer, how much more the two models'
activations differ than on the other categories' probe texts (the cue shift), and which latents carry it.

Both models read every probe text, token for token, so at each text's answer cue (the last token of the
probe text, or of its prompt when the probe was continued by the models; for `Q: …\\nA:` the `:` after A)
the paired activations x^B, x^T at the crosscoder's layer differ only because the weights do. In the
crosscoder's scaled space, per probe text i:

    r_i = ‖x_i^T − x_i^B‖² / ((‖x_i^B‖² + ‖x_i^T‖²) / 2)

Category c's cue shift is mean_{i∈c} r_i / mean_{i∉c} r_i − 1: how much more fine-tuning moved the
representation where c's texts call for an answer than where the other categories' texts do. Its p-value
is a one-sided permutation test of the same statistic (c's label given to random sets of as many probe
texts; each probe text counts once), BH-adjusted across categories; its CI is a percentile bootstrap over
texts. It is unsigned: a changed mechanism moves the
representation whichever way the behaviour moved.

The direction comes from reference answers when a probe corpus gives them (`desired` and `undesired`
continuations of the text): each model's log-likelihood margin log p(desired) − log p(undesired), read by
teacher forcing on the same tokens; the category's direction is the sign of the mean tuned − base margin
where a Wilcoxon signed-rank test over its probes rejects 0 at the run's alpha, else it is not identified.

The crosscoder decomposes each cue difference into latents: latent j contributes f_j(d_j^T − d_j^B) to
x̂^T − x̂^B, and its share of r_i is ⟨f_j(d_j^T − d_j^B), x^T − x^B⟩ / ‖x^T − x^B‖². `own_share` is the share
carried by the category's own latents (those the annotator gave it), averaged over its texts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.stats import wilcoxon

from diffeval.crosscoders.data import as_source, read_manifest
from diffeval.harness.core import files
from diffeval.harness.core.fdr import benjamini_hochberg
from diffeval.harness.core.runconfig import HEADLINE_MEASURE
from diffeval.harness.stages.latent_sums import sequences

NAME = HEADLINE_MEASURE
N_BOOT = 2000
N_PERM = 9999  # label permutations for the p-value (smallest p: 1e-4)


def cue_rows(acts_dir: Path, category_of_source: dict[str, str],
             transcripts: dict[str, list[dict[str, Any]]]) -> tuple[np.ndarray, list[str], list[int]]:
    """(row of each probe text's answer cue in the probe activation cache, its category, its probe index).

    A transcript counts once, by its base-side row (both sides share the prompt); a plain probe text's cue
    is its last collected token. Sequences whose source is neither are skipped."""
    manifest = read_manifest(acts_dir)
    tokens = np.concatenate([np.load(acts_dir / s["tokens_file"], mmap_mode="r")[:, :2] for s in manifest["shards"]])
    last: dict[int, int] = {}
    where: dict[tuple[int, int], int] = {}
    for row, (seq, pos) in enumerate(tokens.tolist()):
        where[(seq, pos)] = row
        last[seq] = row
    rows, cats, index = [], [], []
    for sid, seq in sorted(sequences(acts_dir).items()):
        source = seq["source"]
        if source in transcripts:
            t = transcripts[source][seq["doc_id"]]
            if t["side"] != files.SIDES[0]:
                continue
            row = where.get((sid, t["prompt_tokens"] - 1))
            cat, i = Path(source).stem, t["index"]
        elif source in category_of_source:
            row, cat, i = last.get(sid), category_of_source[source], seq["doc_id"]
        else:
            continue
        if row is not None:
            rows.append(row)
            cats.append(cat)
            index.append(i)
    return np.asarray(rows, dtype=np.int64), cats, index


@torch.no_grad()
def cue_differences(model: Any, acts_dir: Path, rows: np.ndarray, members: dict[str, np.ndarray],
                    cats: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(r_i per cue row, the share of r_i carried by row i's own category's latents, per-latent share summed
    over each category's rows [n_categories, n_latents] in the order of `members`)."""
    source = as_source(acts_dir, model.cfg)
    x = source[torch.as_tensor(rows)].float().to(model.W_dec.device)
    scaled = x * model.act_scale[None, :, None]
    diff = scaled[:, 1] - scaled[:, 0]
    sq = diff.pow(2).sum(-1)
    r = sq / ((scaled[:, 0].pow(2).sum(-1) + scaled[:, 1].pow(2).sum(-1)) / 2).clamp_min(1e-12)
    f = model.encode(x)
    delta = model.W_dec[:, 1] - model.W_dec[:, 0]               # [L, d]
    share = f * (diff @ delta.t()) / sq.clamp_min(1e-12)[:, None]  # [n, L]: latent j's share of row i's difference
    names = list(members)
    per_cat = torch.zeros(len(names), share.shape[1])
    own = torch.zeros(len(rows))
    for g, c in enumerate(names):
        sel = torch.as_tensor([k == c for k in cats])
        if sel.any():
            per_cat[g] = share[sel].sum(0).cpu()
            idx = torch.as_tensor(members[c], dtype=torch.long)
            own[sel] = share[sel][:, idx].sum(1).cpu() if len(idx) else 0.0
    return r.cpu().numpy().astype(np.float64), own.numpy().astype(np.float64), per_cat.numpy()


def cue_shift(r: np.ndarray, inside: np.ndarray, n_boot: int = N_BOOT, seed: int = 0) -> dict[str, Any]:
    """One category's cue shift: value, bootstrap CI, one-sided permutation p and the text counts."""
    a, b = r[inside], r[~inside]
    out: dict[str, Any] = {"value": None, "ci_low": None, "ci_high": None, "p_value": None,
                           "n_texts": int(len(a)), "n_other": int(len(b))}
    if len(a) < 2 or len(b) < 2 or b.mean() <= 0:
        return out
    rng = np.random.default_rng(seed)
    ra = a[rng.integers(0, len(a), (n_boot, len(a)))].mean(1)
    rb = b[rng.integers(0, len(b), (n_boot, len(b)))].mean(1)
    reps = ra / np.where(rb > 0, rb, np.nan) - 1
    lo, hi = np.nanquantile(reps, [0.025, 0.975])
    # permutation p of the same statistic: c's label moved to random sets of as many texts
    pooled = np.concatenate([a, b])
    perm = np.argsort(rng.random((N_PERM, len(pooled))), axis=1)[:, :len(a)]
    pa = pooled[perm].mean(1)
    pb = (pooled.sum() - pa * len(a)) / len(b)
    observed = a.mean() / b.mean()
    p = float((1 + np.sum(pa / np.where(pb > 0, pb, np.nan) >= observed * (1 - 1e-12))) / (N_PERM + 1))
    out.update(value=float(a.mean() / b.mean() - 1), ci_low=float(lo), ci_high=float(hi), p_value=p)
    return out


def direction(margins: np.ndarray, alpha: float) -> dict[str, Any]:
    """The category's direction from tuned − base reference margins (one per probe with references)."""
    m = margins[np.isfinite(margins)]
    out: dict[str, Any] = {"direction": None, "margin_shift": None, "direction_p": None, "n_references": int(len(m))}
    if len(m) < 5 or not np.any(m != 0):
        return out
    p = float(wilcoxon(m, alternative="two-sided").pvalue)
    mean = float(m.mean())
    out.update(margin_shift=mean, direction_p=p, direction=("+" if mean > 0 else "-") if p < alpha else None)
    return out


def headline_rows(r: np.ndarray, own: np.ndarray, cats: list[str], names: list[str], alpha: float,
                  margins: dict[str, np.ndarray], seed: int = 0) -> list[dict[str, Any]]:
    """Per category in `names`: the cue shift with its BH q over `names`, `significant`, `own_share`, and
    the direction where reference answers give one."""
    labels = np.asarray(cats, dtype=object)
    rows = []
    for c in names:
        inside = labels == c
        row = {"measure": NAME, **cue_shift(r, inside, seed=seed)}
        row["own_share"] = float(own[inside].mean()) if inside.any() else None
        row.update(direction(margins.get(c, np.zeros(0)), alpha))
        rows.append(row)
    ps = np.array([np.nan if x["p_value"] is None else x["p_value"] for x in rows])
    qs = benjamini_hochberg(ps) if len(ps) else ps
    for row, q in zip(rows, qs, strict=True):
        row["q_value"] = None if row["p_value"] is None else float(q)
        row["significant"] = row["p_value"] is not None and bool(q < alpha)
    return rows
