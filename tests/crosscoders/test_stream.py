"""RowStream: a shuffle buffer over passes of a block stream (crosscoders.stream)."""

import pytest
import torch

from diffeval.crosscoders import CrossCoderConfig, train_crosscoder
from diffeval.crosscoders.stream import RowStream


def _rows(n, n_models=2, d=4):
    """n rows whose first entry is the row's index (so a drawn row says where it came from)."""
    x = torch.randn(n, n_models, d)
    x[:, :, 0] = torch.arange(n, dtype=torch.float32)[:, None]
    return x


def _blocks(data, size):
    passes = []

    def one_pass():
        passes.append(1)
        yield from data.split(size)
    return one_pass, passes


def test_one_pass_is_drawn_without_repeats_in_shuffled_order():
    data = _rows(1000)
    blocks, passes = _blocks(data, 37)
    stream = RowStream(blocks, buffer_rows=256, seed=3)
    assert torch.equal(stream.head(5), data[:5])  # initialisation reads the stream's first rows
    drawn = torch.cat([stream.draw(100) for _ in range(7)])  # 256 + 700 rows read: still the first pass
    ids = drawn[:, 0, 0].long()
    assert len(passes) == 1 and len(ids.unique()) == 700 and ids.max() < 956
    assert torch.equal(drawn, data[ids])  # each row arrives whole (both models, every dimension)
    in_order = (ids[1:] == ids[:-1] + 1).float().mean()
    assert in_order < 0.05, "rows adjacent in the stream should rarely stay adjacent in a batch"


def test_a_new_pass_begins_when_one_ends_and_the_seed_fixes_the_order():
    data = _rows(300)
    draws = []
    for _ in range(2):
        blocks, passes = _blocks(data, 50)
        stream = RowStream(blocks, buffer_rows=128, seed=1)
        draws.append(torch.cat([stream.draw(64) for _ in range(10)]))  # 128 + 640 rows: passes 1..3
        assert len(passes) == 3 and stream.rows_read == 128 + 640
    assert torch.equal(draws[0], draws[1])
    counts = torch.bincount(draws[0][:, 0, 0].long(), minlength=300)
    assert counts.max() <= 3 and (counts > 0).sum() > 250  # about two passes' worth, spread over every row


def test_data_smaller_than_the_buffer_is_the_buffer_and_an_empty_stream_is_an_error():
    data = _rows(40)
    blocks, _ = _blocks(data, 16)
    stream = RowStream(blocks, buffer_rows=1000)
    assert len(stream.buffer) == 40
    with pytest.raises(ValueError, match="no rows"):
        RowStream(lambda: iter(()), buffer_rows=10)


def test_training_from_a_stream_checks_the_shape():
    blocks, _ = _blocks(_rows(200, d=8), 50)
    cfg = CrossCoderConfig(d_model=4, n_models=2, n_latents=16, k=2, n_steps=2, batch_size=32)
    with pytest.raises(ValueError, match="stream gives rows .*d_model=4"):
        train_crosscoder(cfg, RowStream(blocks, 64), progress=False)
