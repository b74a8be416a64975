"""Paired activation collection: both models, identical token ids, forward stopped at one layer.

The forward pass stops at the collection layer (a hook raises once that block has run), so no
later block and no output head is computed. Rows for BOS and padding positions are dropped, and
so are extreme-norm outliers (attention-sink positions whose norm dwarfs the rest, judged against
the median norm of the first batch). Rows are written in memory-mapped shards (crosscoders.data
has the layout, crosscoders.cache the writer); memory stays flat as the token budget grows.

- Models of different hidden size are allowed: shards then hold the models side by side
  ([rows, Σ d_model]) and the manifest lists `d_models`.
- An interrupted collection resumes exactly: the result is byte-identical to an uninterrupted run.
- Under torchrun (RANK / WORLD_SIZE set) rank r collects every world-th batch of sequences, with
  an equal share of the token budget, into `rank_<r>/`; rank 0 then writes the one manifest.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from diffeval.crosscoders.cache import RANK_DIR, ShardWriter, merge_rank_dirs
from diffeval.crosscoders.data import FORMAT_VERSION, ActivationDirError, verify_cache
from diffeval.harness.core import files, models, progress
from diffeval.harness.core.config import ActivationsConfig
from diffeval.harness.core.errors import DiffevalError, RunDirError
from diffeval.harness.core.rundir import RunDir, file_stamp, fresh_stage_dir
from diffeval.harness.core.stageconfig import ActivationsStageConfig, stage_key
from diffeval.harness.stages.corpus import bucket_window, corpus_sequences, length_buckets, prompts_read_once
from diffeval.harness.stages.inputs import bench_tasks
from diffeval.harness.stages.transcripts import stage_transcripts
from diffeval.harness.suite import CORPUS_DIR

log = logging.getLogger(__name__)



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


# -- corpus --------------------------------------------------------------------------------------------
# -- collection ------------------------------------------------------------------------------------------
def launch_rank() -> tuple[int, int]:
    """(rank, world size) from torchrun's RANK / WORLD_SIZE; (0, 1) in a plain process."""
    try:
        rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    except ValueError:
        raise DiffevalError(f"RANK={os.environ.get('RANK')!r} / WORLD_SIZE={os.environ.get('WORLD_SIZE')!r} "
                            "must be integers (as torchrun sets them)") from None
    if not 0 <= rank < world:
        raise DiffevalError(f"RANK {rank} is out of range for WORLD_SIZE {world}")
    return rank, world


SEQUENCES_VERSION = 4  # 2: sequences.jsonl holds each token's decoded text ("pieces") beside its raw token;
# 3: a probe's prompt tokens enter the corpus once (corpus.transcript_sequences);
# 4: sequences ordered by length within windows of batches (corpus.length_buckets)


def collect_activations(cfg: ActivationsConfig, out: str | Path, name: str = "activations") -> Path:
    """Collect paired activations into `out` (resuming a previous partial run of the same config); `name` is
    what its progress says."""

    out = Path(out)
    rank, world = launch_rank()
    specs, tok, seqs = collection_inputs(cfg)
    key = stage_key(cfg, [models.describe(s) for s in specs], world)
    if _resume_manifest(out, key)["complete"]:
        return out
    work = out / RANK_DIR.format(rank) if world > 1 else out
    manifest = _resume_manifest(work, key)
    if not manifest["complete"]:
        _collect_rank(cfg, work, manifest, specs, tok, seqs, rank, world, name)
    if world > 1:
        _after_all_ranks(lambda: merge_rank_dirs(out, world) if rank == 0 else None)
    return out


