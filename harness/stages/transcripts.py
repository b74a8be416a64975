"""Probe transcripts: each probe text, as a prompt, followed by each model's own greedy response.

Fine-tuning changes what a model *writes*, and the positions where it writes it are the answer tokens,
which a corpus of prompts never reaches. So before annotation both models continue every probe text
(greedy, one line of at most `max_new_tokens` tokens: the response ends at the first newline after some
text, or at end-of-sequence), and the annotator and the usage shift read prompt + response.

One file per category, `<out>/<category>.jsonl`, two rows per probe (base first, then tuned):
{"text": prompt + response, "prompt", "response", "side", "index", "prompt_tokens"}, where
`prompt_tokens` is the prompt's length in tokens as the activation collection tokenizes it, so the
positions from `prompt_tokens` on are the response.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from diffeval.harness.core import files, models
from diffeval.harness.core.config import config_hash
from diffeval.harness.core.errors import DiffevalError
from diffeval.harness.core.files import SIDES
from diffeval.harness.core.io import atomic_write_jsonl
from diffeval.harness.core.runconfig import RunConfig
from diffeval.harness.core.rundir import RunDir, file_stamp, fresh_stage_dir

log = logging.getLogger(__name__)

TRANSCRIPTS_VERSION = 2  # 2: turn-formatted probe texts become prompts for the assistant's turn
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


def write_transcripts(base: str, tuned: str, probes: dict[str, list[str]], out: str | Path, max_new_tokens: int,
                      dtype: str = "float32", device: str = "cpu") -> list[Path]:
    """Generate both models' responses to every probe text; write one transcript file per category."""

    out = Path(out)
    specs = [models.resolve_spec(s) for s in (base, tuned)]
    toks = [models.load_tokenizer(s) for s in specs]
    models.check_same_tokenizer(toks[0], toks[1], base, tuned)
    tok = toks[1]
    responses: dict[str, dict[str, list[str]]] = {}
    probes = {cat: [as_prompt(t) for t in texts] for cat, texts in probes.items()}
    for side, spec in zip(SIDES, specs, strict=True):
        model = models.load_model(spec, dtype, device)
        if not hasattr(model, "generate"):
            raise DiffevalError(f"{spec.spec} cannot generate text; run with --probe-responses 0")
        for cat, texts in tqdm(probes.items(), desc=f"{side} responses", disable=None):
            responses.setdefault(cat, {})[side] = generate_responses(model, tok, texts, max_new_tokens, device)
        del model
    paths = []
    for cat, texts in probes.items():
        rows = []
        for i, prompt in enumerate(texts):
            n_prompt = len(tok(prompt, truncation=False)["input_ids"])
            for side in SIDES:
                resp = responses[cat][side][i]
                rows.append({"text": prompt + resp, "prompt": prompt, "response": resp, "side": side, "index": i,
                             "prompt_tokens": n_prompt})
        paths.append(atomic_write_jsonl(out / f"{cat}.jsonl", rows))
    return paths


def read_transcripts(path: str | Path) -> list[dict[str, Any]]:
    rows = [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    if not rows or any(not {"text", "side", "index", "prompt_tokens"} <= set(r) for r in rows):
        raise DiffevalError(f"{path} is not a transcript file (rows need text, side, index, prompt_tokens); "
                            "delete it and re-run so the transcripts stage writes it again")
    return rows


def stage_transcripts(run: RunDir, cfg: RunConfig, probes: dict[str, list[str]], probe_files: list[str]) -> list[str]:
    """Both models' one-line responses to every probe text (probes/transcripts/<category>.jsonl)."""

    specs = [models.describe(models.resolve_spec(s)) for s in (cfg.base, cfg.tuned)]
    key = config_hash({"max_new_tokens": cfg.probe_responses, "files": probe_files, "dtype": cfg.dtype,
                       "version": TRANSCRIPTS_VERSION},
                      [file_stamp(f) for f in probe_files], specs)
    out = run.path / files.TRANSCRIPTS_DIR
    if not run.is_done("transcripts", key):
        fresh_stage_dir(out, key)
        with run.stage("transcripts", key) as rec:
            rec["outputs"] = write_transcripts(cfg.base, cfg.tuned, probes, out, cfg.probe_responses,
                                               dtype=cfg.dtype, device=cfg.device)
    return [str(out / f"{c}.jsonl") for c in probes]
