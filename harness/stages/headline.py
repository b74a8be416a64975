"""The headline measure: how far fine-tuning moved the representation where each category's probe texts
ask for an answer, against how far it moved the text around every cue and where the other categories' texts
ask for an answer (the cue shift), and which latents carry the change.

Both models read every probe text, token for token, so at every position the paired activations x^B, x^T
at the crosscoder's layer differ only because the weights do. In the crosscoder's scaled space a row's
relative paired difference is

    r = ‖x^T − x^B‖² / ((‖x^B‖² + ‖x^T‖²) / 2).

A probe's answer cue is its last token (or its prompt's last token when the models continued it; for
`Q: …\nA:` the colon after A, where a model settles what it will answer). Fine-tuning moves every answer
cue, whatever the category: any adapter trained on answers does, and a placebo that replays the base's own
data moves a real LM's cues 1–5 times as far as the rest of the text. So a category's cues are measured
against two nulls, and the larger one is its baseline:

    mean_{i∈c} r_cue,i / B_c − 1,    B_c = max(D, M_c),

where D, the drift, is the mean over all probe texts of their mean r before the cue (how far the text around
every cue moved), and M_c is the median over the other categories g of mean_{i∈g} r_cue,i (how far a typical
category's cues moved). Against D alone, a pair that moved every cue flags every category; against M_c
alone, a pair whose cues mostly moved less than the text around them makes a modest move look specific
(toyworld_code's placebo at build seed 1: two categories at 3.3× M_c but 1.5× D). Needing both keeps the
two failures out. The median keeps M_c at an unchanged category's level while fewer than half of the other
categories changed; when most did, M_c rises and the measure reports less, never more (a conservative
failure). A category is *changed* when its cue fold (shift + 1) exceeds MIN_FOLD with confidence: a
one-sided bootstrap test (every category's texts resampled with their drift, B_c recomputed per replicate)
of fold ≤ MIN_FOLD, BH-adjusted across categories, with a percentile CI. It needs at least two other
categories with two texts each; with fewer it is not estimated. MIN_FOLD = 2 was chosen on the toyworld
organism alone, at build seed 0 (docs/method.md gives its folds), and is reported, not tuned, on the rest of
the suite.

Each category's cue r over D is reported as `drift_fold`, and the median category's as `common_fold`: how
far all answer positions moved, which the headline deliberately does not count. `baseline_from` says which
null was the larger.

The cue shift is unsigned: a changed mechanism moves the representation whichever way the behaviour moved.
The direction comes from reference answers when a probe corpus gives them (`desired` and `undesired`
continuations of the text): each model's log-likelihood margin log p(desired) − log p(undesired), read by
teacher forcing on the same tokens; the category's direction is the sign of the mean tuned − base margin
where a Wilcoxon signed-rank test over its probes rejects 0 at the run's alpha, else it is not identified.

The crosscoder decomposes each cue difference into latents: latent j contributes f_j(d_j^T − d_j^B) to
x̂^T − x̂^B, and its share of the difference is ⟨f_j(d_j^T − d_j^B), x^T − x^B⟩ / ‖x^T − x^B‖². `own_share` is
the share carried by the category's own latents (those the annotator gave it), averaged over its texts.
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
from diffeval.harness.core.runconfig import HEADLINE_MEASURE, HEADLINE_NULL
from diffeval.harness.stages.latent_sums import sequences

NAME = HEADLINE_MEASURE
N_BOOT = 4000  # bootstrap replicates for the CI and the test (smallest p: 1/4001)
MIN_FOLD = 2.0  # a changed category's cues moved at least this many times their baseline (see above)
NULL = HEADLINE_NULL  # what the cue shift is measured against; reports/validation.json names it too
MIN_TEXTS = 2  # texts a category needs to enter the measure, as itself or as part of another's null


def cue_rows(acts_dir: Path, category_of_source: dict[str, str],
             transcripts: dict[str, list[dict[str, Any]]]) -> tuple[np.ndarray, list[np.ndarray], list[str]]:
    """(the row of each probe text's answer cue in the probe activation cache, the rows of its positions
    before the cue, its category).

    A transcript counts once, by its base-side sequence (both sides share the prompt); a plain probe text's
    cue is its last collected token. Sequences whose source is neither are skipped."""
    manifest = read_manifest(acts_dir)
    tokens = np.concatenate([np.load(acts_dir / s["tokens_file"], mmap_mode="r")[:, :2] for s in manifest["shards"]])
    by_seq: dict[int, list[tuple[int, int]]] = {}
    for row, (seq, pos) in enumerate(tokens.tolist()):
        by_seq.setdefault(seq, []).append((pos, row))
    cues, before, cats = [], [], []
    for sid, seq in sorted(sequences(acts_dir).items()):
        source, rows = seq["source"], sorted(by_seq.get(sid, []))
        if source in transcripts:
            t = transcripts[source][seq["doc_id"]]
            if t["side"] != files.SIDES[0]:
                continue
            rows = [(p, r) for p, r in rows if p < t["prompt_tokens"]]
            cat = Path(source).stem
        elif source in category_of_source:
            cat = category_of_source[source]
        else:
            continue
        if rows:
            cues.append(rows[-1][1])
            before.append(np.array([r for _, r in rows[:-1]], dtype=np.int64))
            cats.append(cat)
    return np.asarray(cues, dtype=np.int64), before, cats


def scaled_pairs(model: Any, acts_dir: Path, rows: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """(raw, crosscoder-scaled) paired activations [n, 2, d] of cache rows `rows`."""
    x = as_source(acts_dir, model.cfg)[torch.as_tensor(rows, dtype=torch.long)].float().to(model.W_dec.device)
    return x, x * model.act_scale[None, :, None]


def pair_energy(x: torch.Tensor) -> torch.Tensor:
    """(‖x^B‖² + ‖x^T‖²) / 2 per row of scaled paired activations [n, 2, d] (floored away from 0)."""
    return ((x[:, 0].pow(2).sum(-1) + x[:, 1].pow(2).sum(-1)) / 2).clamp_min(1e-12)


def relative_difference(x: torch.Tensor) -> torch.Tensor:
    """r per row of scaled paired activations [n, 2, d]."""
    return (x[:, 1] - x[:, 0]).pow(2).sum(-1) / pair_energy(x)


@torch.no_grad()
def drift(model: Any, acts_dir: Path, before: list[np.ndarray]) -> np.ndarray:
    """Per probe text, the mean r over its positions before the cue (NaN for a text with none)."""
    flat = np.concatenate(before) if before else np.zeros(0, dtype=np.int64)
    if not len(flat):
        return np.full(len(before), np.nan)
    r = relative_difference(scaled_pairs(model, acts_dir, flat)[1]).cpu().numpy().astype(np.float64)
    out, start = np.full(len(before), np.nan), 0
    for i, rows in enumerate(before):
        if len(rows):
            out[i] = r[start:start + len(rows)].mean()
        start += len(rows)
    return out


@torch.no_grad()
def cue_differences(model: Any, acts_dir: Path, rows: np.ndarray, members: dict[str, np.ndarray],
                    cats: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(r_i per cue row, the share of r_i carried by row i's own category's latents, per-latent share summed
    over each category's rows [n_categories, n_latents] in the order of `members`)."""
    x, scaled = scaled_pairs(model, acts_dir, rows)
    diff = scaled[:, 1] - scaled[:, 0]
    sq = diff.pow(2).sum(-1)
    r = relative_difference(scaled)
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


