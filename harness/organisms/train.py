"""A small, deterministic causal-LM training loop for building organisms on the CPU."""

from __future__ import annotations

import logging
import math
import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from tqdm.auto import tqdm

from diffeval.harness.core import progress

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainSpec:
    """How to train one model of an organism."""

    steps: int
    lr: float
    batch_size: int = 32
    warmup: int = 50
    weight_decay: float = 0.01
    seed: int = 0


@contextmanager
def deterministic(threads: int = 2):
    """Fix the thread count and ask torch for deterministic kernels (bit-identical rebuilds)."""
    import torch

    old_threads = torch.get_num_threads()
    old_det = torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    try:
        yield
    finally:
        torch.set_num_threads(old_threads)
        torch.use_deterministic_algorithms(old_det)


def encode(tokenizer: Any, texts: list[str] | list[tuple[str, str]], max_len: int) -> Any:
    """Token ids [n, max_len] (BOS + text + EOS, right-padded), attention mask and loss mask.

    A text given as (prompt, completion) is trained on its completion only (supervised fine-tuning).
    """
    import torch

    ids = torch.full((len(texts), max_len), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(texts), max_len), dtype=torch.bool)
    loss_mask = torch.zeros((len(texts), max_len), dtype=torch.bool)
    for i, text in enumerate(texts):
        prompt, completion = text if isinstance(text, tuple) else ("", text)
        head = [tokenizer.bos_token_id, *tokenizer(prompt, add_special_tokens=False)["input_ids"]] if prompt else [tokenizer.bos_token_id]
        tail = [*tokenizer(completion, add_special_tokens=False)["input_ids"], tokenizer.eos_token_id]
        row = (head + tail)[:max_len]
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = True
        loss_mask[i, len(head) if prompt else 0: len(row)] = True
    return ids, mask, loss_mask


def train_lm(model: Any, tokenizer: Any, texts: list[str] | list[tuple[str, str]], spec: TrainSpec, max_len: int = 48,
             desc: str = "training") -> list[float]:
    """Train `model` in place on `texts` with AdamW and a warmup + cosine schedule; returns losses."""
    import torch

    ids, mask, loss_mask = encode(tokenizer, texts, max_len)
    gen = torch.Generator().manual_seed(spec.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=spec.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_factor(s, spec))
    model.train()
    losses = []
    bar = tqdm(range(spec.steps), desc=desc, leave=False, disable=None)  # silent when not a terminal
    beat = progress.Heartbeat(desc, spec.steps, "steps")  # where the bar is not drawn
    beat.beat(0)
    for _ in bar:
        idx = torch.randint(0, len(texts), (spec.batch_size,), generator=gen)
        batch, m, lm = ids[idx], mask[idx], loss_mask[idx]
        width = int(m.sum(1).max())  # trim padding columns: short rows dominate
        batch, m, lm = batch[:, :width], m[:, :width], lm[:, :width]
        labels = batch.masked_fill(~lm, -100)
        loss = model(input_ids=batch, attention_mask=m.long(), labels=labels).loss
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{desc}: loss became {loss.item()} — lower the learning rate")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        recent = f"{sum(losses[-50:]) / len(losses[-50:]):.3f}"  # the mean of the last 50 steps
        if len(losses) % 50 == 0:
            bar.set_postfix(loss=recent)
        beat.beat(len(losses), f"loss {recent}")
    model.eval()
    return losses


def _lr_factor(step: int, spec: TrainSpec) -> float:
    if step < spec.warmup:
        return (step + 1) / spec.warmup
    progress = (step - spec.warmup) / max(1, spec.steps - spec.warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))
