"""The texts activations are collected on: corpus files, the shipped corpus, benchmark prompts, and with
`--corpus-responses` the probe transcripts.

A corpus file is `.txt` (one text per line) or `.jsonl` (a `text` field, or chat `messages` rendered with
the tuned model's chat template). Each text reaches the corpus once: a corpus text that is a transcript's
prompt is left to the transcript, and a probe's second transcript row adds only its response's positions.

A forward batch is padded to its longest sequence, so the collection orders the sequences by length within
windows of up to `BUCKET_BATCHES` batches (`length_buckets`, `bucket_window`): on the documentation corpus
of docs/real-pairs.md, Gemma-3-270M's batches of 16 fill 64 % of their token slots in corpus order and 99 %
so ordered.
"""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path
from typing import Any

from diffeval.harness.core.config import ActivationsConfig
from diffeval.harness.core.errors import DiffevalError
from diffeval.harness.core.files import source_name
from diffeval.harness.stages.transcripts import read_transcripts
from diffeval.harness.suite import CORPUS_DIR, registry

log = logging.getLogger(__name__)
BUCKET_BATCHES = 64  # forward batches whose sequences are ordered by length together (at most)
MIN_WINDOWS = 8  # a token budget spans at least this many windows, so that it reads every source


def corpus_sequences(cfg: ActivationsConfig, chat_tok: Any) -> list[dict[str, Any]]:
    """Texts to collect on, interleaved by source: the corpus files (or the shipped corpus) and the
    task prompts, plain and chat-formatted with `chat_tok`'s template (the tuned model's)."""
    def read(path: str) -> list[dict[str, Any]]:
        return [{**s, "source": source_name(path, cfg.source_root)} for s in read_corpus_file(Path(path), chat_tok)]

    transcripts = [transcript_sequences(p, source_name(p, cfg.source_root)) for p in cfg.extra]
    covered = {s["prompt"] for group in transcripts for s in group}
    groups = [[s for s in read(p) if s["text"] not in covered] for p in cfg.corpus]
    if not cfg.corpus:
        groups += shipped_corpus(chat_tok)
    groups += transcripts
    names = cfg.tasks or (() if cfg.corpus else tuple(registry.shipped_suite()))
    defs = registry.resolve(names, cfg.tasks_dir) if names else []
    user_turn = chat_prefix(chat_tok)
    for name, task in registry.load_tasks(defs).items():
        prompts = [task.doc_to_text(doc) for doc in task.eval_docs]
        groups.append([{"kind": "task", "source": name, "doc_id": i, "text": p} for i, p in enumerate(prompts)])
        if user_turn and all(p.startswith(user_turn) for p in prompts):
            continue  # the task's prompts are in the chat template's form already: never wrapped twice
        groups.append([{"kind": "chat", "source": name, "doc_id": i, "text": render_chat(
            chat_tok, [{"role": "user", "content": p}], generation_prompt=True)} for i, p in enumerate(prompts)])
    seqs = _interleave(groups)
    if not seqs:
        raise DiffevalError("the activation corpus is empty: pass --corpus files and/or --tasks")
    return seqs


def bucket_window(lengths: list[int], batch_size: int, budget: int) -> int:
    """Batches per window of `length_buckets`: BUCKET_BATCHES, or fewer where the token budget would otherwise
    span fewer than MIN_WINDOWS windows (a window mixes the sources as `_interleave` does, its batches come
    in a random order, and a budget of a few batches must still read every kind of text; 1 = corpus order)."""
    mean = max(1.0, sum(lengths) / max(len(lengths), 1))
    return max(1, min(BUCKET_BATCHES, int(budget / (MIN_WINDOWS * batch_size * mean))))


def length_buckets(seqs: list[dict[str, Any]], lengths: list[int], batch_size: int,
                   window: int = BUCKET_BATCHES, seed: int = 0) -> list[dict[str, Any]]:
    """`seqs` reordered so that each forward batch holds sequences of about one length (`lengths`, in tokens as
    the forward pass sees them): each window of `window` batches keeps its sequences, sorted by length and cut
    into batches, and those batches come in a seeded random order, so that a stream's rows do not run from
    short texts to long ones. The mixing of sources (`_interleave`) holds at the scale of a window."""
    if window <= 1:
        return list(seqs)  # a window of one batch: its composition is the corpus order's
    rng = random.Random(seed)
    out: list[dict[str, Any]] = []
    span = window * batch_size
    for start in range(0, len(seqs), span):
        order = sorted(range(start, min(start + span, len(seqs))), key=lambda i: lengths[i])
        batches = [order[j:j + batch_size] for j in range(0, len(order), batch_size)]
        rng.shuffle(batches)
        out += [seqs[i] for batch in batches for i in batch]
    return out


