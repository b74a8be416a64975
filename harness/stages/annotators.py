"""Latent → capability category annotation.

The default annotator tests activation enrichment: for latent j and category c, is j's activation on
c's probe texts higher than on the other categories' probe texts? The unit is a probe text (a latent's
activation summarised by its maximum over the text's tokens, since tokens of one text are not
independent). One-sided Mann–Whitney U per latent × category, Benjamini–Hochberg over all of them; a
latent also needs an effect worth naming (it fires on a share of c's texts, and more than `min_ratio`×
as strongly as elsewhere). Latents with no significant category are `unassigned`.

An annotator is anything with `name` and `annotate(inputs) -> list[LatentLabel]`; `llm_annotator.LLMAnnotator`
labels latents from their top-activating contexts with an OpenAI-compatible chat endpoint instead.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from diffeval.harness.core.errors import DiffevalError
from diffeval.harness.core.fdr import benjamini_hochberg
from diffeval.harness.suite.taxonomy import UNASSIGNED

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LatentLabel:
    latent: int
    category: str                      # the primary category, or unassigned
    categories: tuple[str, ...] = ()   # every significant category, most significant first
    q_value: float | None = None       # of the primary category
    enrichment: float | None = None    # mean activation on the category's probes / elsewhere
    proposed: str | None = None        # the LLM annotator's label before its detection test
    detection: dict[str, Any] | None = None  # the LLM annotator's detection test of `proposed` (score and counts)


@dataclass
class AnnotationInputs:
    categories: list[str]                       # assignable categories (not unassigned)
    descriptions: dict[str, str]
    seq_acts: np.ndarray | None = None          # [n_texts, n_latents] max activation per probe text
    seq_labels: list[str] | None = None         # category of each probe text
    latents: list[dict[str, Any]] = field(default_factory=list)  # latents.jsonl rows (top contexts)


class Annotator(Protocol):
    name: str

    def annotate(self, inputs: AnnotationInputs) -> list[LatentLabel]: ...


@dataclass(frozen=True)
class EnrichmentAnnotator:
    alpha: float = 0.05       # BH false discovery rate over latents × categories
    min_ratio: float = 2.0    # mean activation on the category's probes over the rest
    min_fire: float = 0.1     # share of the category's probe texts the latent fires on
    name: str = "enrichment"

    def test(self, inputs: AnnotationInputs) -> dict[str, np.ndarray]:
        """p, q, ratio and fire share per category × latent (arrays [n_categories, n_latents])."""
        from scipy.stats import mannwhitneyu

        if inputs.seq_acts is None or inputs.seq_labels is None:
            raise DiffevalError("the enrichment annotator needs probe-text activations (seq_acts, seq_labels)")
        acts = np.asarray(inputs.seq_acts, dtype=np.float64)
        labels = np.asarray(inputs.seq_labels)
        p = np.ones((len(inputs.categories), acts.shape[1]))
        ratio, fire = np.zeros_like(p), np.zeros_like(p)
        for i, c in enumerate(inputs.categories):
            inside = labels == c
            if inside.sum() == 0:
                raise DiffevalError(f"category {c!r} has no probe texts; give it a probe corpus or remove it")
            if (~inside).sum() == 0:
                raise DiffevalError("enrichment needs probe texts of at least two categories")
            a, b = acts[inside], acts[~inside]
            live = (a.max(0) > b.min(0))  # else U is at its minimum and p = 1 anyway
            if live.any():
                with np.errstate(invalid="ignore", divide="ignore"):
                    res = mannwhitneyu(a[:, live], b[:, live], alternative="greater", axis=0, method="asymptotic")
                p[i, live] = np.nan_to_num(res.pvalue, nan=1.0)
            ratio[i] = (a.mean(0) + 1e-9) / (b.mean(0) + 1e-9)
            fire[i] = (a > 0).mean(0)
        return {"p": p, "q": benjamini_hochberg(p), "ratio": ratio, "fire": fire}

    def annotate(self, inputs: AnnotationInputs) -> list[LatentLabel]:
        t = self.test(inputs)
        ok = (t["q"] <= self.alpha) & (t["ratio"] >= self.min_ratio) & (t["fire"] >= self.min_fire)
        labels = []
        for j in range(t["q"].shape[1]):
            hits = [int(i) for i in np.flatnonzero(ok[:, j])]
            hits.sort(key=lambda i: (t["q"][i, j], -t["ratio"][i, j]))
            if hits:
                first = hits[0]
                labels.append(LatentLabel(j, inputs.categories[first], tuple(inputs.categories[i] for i in hits),
                                          float(t["q"][first, j]), float(t["ratio"][first, j])))
            else:
                labels.append(LatentLabel(j, UNASSIGNED))
        return labels
