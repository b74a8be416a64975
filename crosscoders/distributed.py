"""Data-parallel helpers: the rank layout and a BatchTopK selection that spans all ranks.

Under torchrun each rank holds a slice of the batch. BatchTopK keeps the k·B largest scores of the
*whole* batch, so the selection cannot be made per rank: a rank whose rows happen to score high
must keep more than k·B/world of them. Every global winner is among its own rank's top k·B, so
each rank sends just those k·B values (not its [B/world, n_latents] scores), all ranks pick the
same global top k·B from the gathered values, and each keeps its own share. The result is the
selection (and the EMA threshold input) that one process with the full batch would make.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from diffeval.crosscoders.sparse import batch_topk


def rank_world() -> tuple[int, int]:
    """(rank, world size) of the initialised process group; (0, 1) without one."""

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def global_batch_topk(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(rows, cols) of this rank's share of the k·B largest positive scores over all ranks' rows
    (B = all ranks' rows together), sorted by row, and the smallest selected score (None if none)."""
    rank, world = rank_world()
    if world == 1:
        rows, cols = batch_topk(scores, k * scores.shape[0])
        return rows, cols, scores[rows, cols].min() if len(rows) else None

    n_rows = torch.tensor([scores.shape[0]], device=scores.device)
    dist.all_reduce(n_rows)
    k_total = k * int(n_rows)
    rows, cols = batch_topk(scores, k_total)  # this rank's candidates: every global winner is among them
    sent = torch.full((k_total,), -1.0, dtype=scores.dtype, device=scores.device)  # -1: no candidate
    sent[:len(rows)] = scores[rows, cols]
    gathered = [torch.empty_like(sent) for _ in range(world)]
    dist.all_gather(gathered, sent)
    every = torch.cat(gathered)  # [world * k_total]: identical on every rank, so is the choice below
    winners = every.topk(min(k_total, int((every > 0).sum()))).indices
    mine = (winners[winners // k_total == rank] % k_total).sort().values  # positions in (rows, cols)
    smallest = every[winners].min() if len(winners) else None
    return rows[mine], cols[mine], smallest