def collection_inputs(cfg: ActivationsConfig) -> tuple[list[Any], Any, list[dict[str, Any]]]:
    """Both models' specs, the tokenizer they share (checked; padding on the right, so that row positions are
    token indices, which the transcripts rely on) and the sequences to collect on, in batches of about one
    length (`corpus.length_buckets`)."""
    specs = [models.resolve_spec(cfg.base), models.resolve_spec(cfg.tuned)]
    toks = [models.load_tokenizer(s) for s in specs]
    models.check_same_tokenizer(toks[0], toks[1], cfg.base, cfg.tuned)
    tok = toks[1]
    tok.padding_side = "right"
    seqs = corpus_sequences(cfg, tok)
    rows = row_counts(tok, [s["text"] for s in seqs], cfg.seq_len)
    for seq, n in zip(seqs, rows, strict=True):
        seq["n_rows"] = n  # sequences.jsonl keeps it
    window = bucket_window(rows, cfg.batch_size, cfg.tokens)
    return specs, tok, prompts_read_once(length_buckets(seqs, rows, cfg.batch_size, window))


def row_counts(tok: Any, texts: list[str], max_length: int, chunk: int = 4096) -> list[int]:
    """Per text, the rows a forward batch can give: its tokens as the batch reads them (special tokens,
    truncation) that are not BOS. Read in chunks, so that a large corpus's token ids are never all held."""
    out: list[int] = []
    for start in range(0, len(texts), chunk):
        ids = tok(texts[start:start + chunk], truncation=True, max_length=max_length)["input_ids"]
        out += [sum(t != tok.bos_token_id for t in row) for row in ids]
    return out


@dataclass
class _Batch:
    acts: np.ndarray      # [rows, n_models, d_model], or [rows, Σ d_model] when the sizes differ
    rows: np.ndarray      # [rows, 3] int64: sequence id, position, token id
    norms: np.ndarray     # [rows] largest per-model norm (for the outlier filter)
    sequences: list[dict[str, Any]]

    def inliers(self, cfg: ActivationsConfig, median_norm: float) -> np.ndarray:
        """The rows kept: norm at most cfg.outlier_factor × the median norm of the first batch."""
        return self.norms <= cfg.outlier_factor * median_norm


