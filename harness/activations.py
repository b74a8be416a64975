"""Paired activation collection: both models, identical token ids, forward stopped at one layer.

The forward pass stops at the collection layer (a hook raises once that block has run), so no
later block and no output head is computed. Rows for BOS and padding positions are dropped, and
so are extreme-norm outliers (attention-sink positions whose norm dwarfs the rest). Rows are
written in memory-mapped shards (see crosscoders.data for the layout); memory stays flat as the
token budget grows, and an interrupted collection resumes after its last finished shard.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from harness import models
from harness.errors import DiffevalError
from harness.io import atomic_write_json

log = logging.getLogger(__name__)

ACT_FORMAT_VERSION = 1  # matches crosscoders.data.FORMAT_VERSION


@dataclass(frozen=True)
class ActivationsConfig:
    base: str = field(default="", metadata={"help": "base model spec"})
    tuned: str = field(default="", metadata={"help": "tuned model spec"})
    layer: float = field(default=0.5, metadata={"help": "block index, or a fraction of depth in (0, 1) (0.5 = middle)"})
    tokens: int = field(default=100_000, metadata={"help": "activation rows (token positions) to collect"})
    seq_len: int = field(default=128, metadata={"help": "longest sequence, in tokens"})
    batch_size: int = field(default=16, metadata={"help": "sequences per forward pass"})
    corpus: tuple[str, ...] = field(default=(), metadata={"help": "text files (.txt: one text per line; .jsonl: a 'text' field)"})
    tasks: tuple[str, ...] = field(default=(), metadata={"help": "benchmark tasks whose prompts join the corpus; with no corpus and no tasks: the shipped suite"})
    tasks_dir: tuple[str, ...] = field(default=(), metadata={"help": "extra task directories"})
    shard_rows: int = field(default=65_536, metadata={"help": "rows per shard file"})
    outlier_factor: float = field(default=20.0, metadata={"help": "drop rows whose norm exceeds this × the median norm"})
    store_dtype: str = field(default="float32", metadata={"help": "dtype of stored activations: float32 or float16"})
    device: str = field(default="cpu", metadata={"help": "torch device"})
    dtype: str = field(default="float32", metadata={"help": "model weights dtype"})

    def __post_init__(self) -> None:
        if self.tokens < 1 or self.seq_len < 2 or self.batch_size < 1 or self.shard_rows < 1:
            raise DiffevalError("tokens, batch_size and shard_rows must be >= 1 and seq_len >= 2")
        if self.store_dtype not in ("float32", "float16"):
            raise DiffevalError(f"store_dtype {self.store_dtype!r} must be float32 or float16")
        if self.layer < 0:
            raise DiffevalError(f"layer must be >= 0 (a block index or a fraction of depth), got {self.layer}")


class _Stop(Exception):
    """Raised by the collection hook to end the forward pass early."""


def decoder_blocks(model: Any) -> Any:
    """The ModuleList of transformer blocks (Llama, Gemma, Mistral, GPT-2, GPT-NeoX, …)."""
    import torch

    n = model.config.num_hidden_layers if hasattr(model.config, "num_hidden_layers") else model.config.n_layer
    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == n:
            return module
    raise DiffevalError(f"cannot find the {n} transformer blocks of {type(model).__name__}")


def resolve_layer(layer: float, n_layers: int, name: str) -> int:
    """A block index from an integer or a fraction of depth; out-of-range layers are errors."""
    if 0 < layer < 1:
        return min(n_layers - 1, int(layer * n_layers))
    if layer != int(layer) or not 0 <= layer < n_layers:
        raise DiffevalError(f"layer {layer} is out of range for {name} ({n_layers} blocks): use 0..{n_layers - 1} "
                            "or a fraction of depth such as 0.5")
    return int(layer)


def truncated_hidden(model: Any, blocks: Any, layer: int, input_ids: Any, attention_mask: Any) -> Any:
    """Residual stream after block `layer` ([batch, seq, d_model]); later blocks never run."""
    captured = {}

    def hook(_module: Any, _inputs: Any, output: Any) -> None:
        captured["h"] = output[0] if isinstance(output, tuple) else output
        raise _Stop

    handle = blocks[layer].register_forward_hook(hook)
    try:
        model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    except _Stop:
        pass
    finally:
        handle.remove()
    return captured["h"]


def corpus_sequences(cfg: ActivationsConfig, chat_template_tok: Any) -> list[dict[str, Any]]:
    """Texts to collect on: plain text, the same prompts chat-formatted, and task prompts."""
    from harness import taskreg

    seqs: list[dict[str, Any]] = []
    for path in cfg.corpus:
        seqs += [{"kind": "text", "source": str(path), "text": t} for t in _read_texts(Path(path))]
    # offline default: the prompts of the shipped task suite (plain and chat-formatted)
    names = cfg.tasks or (() if cfg.corpus else tuple(taskreg.shipped_suite()))
    defs = taskreg.resolve(names, cfg.tasks_dir) if names else []
    for name, task in taskreg.load_tasks(defs).items():
        for i, doc in enumerate(task.eval_docs):
            prompt = task.doc_to_text(doc)
            seqs.append({"kind": "task", "source": name, "doc_id": i, "text": prompt})
            if chat_template_tok.chat_template:
                chat = chat_template_tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                                             add_generation_prompt=True)
                seqs.append({"kind": "chat", "source": name, "doc_id": i, "text": chat})
    if not seqs:
        raise DiffevalError("the activation corpus is empty: pass --corpus files and/or --tasks")
    return seqs


def _read_texts(path: Path) -> list[str]:
    if not path.is_file():
        raise DiffevalError(f"corpus file {path} does not exist (use .txt, one text per line, or .jsonl with 'text')")
    lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    if path.suffix == ".jsonl":
        return [json.loads(ln)["text"] for ln in lines]
    return lines


def collect_activations(cfg: ActivationsConfig, out: str | Path) -> Path:
    """Collect paired activations into `out` (resuming a previous partial run of the same config)."""
    import torch
    from tqdm.auto import tqdm

    out = Path(out)
    specs = [models.resolve_spec(cfg.base), models.resolve_spec(cfg.tuned)]
    toks = [models.load_tokenizer(s) for s in specs]
    models.check_same_tokenizer(toks[0], toks[1], cfg.base, cfg.tuned)
    seqs = corpus_sequences(cfg, toks[1])
    key = hashlib.sha256(json.dumps([cfg.__dict__, [models.describe(s) for s in specs]], sort_keys=True,
                                    default=str).encode()).hexdigest()[:16]
    manifest = _resume_manifest(out, key)
    lms = [models.load_model(s, cfg.dtype, cfg.device) for s in specs]
    blocks = [decoder_blocks(m) for m in lms]
    layers = [resolve_layer(cfg.layer, len(b), s.spec) for b, s in zip(blocks, specs, strict=True)]
    d_models = [m.config.hidden_size for m in lms]
    if d_models[0] != d_models[1]:
        raise DiffevalError(f"hidden sizes differ ({d_models[0]} vs {d_models[1]}); this collector needs equal sizes")
    manifest.update({"models": [models.describe(s) for s in specs], "layer": layers, "d_model": d_models[0],
                     "n_layers": [len(b) for b in blocks]})
    writer = _ShardWriter(out, manifest, cfg)
    tok = toks[1]
    bar = tqdm(total=cfg.tokens, initial=manifest["rows"], desc="activations", unit="tok", disable=None)
    seq_id = manifest["next_sequence"]
    with torch.no_grad():
        while manifest["rows"] + writer.pending < cfg.tokens and seq_id < len(seqs):
            batch = seqs[seq_id:seq_id + cfg.batch_size]
            enc = tok([s["text"] for s in batch], return_tensors="pt", padding=True, truncation=True,
                      max_length=cfg.seq_len).to(cfg.device)
            hs = [truncated_hidden(m, b, layer, enc["input_ids"], enc["attention_mask"]).float()
                  for m, b, layer in zip(lms, blocks, layers, strict=True)]
            acts = torch.stack(hs, 2)  # [batch, seq, n_models, d_model]
            keep = enc["attention_mask"].bool() & (enc["input_ids"] != tok.bos_token_id)
            b_idx, pos = keep.nonzero(as_tuple=True)
            ids = enc["input_ids"][b_idx, pos]
            rows = torch.stack([b_idx + seq_id, pos, ids], 1).cpu().numpy()
            before = writer.pending
            writer.add(acts[b_idx, pos].cpu().numpy(), rows)
            for j, s in enumerate(batch):
                writer.sequences.append({"id": seq_id + j, **s, "tokens": tok.convert_ids_to_tokens(
                    enc["input_ids"][j][enc["attention_mask"][j].bool()].tolist())})
            seq_id += len(batch)
            manifest["next_sequence"] = seq_id
            bar.update(writer.pending - before)
            writer.flush_full_shards()
    writer.finish(cfg.tokens)
    bar.close()
    return out


def _resume_manifest(out: Path, key: str) -> dict[str, Any]:
    path = out / "manifest.json"
    if path.exists():
        try:
            old = json.loads(path.read_text())
        except json.JSONDecodeError:
            old = {}
        if old.get("config_key") == key and not old.get("complete"):
            log.info("resuming activation collection at %d rows", old["rows"])
            return old
        if old.get("config_key") == key and old.get("complete"):
            return old
        if old:
            raise DiffevalError(f"{out} holds activations of a different configuration; choose another --out")
    return {"format_version": ACT_FORMAT_VERSION, "config_key": key, "complete": False, "rows": 0, "shards": [],
            "next_sequence": 0, "n_models": 2, "sums": None}


class _ShardWriter:
    """Buffers rows, writes full shards atomically and records them in the manifest."""

    def __init__(self, out: Path, manifest: dict[str, Any], cfg: ActivationsConfig) -> None:
        self.out, self.manifest, self.cfg = out, manifest, cfg
        self.acts: list[np.ndarray] = []
        self.rows: list[np.ndarray] = []
        self.sequences: list[dict[str, Any]] = []
        self.pending = 0
        self.norms: list[float] = []

    def add(self, acts: np.ndarray, rows: np.ndarray) -> None:
        norms = np.linalg.norm(acts, axis=-1).max(-1)  # [rows]; an outlier in either model drops the row
        med = self.manifest.get("median_norm") or float(np.median(norms))
        self.manifest["median_norm"] = med
        keep = norms <= self.cfg.outlier_factor * med
        self.acts.append(acts[keep].astype(self.cfg.store_dtype))
        self.rows.append(rows[keep])
        self.pending += int(keep.sum())

    def flush_full_shards(self, final: bool = False) -> None:
        """Write every full shard (and, at the end or at the token budget, the last partial one)."""
        while self.pending:
            room = self.cfg.tokens - self.manifest["rows"]
            n = min(self.cfg.shard_rows, self.pending, room)
            if n <= 0 or (n < self.cfg.shard_rows and n < room and not final):
                break
            acts, rows = np.concatenate(self.acts), np.concatenate(self.rows)
            self._write(acts[:n], rows[:n])
            self.acts, self.rows = [acts[n:]], [rows[n:]]
            self.pending = len(acts) - n

    def _write(self, acts: np.ndarray, rows: np.ndarray) -> None:
        i = len(self.manifest["shards"])
        name, tname = f"acts_{i:05d}.npy", f"tokens_{i:05d}.npy"
        for fname, arr in ((name, acts), (tname, rows)):
            tmp = self.out / f".{fname}.tmp"
            self.out.mkdir(parents=True, exist_ok=True)
            with tmp.open("wb") as f:
                np.save(f, arr)
            tmp.replace(self.out / fname)
        sums = self.manifest["sums"] or {"s": [0.0, 0.0], "s2": [0.0, 0.0], "n": 0}
        a64 = acts.astype(np.float64)
        sums["s"] = [sums["s"][m] + float(a64[:, m].sum()) for m in range(2)]
        sums["s2"] = [sums["s2"][m] + float((a64[:, m] ** 2).sum()) for m in range(2)]
        sums["n"] += acts.shape[0] * acts.shape[2]
        self.manifest["sums"] = sums
        self.manifest["shards"].append({"file": name, "tokens_file": tname, "rows": len(acts),
                                        "bytes": (self.out / name).stat().st_size,
                                        "sha256": hashlib.sha256((self.out / name).read_bytes()).hexdigest()})
        self.manifest["rows"] += len(acts)
        seq_path = self.out / "sequences.jsonl"
        with seq_path.open("a", encoding="utf-8") as f:
            for s in self.sequences:
                f.write(json.dumps(s) + "\n")
        self.sequences = []
        atomic_write_json(self.out / "manifest.json", self.manifest)

    def finish(self, tokens: int) -> None:
        if self.manifest["rows"] < tokens:
            self.flush_full_shards(final=True)
        if self.sequences:
            with (self.out / "sequences.jsonl").open("a", encoding="utf-8") as f:
                for s in self.sequences:
                    f.write(json.dumps(s) + "\n")
        s = self.manifest["sums"]
        if not s:
            raise DiffevalError("no activation rows were collected (empty corpus after filtering?)")
        mean = [s["s"][m] / s["n"] for m in range(2)]
        self.manifest["mean"] = mean
        self.manifest["std"] = [max(0.0, s["s2"][m] / s["n"] - mean[m] ** 2) ** 0.5 for m in range(2)]
        self.manifest["dtype"] = self.cfg.store_dtype
        self.manifest["complete"] = True
        atomic_write_json(self.out / "manifest.json", self.manifest)

