"""The LLM annotator: a category per latent from its top contexts, kept only where it lets the model detect them.

Any OpenAI-compatible `/chat/completions` endpoint serves (a local llama.cpp server, vLLM, a hosted API).
For each latent with top contexts:

1. **Labelling.** Half of its top contexts (the 1st, 3rd, 5th, …, so both halves hold strong ones) are
   shown with the firing token marked; the model answers with one category of the taxonomy or unassigned
   (a JSON {"category": …} or the name alone: the first category name in the answer counts).
2. **Detection.** The label is tested on the other half, which the model has not seen, against as many
   random contexts (other latents' top contexts that share no text with this latent's). For each snippet
   one request asks whether it fits the category (yes / no). The detection score is the balanced accuracy
   (held-out contexts said to fit + random ones said not to fit, each as a share, averaged): 0.5 is chance,
   1 is perfect. A label scoring below `min_detection` is left `unassigned`; the row keeps the proposed
   label and the counts, so a reader sees what was rejected and why.

The random contexts are other latents' strongest contexts rather than arbitrary corpus text, so the test
asks whether the label picks out *this* latent's contexts among other salient ones. One latent costs one
labelling request and 2 × `n_detect` detection requests.
"""

from __future__ import annotations

import json
import logging
import os
import random
import urllib.request
from dataclasses import dataclass
from typing import Any

from diffeval.harness.core import progress
from diffeval.harness.core.errors import DiffevalError
from diffeval.harness.stages.annotators import AnnotationInputs, LatentLabel
from diffeval.harness.suite.taxonomy import UNASSIGNED

log = logging.getLogger(__name__)

LABEL_PROMPT = """Here are text snippets on which one feature of a language model fires. The token it fires on is \
marked with double square brackets.
{contexts}

Which of these categories do the snippets share?
{categories}
- unassigned: none of them

Answer with the category name only."""

DETECT_PROMPT = """Snippet (the token in question is marked with double square brackets):
{snippet}

Is this snippet about {category} ({description})? Answer yes or no."""

MIN_DETECTION = 0.75  # balanced accuracy a label needs: with 4 + 4 snippets, 3 of 4 right on each side


@dataclass(frozen=True)
class LLMAnnotator:
    """Labels latents with an OpenAI-compatible chat endpoint and keeps the labels that pass detection.

    `base_url` like http://localhost:8000/v1; the key comes from `api_key` or $OPENAI_API_KEY. Only latents
    listed in `only` (by default every latent with contexts) are sent.
    """

    base_url: str
    model: str
    api_key: str | None = None
    only: frozenset[int] | None = None
    min_detection: float = MIN_DETECTION
    n_detect: int = 4      # held-out contexts, and as many random ones, per label
    seed: int = 0          # the draw of random contexts
    timeout: float = 60.0
    name: str = "llm"

    def annotate(self, inputs: AnnotationInputs) -> list[LatentLabel]:
        pool = [(int(row["latent"]), c) for row in inputs.latents for c in row.get("top_contexts") or []]
        rng = random.Random(self.seed)
        todo = [row for row in inputs.latents if row.get("top_contexts")
                and (self.only is None or int(row["latent"]) in self.only)]
        done = {int(row["latent"]): self._label(row, inputs, pool, rng)
                for row in progress.track(todo, "llm annotator", "latents")}
        return [done.get(int(row["latent"]), LatentLabel(int(row["latent"]), UNASSIGNED)) for row in inputs.latents]

    def _label(self, row: dict[str, Any], inputs: AnnotationInputs, pool: list[tuple[int, dict[str, Any]]],
               rng: random.Random) -> LatentLabel:
        j, ctxs = int(row["latent"]), row["top_contexts"]
        shown, held = ctxs[0::2], ctxs[1::2][:self.n_detect]
        listing = "\n".join(f"- {c}: {inputs.descriptions.get(c, '')}" for c in inputs.categories)
        answer = self._ask(LABEL_PROMPT.format(categories=listing, contexts="\n".join(_snippet(c) for c in shown)))
        proposed = parse_category(answer, inputs.categories)
        if proposed == UNASSIGNED:
            return LatentLabel(j, UNASSIGNED)
        own = {_text(c) for c in ctxs}
        others = [c for i, c in pool if i != j and _text(c) not in own]
        randoms = rng.sample(others, min(len(held), len(others)))
        if not held or not randoms:  # a label that cannot be tested is not kept
            return LatentLabel(j, UNASSIGNED, proposed=proposed)
        description = inputs.descriptions.get(proposed, "")
        hits = sum(self._fits(proposed, description, c) for c in held)
        false_alarms = sum(self._fits(proposed, description, c) for c in randoms)
        score = (hits / len(held) + 1 - false_alarms / len(randoms)) / 2
        detection = {"score": round(score, 4), "hits": hits, "held_out": len(held), "false_alarms": false_alarms,
                     "random": len(randoms)}
        kept = score >= self.min_detection
        return LatentLabel(j, proposed if kept else UNASSIGNED, (proposed,) if kept else (), proposed=proposed,
                           detection=detection)

    def _fits(self, category: str, description: str, ctx: dict[str, Any]) -> bool:
        answer = self._ask(DETECT_PROMPT.format(category=category, description=description, snippet=_snippet(ctx)))
        return parse_yes(answer)

    def _ask(self, prompt: str) -> str:
        body = json.dumps({"model": self.model, "temperature": 0, "max_tokens": 32,
                           "messages": [{"role": "user", "content": prompt}]}).encode()
        key = self.api_key or os.environ.get("OPENAI_API_KEY", "")
        req = urllib.request.Request(self.base_url.rstrip("/") + "/chat/completions", data=body, method="POST",
                                     headers={"Content-Type": "application/json", "Authorization": f"Bearer {key}"})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return json.load(resp)["choices"][0]["message"]["content"] or ""
        except (OSError, KeyError, IndexError, TypeError, json.JSONDecodeError) as e:
            raise DiffevalError(f"LLM annotator endpoint {self.base_url} failed: {e}") from None


def parse_category(answer: str, categories: list[str]) -> str:
    """The category an answer names: a JSON {"category": …}, or else the category name that the answer
    mentions first (unassigned when it mentions none, or says unassigned first)."""
    start, end = answer.find("{"), answer.rfind("}")
    if 0 <= start < end:
        try:
            named = json.loads(answer[start:end + 1])["category"]
            return named if named in categories else UNASSIGNED
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            pass
    text = answer.lower()
    found = sorted((text.find(c.lower()), c) for c in [*categories, UNASSIGNED] if c.lower() in text)
    if not found:
        log.warning("LLM annotator named no category (%r); latent left unassigned", answer[:80])
        return UNASSIGNED
    return found[0][1]


def parse_yes(answer: str) -> bool:
    """True when the answer's first word is yes; anything else (no, a refusal, noise) counts as no."""
    words = answer.strip().lower().split()
    return bool(words) and words[0].strip(".,!:;\"'*") == "yes"


def _text(ctx: dict[str, Any]) -> str:
    return ctx.get("context") or ""


def _snippet(ctx: dict[str, Any]) -> str:
    """A context line with its firing token (the context's last piece) marked."""
    token, text = ctx.get("token") or "", _text(ctx)
    head = text[: len(text) - len(token)] if token and text.endswith(token) else text
    return f"- {head}[[{token}]]"