def _collect_rank(cfg: ActivationsConfig, work: Path, manifest: dict[str, Any], specs: list[Any], tok: Any,
                  seqs: list[dict[str, Any]], rank: int, world: int, name: str = "activations") -> None:
    """This rank's share: batches rank, rank + world, … of `seqs`, until its share of the budget."""

    device = cfg.device
    if world > 1 and device == "cuda":
        device = f"cuda:{os.environ.get('LOCAL_RANK', rank)}"
    if world > 1 and cfg.model_devices:
        raise DiffevalError("--base-device/--tuned-device place one pair's models on two devices; under torchrun "
                            "each rank takes its own device: use one or the other")
    pair = load_pair(cfg, specs, cfg.model_devices or (device, device))
    manifest.update({"models": [models.describe(s) for s in specs], "layer": pair.layers,
                     "d_model": max(pair.d_models), "d_models": pair.d_models,
                     "n_layers": [len(b) for b in pair.blocks], "rank": rank, "world": world})

    def forward(first: int) -> _Batch:
        return pair.forward(cfg, tok, seqs[first:first + cfg.batch_size], first)

    cached = {}
    if manifest.get("median_norm") is None:  # every rank judges outliers against batch 0
        cached[0] = forward(0)
        manifest["median_norm"] = float(np.median(cached[0].norms))
    budget = cfg.tokens // world + (rank < cfg.tokens % world)
    writer = ShardWriter(work, manifest, budget, cfg.shard_rows, cfg.store_dtype)
    start, skip = writer.resume_point(rank * cfg.batch_size)
    # what this rank will write: its budget, or every row of the corpus where that comes first (the probes)
    expected = min(budget, sum(max(0, q["n_rows"] - q.get("skip", 0)) for q in seqs) // world)
    bar = tqdm(total=expected, initial=manifest["rows"], desc=name, unit="tok", disable=None)
    beat = progress.Heartbeat(name, expected, "rows", enabled=rank == 0)  # rank 0's share stands for all
    for first in range(start, len(seqs), world * cfg.batch_size):
        batch = cached.pop(first, None) or forward(first)
        keep = batch.inliers(cfg, manifest["median_norm"])
        before = writer.total
        writer.add(batch.acts[keep], batch.rows[keep], first, batch.sequences, skip)
        skip = 0
        bar.update(writer.total - before)
        beat.beat(writer.total)
        if writer.total >= budget:
            break
    writer.finish()
    bar.close()


@dataclass
class LoadedPair:
    """Both models loaded for collection, each on its device, with the block their rows are read after."""

    lms: list[Any]
    blocks: list[Any]
    layers: list[int]
    devices: tuple[str, ...]

    @property
    def d_models(self) -> list[int]:
        return [m.config.hidden_size for m in self.lms]

    def forward(self, cfg: ActivationsConfig, tok: Any, batch: list[dict[str, Any]], first: int,
                with_sequences: bool = True) -> _Batch:
        return _forward_batch(cfg, self, tok, batch, first, with_sequences)


def load_pair(cfg: ActivationsConfig, specs: list[Any], devices: tuple[str, ...]) -> LoadedPair:
    """Load both models (cfg.dtype) on `devices` and resolve the collection layer in each."""
    lms = [models.load_model(s, cfg.dtype, d) for s, d in zip(specs, devices, strict=True)]
    blocks = [decoder_blocks(m) for m in lms]
    layers = [resolve_layer(cfg.layer, len(b), s.spec) for b, s in zip(blocks, specs, strict=True)]
    return LoadedPair(lms, blocks, layers, tuple(devices))


def _forward_batch(cfg: ActivationsConfig, pair: LoadedPair, tok: Any, batch: list[dict[str, Any]],
                   first: int, with_sequences: bool = True) -> _Batch:
    """Both models on one batch of sequences; rows for every non-BOS, non-pad position from each sequence's
    `skip` on (and, `with_sequences`, each sequence's record for sequences.jsonl)."""
    import torch

    devices = pair.devices
    enc = tok([s["text"] for s in batch], return_tensors="pt", padding=True, truncation=True,
              max_length=cfg.seq_len).to(devices[0])
    with torch.no_grad():  # each model on its own device; the rows are gathered on the base model's
        hs = [truncated_hidden(m, b, layer, enc["input_ids"].to(d), enc["attention_mask"].to(d)).float().to(devices[0])
              for m, b, layer, d in zip(pair.lms, pair.blocks, pair.layers, devices, strict=True)]  # [batch, seq, d_m]
    keep = enc["attention_mask"].bool() & (enc["input_ids"] != tok.bos_token_id)
    skip = torch.tensor([s.get("skip", 0) for s in batch], device=keep.device)
    keep &= torch.arange(keep.shape[1], device=keep.device)[None, :] >= skip[:, None]  # positions already collected
    b_idx, pos = keep.nonzero(as_tuple=True)
    per_model = [h[b_idx, pos] for h in hs]  # each [rows, d_m]
    same = len({h.shape[-1] for h in per_model}) == 1
    acts = torch.stack(per_model, 1) if same else torch.cat(per_model, 1)
    norms = torch.stack([h.norm(dim=-1) for h in per_model], 1).amax(1)  # an outlier in either model drops the row
    rows = torch.stack([b_idx + first, pos, enc["input_ids"][b_idx, pos]], 1)
    sequences = [{"id": first + j, **s, "tokens": tok.convert_ids_to_tokens(ids := enc["input_ids"][j][
        enc["attention_mask"][j].bool()].tolist()), "pieces": token_pieces(tok, s["text"], ids)}
        for j, s in enumerate(batch)] if with_sequences else []
    return _Batch(acts.cpu().numpy(), rows.cpu().numpy(), norms.cpu().numpy(), sequences)


def token_pieces(tok: Any, text: str, ids: list[int]) -> list[str]:
    """Each token as the text it stands for (what a person reads: " the", not "Ġthe" or "▁the").

    With a fast tokenizer, a token's piece is the text from the previous token's end to its own end (its
    leading space included, so the pieces join back to the text); otherwise each token decoded alone.
    Special tokens (BOS) are empty pieces.
    """
    if getattr(tok, "is_fast", False):
        spans = tok(text, add_special_tokens=True, return_offsets_mapping=True)
        if spans["input_ids"][: len(ids)] == ids:
            pieces, end = [], 0
            for start, stop in spans["offset_mapping"][: len(ids)]:
                pieces.append("" if stop <= start else text[end:stop])
                end = max(end, stop)
            return pieces
    return [tok.decode([i], skip_special_tokens=True) for i in ids]


def _after_all_ranks(fn: Any) -> None:
    """Wait for every rank, run `fn`, wait again (a gloo group is opened if torchrun's isn't)."""

    import torch.distributed as dist

    own = not dist.is_initialized()
    if own:  # ranks finish at different times: allow a long wait
        dist.init_process_group("gloo", timeout=timedelta(hours=12))
    try:
        dist.barrier()
        fn()
        dist.barrier()
    finally:
        if own:
            dist.destroy_process_group()


def _resume_manifest(out: Path, key: str) -> dict[str, Any]:
    path = out / files.MANIFEST
    if path.exists():
        try:
            old = json.loads(path.read_text())
        except json.JSONDecodeError:
            old = {}
        if old.get("config_key") == key:
            if not old.get("complete"):
                log.info("resuming activation collection at %d rows", old["rows"])
            return old
        if old:
            raise DiffevalError(f"{out} holds activations of a different configuration; choose another --out")
    return {"format_version": FORMAT_VERSION, "config_key": key, "complete": False, "rows": 0, "shards": [],
            "n_models": 2, "sums": None}


def stage_activations(run: RunDir, cfg: ActivationsStageConfig) -> Path:
    """Paired activations on the corpus (with `cfg.transcripts`, plus the probe transcripts) and the
    benchmark tasks' prompts."""
    acts, key = resolve_collection(run, cfg)
    return collect_into(run, "activations", files.ACTS_DIR, key, acts)


def resolve_collection(run: RunDir, cfg: ActivationsStageConfig) -> tuple[ActivationsConfig, str]:
    """The collection's config with its tasks resolved and the probe transcripts added (running the transcripts
    stage if it has not run), and its cache key (the settings, the models, and every corpus file's stamp)."""
    acts = cfg.collect
    tasks = tuple(bench_tasks(acts.tasks, acts.tasks_dir))
    specs = [models.describe(models.resolve_spec(s)) for s in (acts.base, acts.tuned)]
    extra = tuple(stage_transcripts(run, cfg.transcripts)) if cfg.transcripts else ()
    corpus = (acts.corpus or tuple(str(p) for p in sorted(CORPUS_DIR.glob("*.jsonl")))) + extra  # default: the shipped corpus
    upstream = run.key("transcripts") if extra else None
    key = stage_key(cfg, tasks, specs, [file_stamp(p, run.path) for p in corpus], upstream, SEQUENCES_VERSION)
    return dataclasses.replace(acts, tasks=tasks, extra=extra, source_root=str(run.path)), key


def collect_into(run: RunDir, name: str, out: str, key: str, acts: ActivationsConfig) -> Path:
    """Collect `acts` into `run/out` as stage `name` with key `key`; a cache reused from before is first
    checked against its recorded hashes."""
    if run.is_done(name, key):
        try:
            verify_cache(run.path / out)
        except ActivationDirError as e:
            raise RunDirError(f"the {name} stage's cache is damaged: {e}") from None
    else:
        fresh_stage_dir(run.path / out, key)
        with run.stage(name, key) as rec:
            rec["outputs"] = [collect_activations(acts, run.path / out, name) / files.MANIFEST]
    return run.path / out
