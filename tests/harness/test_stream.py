"""The activation stream: both models on the fly, the same rows as the cache, the same loss from them."""

import dataclasses
import json

import numpy as np
import torch

from diffeval.crosscoders import CrossCoderConfig, train_crosscoder
from diffeval.crosscoders.data import ActivationStore
from diffeval.harness import pipeline
from diffeval.harness.core import runconfig
from diffeval.harness.stages import crosscoder as crosscoder_stage
from diffeval.harness.stages.activations import ActivationsConfig, collect_activations
from diffeval.harness.stages.crosscoder import evaluate
from diffeval.harness.stages.stream import PairedBlocks, paired_stream
from tests.conftest import tiny_cfg


def _cfg(pair, tokens):
    return ActivationsConfig(base=str(pair[0]), tuned=str(pair[1]), layer=0.5, tokens=tokens, seq_len=32,
                             shard_rows=512, tasks=("diffeval_factual", "diffeval_safety"))


def test_one_pass_of_the_stream_is_the_cache(tiny_pair, tmp_path):
    cfg = _cfg(tiny_pair, 700)
    store = ActivationStore(collect_activations(cfg, tmp_path / "acts"))
    streamed = torch.cat(list(PairedBlocks(cfg).one_pass()))
    assert streamed.shape == (700, 2, 64)
    assert torch.equal(streamed, store[torch.arange(len(store))])


def test_the_crosscoder_reaches_the_caches_loss_from_the_stream(tiny_pair, tmp_path):
    cfg = _cfg(tiny_pair, 4000)
    acts = collect_activations(cfg, tmp_path / "acts")
    cc = CrossCoderConfig(d_model=64, n_models=2, n_latents=256, k=8, n_steps=300, batch_size=256, seed=0)
    from_cache = train_crosscoder(cc, acts, progress=False)
    from_stream = train_crosscoder(cc, paired_stream(cfg, buffer_rows=2048, seed=0), progress=False)
    fve = [evaluate(m, acts)["fve"] for m in (from_cache, from_stream)]
    assert min(fve[0]) > 0.5, fve  # the comparison means something only if training worked
    for a, b in zip(*fve, strict=True):
        assert abs(a - b) < 0.03, f"FVE from the cache {fve[0]} vs from the stream {fve[1]}"


def test_a_streamed_run_trains_on_the_fly_and_keeps_a_small_cache(tiny_pair, tmp_path, monkeypatch):
    monkeypatch.setattr(runconfig, "STREAM_CACHE_ROWS", 1500)
    streams = []

    def spy(cfg, **kw):
        streams.append(cfg)
        return paired_stream(cfg, **kw)
    monkeypatch.setattr(crosscoder_stage, "paired_stream", spy)
    run = pipeline.run(tiny_cfg(tiny_pair, stream=True, tokens=3000), tmp_path / "run")
    assert [s.tokens for s in streams] == [3000]
    manifest = json.loads((run / "activations" / "manifest.json").read_text())
    assert manifest["rows"] == 1500  # the analysis cache; training read 3000 rows from the stream
    metrics = [json.loads(line) for line in (run / "crosscoder" / "metrics.jsonl").read_text().splitlines()]
    assert metrics[-1]["step"] == 40 and min(metrics[-1]["fve"]) > 0
    config = json.loads((run / "config.json").read_text())
    assert config["stream"] is True


def test_a_bfloat16_cache_reads_back_the_float32_rows_rounded(tiny_pair, tmp_path):
    cfg = _cfg(tiny_pair, 300)
    full = ActivationStore(collect_activations(cfg, tmp_path / "f32"))
    half = ActivationStore(collect_activations(dataclasses.replace(cfg, store_dtype="bfloat16"), tmp_path / "bf16"))
    rows = torch.arange(300)
    assert half.manifest["dtype"] == "bfloat16" and half.shards[0].dtype == np.uint16
    assert torch.equal(half[rows], full[rows].to(torch.bfloat16).float())
    assert not torch.equal(half[rows], full[rows])  # the rounding happened
    sizes = [sum(s["bytes"] for s in store.manifest["shards"]) for store in (full, half)]
    assert sizes[1] < 0.51 * sizes[0]


def test_a_gpu_run_stores_bfloat16_and_a_cpu_run_float32(tiny_pair):
    assert tiny_cfg(tiny_pair).stages().activations.collect.store_dtype == "float32"
    for over in ({"device": "cuda"}, {"tuned_device": "cuda:1"}):
        assert tiny_cfg(tiny_pair, **over).stages().activations.collect.store_dtype == "bfloat16"
