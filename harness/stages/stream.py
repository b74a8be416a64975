"""The activation stream: both models resident, paired rows computed on the fly for a streamed crosscoder.

A pass reads the same sequences, in the same order and with the same filters (BOS and padding dropped,
norm outliers against the first batch's median), as the activation cache `collect_activations` writes
for that config, and stops at the same token budget: one pass yields exactly the cache's rows. Nothing
is written to disk; memory is the shuffle buffer (crosscoders.stream) and the two models.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from diffeval.crosscoders.config import STREAM_BUFFER_ROWS
from diffeval.crosscoders.data import padded_rows
from diffeval.crosscoders.stream import RowStream
from diffeval.harness.core.config import ActivationsConfig
from diffeval.harness.stages.activations import collection_inputs, load_pair


def paired_stream(cfg: ActivationsConfig, buffer_rows: int = STREAM_BUFFER_ROWS, seed: int = 0) -> RowStream:
    """A RowStream over `cfg`'s corpus, both models loaded once; each pass yields `cfg.tokens` rows
    [rows, n_models, d_model] (models of different hidden sizes zero-padded, as a cache reads)."""
    blocks = PairedBlocks(cfg)
    return RowStream(blocks.one_pass, min(buffer_rows, cfg.tokens), seed)


class PairedBlocks:
    """Passes over a corpus through both models: one block of rows per forward batch."""

    def __init__(self, cfg: ActivationsConfig) -> None:
        specs, self.tok, self.seqs = collection_inputs(cfg)
        self.cfg = cfg
        self.pair = load_pair(cfg, specs, cfg.model_devices or (cfg.device, cfg.device))
        self.dims = tuple(self.pair.d_models)
        self.median_norm = float(np.median(self._forward(0).norms))  # the cache judges outliers the same way

    def _forward(self, first: int) -> Any:
        return self.pair.forward(self.cfg, self.tok, self.seqs[first:first + self.cfg.batch_size], first,
                                 with_sequences=False)

    def one_pass(self) -> Iterator[Any]:
        import torch

        cfg, rows = self.cfg, 0
        bar = tqdm(total=cfg.tokens, desc="activation stream", unit="tok", disable=None, leave=False)
        for first in range(0, len(self.seqs), cfg.batch_size):
            batch = self._forward(first)
            keep = batch.inliers(cfg, self.median_norm)
            acts = padded_rows(batch.acts[keep], self.dims, max(self.dims))[:cfg.tokens - rows]
            rows += len(acts)
            bar.update(len(acts))
            yield torch.from_numpy(np.ascontiguousarray(acts))
            if rows >= cfg.tokens:
                break
        bar.close()