def cue_shifts(r: np.ndarray, labels: np.ndarray, names: list[str], drift_per_text: np.ndarray,
               n_boot: int = N_BOOT, seed: int = 0) -> dict[str, dict[str, Any]]:
    """Per category in `names`: its cue shift over its baseline, the larger of the drift and the median of the
    other categories' mean cue r (all categories in `labels` with MIN_TEXTS texts or more form that median),
    the bootstrap CI, the one-sided bootstrap p of fold ≤ MIN_FOLD, the drift folds and the text counts."""
    groups = [g for g in dict.fromkeys(labels.tolist()) if int((labels == g).sum()) >= MIN_TEXTS]
    rng = np.random.default_rng(seed)
    finite = np.isfinite(drift_per_text)
    d_val = np.where(finite, drift_per_text, 0.0)
    mean, boot = {}, {}
    d_sum, d_n = np.zeros(n_boot), np.zeros(n_boot)
    for g in dict.fromkeys(labels.tolist()):  # every text is resampled with its own drift, in its category
        at = np.flatnonzero(labels == g)
        pick = at[rng.integers(0, len(at), (n_boot, len(at)))]
        d_sum += d_val[pick].sum(1)
        d_n += finite[pick].sum(1)
        if g in groups:
            mean[g] = float(r[at].mean())
            boot[g] = r[pick].mean(1)
    drift = float(d_val.sum() / finite.sum()) if finite.any() and d_val.sum() > 0 else None
    floor = drift or 0.0  # the drift's part of the baseline (none where it is undefined)
    boot_drift = d_sum / np.maximum(d_n, 1) if drift is not None else np.zeros(n_boot)
    common = float(np.median(list(mean.values()))) if mean else None
    out = {}
    for c in names:
        inside = labels == c
        row: dict[str, Any] = {"value": None, "ci_low": None, "ci_high": None, "p_value": None, "null": NULL,
                               "baseline": None, "baseline_from": None, "min_fold": MIN_FOLD,
                               "n_texts": int(inside.sum()), "n_other": int((~inside).sum()), "drift": drift,
                               "drift_fold": None if drift is None or not inside.any() else float(r[inside].mean() / drift),
                               "common_fold": None if drift is None or common is None else common / drift}
        others = [g for g in groups if g != c]
        out[c] = row
        if c not in groups or len(others) < 2:
            continue
        typical = float(np.median([mean[g] for g in others]))
        baseline = max(typical, floor)
        boot_base = np.maximum(np.median(np.stack([boot[g] for g in others]), axis=0), boot_drift)
        if baseline <= 0 or np.any(boot_base <= 0):
            continue
        fold = boot[c] / boot_base
        lo, hi = np.quantile(fold, [0.025, 0.975])
        row.update(value=mean[c] / baseline - 1, ci_low=float(lo - 1), ci_high=float(hi - 1), baseline=baseline,
                   baseline_from="other_categories" if typical >= floor else "drift",
                   p_value=float((1 + np.sum(fold <= MIN_FOLD)) / (n_boot + 1)))
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
                  margins: dict[str, np.ndarray], drift_per_text: np.ndarray, seed: int = 0) -> list[dict[str, Any]]:
    """Per category in `names`: the cue shift with its BH q over `names`, `significant`, `own_share`, and
    the direction where reference answers give one."""
    labels = np.asarray(cats, dtype=object)
    shifts = cue_shifts(r, labels, names, drift_per_text, seed=seed)
    rows = []
    for c in names:
        inside = labels == c
        row = {"measure": NAME, **shifts[c]}
        row["own_share"] = float(own[inside].mean()) if inside.any() else None
        row.update(direction(margins.get(c, np.zeros(0)), alpha))
        rows.append(row)
    ps = np.array([np.nan if x["p_value"] is None else x["p_value"] for x in rows])
    qs = benjamini_hochberg(ps) if len(ps) else ps
    for row, q in zip(rows, qs, strict=True):
        row["q_value"] = None if row["p_value"] is None else float(q)
        row["significant"] = row["p_value"] is not None and bool(q < alpha)
    return rows