def transcript_sequences(path: str, source: str) -> list[dict[str, Any]]:
    """A probe transcript file as corpus sequences in which every token is collected once: the first model's
    row whole (prompt and response), each later row of the same probe from its response on (`skip` positions
    are left out), since the prompt's tokens, and so both models' activations on them, are the same."""
    return prompts_read_once([{"kind": "transcript", "source": source, "doc_id": row["index"], "side": row["side"],
                               "text": row["text"], "prompt": row.get("prompt", ""),
                               "prompt_tokens": row["prompt_tokens"]} for row in read_transcripts(path)])


def prompts_read_once(seqs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`seqs` (in collection order, e.g. after `length_buckets`) with each probe's first transcript row read
    whole and its later rows from their responses on, so that the row that skips a prompt never comes before
    the one that reads it."""
    seen: set[tuple[str, int]] = set()
    for seq in seqs:
        if seq.get("kind") == "transcript":
            key = (seq["source"], seq["doc_id"])
            seq["skip"] = seq["prompt_tokens"] if key in seen else 0
            seen.add(key)
    return seqs


def _interleave(groups: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """One list that starts with the first item of every group and then mixes the groups in
    proportion to their sizes (so a small token budget still sees plain, chat and task text)."""
    keyed = [(j / len(g), gi, j) for gi, g in enumerate(groups) for j in range(len(g))]
    return [groups[gi][j] for _, gi, j in sorted(keyed)]


def shipped_corpus(chat_tok: Any) -> list[list[dict[str, Any]]]:
    """The offline default: harness/corpus/plain.jsonl and chat.jsonl (each skipped if absent)."""
    groups = []
    for name in ("plain.jsonl", "chat.jsonl"):
        path = CORPUS_DIR / name
        if path.is_file():
            groups.append([{**s, "source": f"shipped:{name}"} for s in read_corpus_file(path, chat_tok)])
        else:
            log.warning("shipped corpus file %s is missing; collecting without it", path)
    return groups


def read_corpus_file(path: Path, chat_tok: Any) -> list[dict[str, Any]]:
    """Sequences from a .txt file (one text per line) or a .jsonl file ('text' or 'messages' rows)."""
    if not path.is_file():
        raise DiffevalError(f"corpus file {path} does not exist (use .txt, one text per line, or .jsonl rows "
                            "with 'text' or 'messages')")
    lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    if path.suffix != ".jsonl":
        return [{"kind": "plain", "source": str(path), "text": t} for t in lines]
    seqs = []
    for i, line in enumerate(lines, 1):
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DiffevalError(f"{path} line {i} is not JSON ({e.msg})") from None
        if isinstance(row, dict) and isinstance(row.get("text"), str):
            seqs.append({"kind": "plain", "source": str(path), "doc_id": i - 1, "text": row["text"]})
        elif isinstance(row, dict) and _is_chat(row.get("messages")):
            seqs.append({"kind": "chat", "source": str(path), "doc_id": i - 1, "text": render_chat(chat_tok, row["messages"])})
        else:
            raise DiffevalError(f"{path} line {i} has neither a 'text' string nor 'messages' (a list of "
                                "{'role', 'content'} objects)")
    return seqs


def _is_chat(messages: Any) -> bool:
    return isinstance(messages, list) and bool(messages) and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in messages)


def chat_prefix(tok: Any) -> str:
    """What the chat template writes before a user message (after the BOS token), e.g. "Q: " for a template
    "Q: {content}\nA:"; empty when it cannot be told."""
    marker = "\x00diffeval\x00"
    text = render_chat(tok, [{"role": "user", "content": marker}])
    bos = getattr(tok, "bos_token", None) or ""
    head = text.split(marker, 1)[0] if marker in text else ""
    return head[len(bos):] if bos and head.startswith(bos) else head


def render_chat(tok: Any, messages: list[dict[str, str]], generation_prompt: bool = False) -> str:
    """A conversation as text in the tokenizer's chat template, or "User: …\\nAssistant: …" without one."""
    if getattr(tok, "chat_template", None):
        return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
    text = "\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in messages)
    return text + "\nAssistant:" if generation_prompt else text
