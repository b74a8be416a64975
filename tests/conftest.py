"""Shared fixtures: seeded RNGs, a tiny local model pair, an isolated organism cache. No network."""

from __future__ import annotations

import os
import random
import shutil

import numpy as np
import pytest
import torch

from diffeval.harness import pipeline
from diffeval.harness.core.runconfig import RunConfig
from diffeval.harness.organisms.tiny import (
    build_random_pair,
    save_pair,
    shipped_texts,
    tiny_llama,
    train_tokenizer,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(autouse=True)
def _seed_everything():
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def tiny_pair(tmp_path_factory):
    """Two random 2-layer Llamas sharing a tokenizer trained on the spot: (base_dir, tuned_dir)."""

    return build_random_pair(tmp_path_factory.mktemp("pair"))


@pytest.fixture(scope="session")
def other_tokenizer_model(tmp_path_factory):
    """A tiny model whose tokenizer has a different vocabulary."""

    tok = train_tokenizer(shipped_texts()[:200], vocab_size=300)
    return save_pair(tiny_llama(len(tok)), tok, tmp_path_factory.mktemp("other") / "model")


@pytest.fixture(scope="session")
def organism_cache(tmp_path_factory):
    """A private organism cache for the whole session (the default organism is built once)."""
    path = tmp_path_factory.mktemp("cache")
    old = os.environ.get("DIFFEVAL_CACHE")
    os.environ["DIFFEVAL_CACHE"] = str(path)
    yield path
    if old is None:
        os.environ.pop("DIFFEVAL_CACHE", None)
    else:
        os.environ["DIFFEVAL_CACHE"] = old


def tiny_cfg(pair, **over):
    """A RunConfig small enough for a test: three tasks, 3000 activation rows, 64 latents, 40 steps."""
    base, tuned = pair
    opts = {"base": str(base), "tuned": str(tuned), "tasks": ("diffeval_factual", "diffeval_multilingual",
            "diffeval_hallucination"), "limit": 6, "tokens": 3000, "seq_len": 32, "n_latents": 64, "k": 4,
            "n_steps": 40, "bootstrap_iters": 200, "probe_responses": 8}
    return RunConfig(**{**opts, **over})


@pytest.fixture(scope="session")
def tiny_run(tiny_pair, tmp_path_factory):
    """One finished pipeline run of `tiny_cfg` on the tiny pair, shared by the session (read it, or copy it
    with `copy_run` before changing anything)."""
    return pipeline.run(tiny_cfg(tiny_pair), tmp_path_factory.mktemp("tiny_run") / "run")


def copy_run(run, dst):
    """A private copy of a run directory (stage keys are run-relative, so every stage stays reusable)."""
    shutil.copytree(run, dst)
    return dst
