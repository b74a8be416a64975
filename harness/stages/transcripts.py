"""Probe transcripts: each probe text, as a prompt, followed by each model's own greedy response.

Fine-tuning changes what a model *writes*, and the positions where it writes it are the answer tokens,
which a corpus of prompts never reaches. So before annotation both models continue every probe text
(greedy, one line of at most `max_new_tokens` tokens: the response ends at the first newline after some
text, or at end-of-sequence), and the annotator and the usage shift read prompt + response.

One file per category, `<out>/<category>.jsonl`, two rows per probe (base first, then tuned):
{"text": prompt + response, "prompt", "response", "side", "index", "prompt_tokens"}, where
`prompt_tokens` is the prompt's length in tokens as the activation collection tokenizes it, so the
positions from `prompt_tokens` on are the response, and `margin` is the row's model's log p(desired) −
log p(undesired) for a probe whose corpus row gives reference continuations (else null).
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

from diffeval.harness.core import files, models, progress
from diffeval.harness.core.errors import DiffevalError
from diffeval.harness.core.files import SIDES
from diffeval.harness.core.io import atomic_write_jsonl
from diffeval.harness.core.rundir import RunDir, file_stamp, fresh_stage_dir
from diffeval.harness.core.stageconfig import TranscriptsConfig, stage_key
from diffeval.harness.stages.inputs import probe_inputs
from diffeval.harness.suite.taxonomy import read_probe_rows

log = logging.getLogger(__name__)

TRANSCRIPTS_VERSION = 3  # 2: turn-formatted probe texts become prompts for the assistant's turn; 3: reference margins
BATCH = 16


TURN = re.compile(r"(?m)^(User|Assistant):")


def as_prompt(text: str) -> str:
    """A probe text as a prompt for the model's answer. A text written as turns ("User: …" / "Assistant: …", the
    shipped probe corpora's form) ends at the start of the assistant's turn: a text that ends with the user's turn
    gets "\nAssistant:" appended, and a text that ends with an assistant answer loses that answer. Other texts
    (e.g. "Q: …\nA:") are prompts already and stay as they are."""
    turns = list(TURN.finditer(text))
    if not turns:
        return text
    last = turns[-1]
    if last.group(1) == "Assistant":
        return text[:last.end()]
    return text.rstrip() + "\nAssistant:"


def first_line(text: str) -> str:
    """The response up to the first newline that follows some non-blank text (leading blank lines kept)."""
    stripped = text.lstrip()
    lead = text[:len(text) - len(stripped)]
    return lead + stripped.split("\n", 1)[0]


def generate_responses(model: Any, tok: Any, prompts: list[str], max_new_tokens: int, device: str = "cpu") -> list[str]:
    """Greedy one-line continuations of `prompts` (batched, left-padded)."""
    import torch

    side, tok.padding_side = tok.padding_side, "left"
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    out = []
    try:
        for start in range(0, len(prompts), BATCH):
            enc = tok(prompts[start:start + BATCH], return_tensors="pt", padding=True).to(device)
            with torch.no_grad():
                ids = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad)
            new = ids[:, enc["input_ids"].shape[1]:]
            out += [first_line(tok.decode(row, skip_special_tokens=True)) for row in new]
    finally:
        tok.padding_side = side
    return out


def continuation_logprob(model: Any, tok: Any, prompts: list[str], continuations: list[str], device: str = "cpu") -> list[float]:
    """log p(continuation | prompt) under `model`, by teacher forcing (batched, right-padded)."""
    import torch

    out = []
    for start in range(0, len(prompts), BATCH):
        heads = [tok(p)["input_ids"] for p in prompts[start:start + BATCH]]
        fulls = [tok(p + c)["input_ids"] for p, c in zip(prompts[start:start + BATCH], continuations[start:start + BATCH],
                                                         strict=True)]
        width = max(len(f) for f in fulls)
        pad = tok.pad_token_id if tok.pad_token_id is not None else 0
        ids = torch.tensor([f + [pad] * (width - len(f)) for f in fulls], device=device)
        mask = torch.tensor([[1] * len(f) + [0] * (width - len(f)) for f in fulls], device=device)
        with torch.no_grad():
            logp = model(input_ids=ids, attention_mask=mask).logits.float().log_softmax(-1)
        for row, (head, full) in enumerate(zip(heads, fulls, strict=True)):
            n = min(len(head), len(full) - 1)  # the continuation's tokens start where the prompt's end
            targets = torch.tensor(full[n:], device=device)
            out.append(float(logp[row, n - 1:len(full) - 1].gather(1, targets[:, None]).sum()))
    return out


def reference_margins(model: Any, tok: Any, prompts: list[str], refs: list[tuple[str, str] | None],
                      device: str = "cpu") -> list[float | None]:
    """log p(desired) − log p(undesired) per prompt with references (None for those without)."""
    have = [i for i, r in enumerate(refs) if r is not None]
    if not have:
        return [None] * len(prompts)
    sel = [prompts[i] for i in have]
    good = continuation_logprob(model, tok, sel, [refs[i][0] for i in have], device)
    bad = continuation_logprob(model, tok, sel, [refs[i][1] for i in have], device)
    out: list[float | None] = [None] * len(prompts)
    for i, g, b in zip(have, good, bad, strict=True):
        out[i] = g - b
    return out


def write_transcripts(base: str, tuned: str, probes: dict[str, list[str]], out: str | Path, max_new_tokens: int,
                      dtype: str = "float32", device: str = "cpu",
                      references: dict[str, list[tuple[str, str] | None]] | None = None,
                      model_devices: tuple[str, ...] = ()) -> list[Path]:
    """Generate both models' responses to every probe text; write one transcript file per category. With
    `references` (per category, each probe's (desired, undesired) continuations or None), each row also holds
    its model's `margin`, log p(desired) − log p(undesired)."""

    out = Path(out)
    specs = [models.resolve_spec(s) for s in (base, tuned)]
    toks = [models.load_tokenizer(s) for s in specs]
    models.check_same_tokenizer(toks[0], toks[1], base, tuned)
    tok = toks[1]
    responses: dict[str, dict[str, list[str]]] = {}
    margins: dict[str, dict[str, list[float | None]]] = {}
    probes = {cat: [as_prompt(t) for t in texts] for cat, texts in probes.items()}
    for side, spec, dev in zip(SIDES, specs, model_devices or (device, device), strict=True):
        model = models.load_model(spec, dtype, dev)
        if not hasattr(model, "generate"):
            raise DiffevalError(f"{spec.spec} cannot generate text; run with --probe-responses 0")
        for cat, texts in progress.track(list(probes.items()), f"transcripts: {side} responses", "categories"):
            responses.setdefault(cat, {})[side] = generate_responses(model, tok, texts, max_new_tokens, dev)
            refs = (references or {}).get(cat) or [None] * len(texts)
            margins.setdefault(cat, {})[side] = reference_margins(model, tok, texts, refs, dev)
        del model
    paths = []
    for cat, texts in probes.items():
        rows = []
        for i, prompt in enumerate(texts):
            n_prompt = len(tok(prompt, truncation=False)["input_ids"])
            for side in SIDES:
                resp = responses[cat][side][i]
                rows.append({"text": prompt + resp, "prompt": prompt, "response": resp, "side": side, "index": i,
                             "prompt_tokens": n_prompt, "margin": margins[cat][side][i]})
        paths.append(atomic_write_jsonl(out / f"{cat}.jsonl", rows))
    return paths


def read_transcripts(path: str | Path) -> list[dict[str, Any]]:
    rows = [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    if not rows or any(not {"text", "side", "index", "prompt_tokens"} <= set(r) for r in rows):
        raise DiffevalError(f"{path} is not a transcript file (rows need text, side, index, prompt_tokens); "
                            "delete it and re-run so the transcripts stage writes it again")
    return rows


def stage_transcripts(run: RunDir, cfg: TranscriptsConfig) -> list[str]:
    """Both models' one-line responses to every probe text (probes/transcripts/<category>.jsonl); returns
    the transcript files, one per category with probes."""

    tax, probes, probe_files = probe_inputs(cfg.probes)
    specs = [models.describe(models.resolve_spec(s)) for s in (cfg.base, cfg.tuned)]
    key = stage_key(cfg, TRANSCRIPTS_VERSION, probe_files, [file_stamp(f) for f in probe_files], specs)
    out = run.path / files.TRANSCRIPTS_DIR
    if not run.is_done("transcripts", key):
        fresh_stage_dir(out, key)
        with run.stage("transcripts", key) as rec:
            references = {c: [refs for _, refs in read_probe_rows(tax.categories[c].probes, c)] for c in probes}
            rec["outputs"] = write_transcripts(cfg.base, cfg.tuned, probes, out, cfg.max_new_tokens,
                                               dtype=cfg.dtype, device=cfg.device, references=references,
                                               model_devices=cfg.model_devices)
    return [str(out / f"{c}.jsonl") for c in probes]
