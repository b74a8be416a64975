"""Training rows drawn from a stream of activation blocks through a shuffle buffer (no disk cache).

A stream is a callable that starts one pass over the data and yields blocks of rows, each a float
tensor [rows, n_models, d_model] (consecutive forward passes of both models, say). The buffer holds
`buffer_rows` rows; every draw takes `n` of its slots uniformly at random and refills them with the
next rows of the stream, so rows that sat next to each other in a sequence end up in different
batches. When a pass ends the next one begins (a second epoch), as a cache's batch order would.

What this costs and saves: memory is the buffer (buffer_rows × n_models × d_model floats), whatever
the token budget; every pass recomputes the models' forward passes. A resumed run draws its remaining
steps from a fresh pass (the buffer's contents are not checkpointed), so it sees the same rows as an
uninterrupted run but in another order.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch

from diffeval.crosscoders.config import STREAM_BUFFER_ROWS


class RowStream:
    """`draw(n)` rows at a time from `blocks()` passes, shuffled through a buffer of `buffer_rows` rows."""

    def __init__(self, blocks: Callable[[], Iterator[torch.Tensor]], buffer_rows: int = STREAM_BUFFER_ROWS,
                 seed: int = 0) -> None:
        if buffer_rows < 1:
            raise ValueError(f"buffer_rows must be >= 1, got {buffer_rows}")
        self.blocks, self.buffer_rows = blocks, buffer_rows
        self.generator = torch.Generator().manual_seed(seed)
        self.passes = 0          # passes started
        self.rows_read = 0       # rows taken from the stream so far
        self._pass: Iterator[torch.Tensor] | None = None
        self._pass_rows = 0     # rows the current pass has yielded
        self._pending: list[torch.Tensor] = []  # rows read from the stream, not yet in the buffer
        self.buffer = self._take(buffer_rows, fill=True)  # [rows, n_models, d_model]

    def head(self, n: int) -> torch.Tensor:
        """The buffer's first `n` rows (the stream's first rows), without drawing them: for initialisation."""
        return self.buffer[:n].clone()

    def draw(self, n: int) -> torch.Tensor:
        """`n` rows taken at random from the buffer ([n, n_models, d_model]); their slots are refilled."""
        slots = torch.randperm(len(self.buffer), generator=self.generator)[:n]
        out = self.buffer[slots].clone()
        self.buffer[slots] = self._take(len(slots))
        return out

    def _take(self, n: int, fill: bool = False) -> torch.Tensor:
        """The stream's next `n` rows, starting another pass when one ends. With `fill`, a first pass shorter
        than `n` rows gives just that pass (the buffer is then the whole data)."""
        have = sum(len(b) for b in self._pending)
        while have < n:
            block = next(self._pass, None) if self._pass is not None else None
            if block is None:
                if self._pass is not None and not self._pass_rows:
                    raise ValueError("the activation stream yields no rows")
                if fill and self.passes == 1:
                    break
                self._pass, self._pass_rows = iter(self.blocks()), 0
                self.passes += 1
                continue
            self._pending.append(block.float())
            have += len(block)
            self._pass_rows += len(block)
        rows = torch.cat(self._pending)
        taken, rest = rows[:n], rows[n:]
        self._pending = [rest] if len(rest) else []
        self.rows_read += len(taken)
        return taken
