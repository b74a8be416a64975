import json
import os
import random
import shutil
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from transformers import AutoTokenizer

from diffeval.crosscoders import CrossCoderConfig, load_crosscoder, train_crosscoder
from diffeval.crosscoders.cache import ShardWriter
from diffeval.crosscoders.data import ActivationDirError, ActivationStore, config_d_models
from diffeval.harness.cli import cli
from diffeval.harness.core.errors import DiffevalError
from diffeval.harness.core.models import load_model, resolve_spec
from diffeval.harness.organisms.tiny import save_pair, tiny_llama
from diffeval.harness.stages import activations as acts_mod
from diffeval.harness.stages import corpus
from diffeval.harness.stages.activations import (
    ActivationsConfig,
    collect_activations,
    collection_inputs,
    decoder_blocks,
    resolve_layer,
    row_counts,
    truncated_hidden,
)
from diffeval.harness.stages.corpus import corpus_sequences, shipped_corpus
from diffeval.harness.suite import CORPUS_DIR


def test_truncated_forward_equals_full_forward_and_skips_later_blocks(tiny_pair):
    model = load_model(resolve_spec(str(tiny_pair[0])))
    blocks = decoder_blocks(model)
    calls = []
    handle = blocks[1].register_forward_hook(lambda *a: calls.append("block1"))
    head = model.lm_head.register_forward_hook(lambda *a: calls.append("head"))
    ids = torch.tensor([[1, 7, 9, 11, 13]])
    mask = torch.ones_like(ids)
    h = truncated_hidden(model, blocks, 0, ids, mask)
    assert calls == []  # neither the later block nor the output head ran
    handle.remove()
    head.remove()
    with torch.no_grad():
        full = model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
    assert torch.allclose(h, full[1], atol=1e-5)


def test_layer_resolution():
    assert resolve_layer(0.5, 4, "m") == 2 and resolve_layer(3, 4, "m") == 3
    with pytest.raises(DiffevalError, match="out of range .*0..3"):
        resolve_layer(4, 4, "m")


@pytest.fixture(scope="module")
def acts_dir(tiny_pair, tmp_path_factory):
    out = tmp_path_factory.mktemp("acts")
    cfg = ActivationsConfig(base=str(tiny_pair[0]), tuned=str(tiny_pair[1]), layer=0.5, tokens=300, seq_len=32,
                            shard_rows=128, tasks=("diffeval_factual", "diffeval_safety"))
    return collect_activations(cfg, out)


def test_collection_writes_complete_sharded_cache(acts_dir):
    store = ActivationStore(acts_dir, check_hashes=True)
    m = store.manifest
    assert m["complete"] and m["rows"] == 300 and len(store) == 300
    assert [s["rows"] for s in m["shards"]] == [128, 128, 44]
    assert m["layer"] == [1, 1] and m["d_model"] == 64 and len(m["mean"]) == 2
    x = store[torch.tensor([0, 150, 299])]
    assert x.shape == (3, 2, 64) and torch.isfinite(x).all()
    tokens = np.concatenate([np.load(acts_dir / s["tokens_file"]) for s in m["shards"]])
    assert (tokens[:, 2] != 1).all()  # no BOS rows
    assert (acts_dir / "sequences.jsonl").read_text().count('"kind": "task"') > 0


def test_truncated_shard_is_detected(acts_dir, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(acts_dir, copy)
    shard = copy / "acts_00001.npy"
    shard.write_bytes(shard.read_bytes()[:-100])
    with pytest.raises(ActivationDirError, match="truncated"):
        ActivationStore(copy)


def test_incomplete_collection_is_not_read(acts_dir, tmp_path):
    copy = tmp_path / "partial"
    shutil.copytree(acts_dir, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["complete"] = False
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ActivationDirError, match="did not finish"):
        ActivationStore(copy)


def test_cli_collect_train_stats_end_to_end(acts_dir, tmp_path):
    runner = CliRunner()
    cc = tmp_path / "cc"
    r = runner.invoke(cli, ["crosscoder", "train", str(acts_dir), "--out", str(cc), "--n-latents", "64", "--k", "4",
                            "--n-steps", "30", "--batch-size", "64"])
    assert r.exit_code == 0, r.output
    assert (cc / "crosscoder.safetensors").exists() and (cc / "metrics.jsonl").exists()
    r = runner.invoke(cli, ["crosscoder", "stats", str(cc), str(acts_dir)])
    assert r.exit_code == 0, r.output
    rows = [json.loads(line) for line in (cc / "latents.jsonl").read_text().splitlines()]
    assert len(rows) == 64
    assert {"delta_norm", "cosine", "nu_eps", "nu_r", "freq", "mean_act", "class", "top_contexts"} <= set(rows[0])
    live = [r for r in rows if r["class"] != "dead"]
    assert live and live[0]["top_contexts"] and "context" in live[0]["top_contexts"][0]
    bad = runner.invoke(cli, ["crosscoder", "train", str(tmp_path), "--out", str(tmp_path / "x")])
    assert bad.exit_code == 2 and "not an activation directory" in bad.output
    k_bad = runner.invoke(cli, ["crosscoder", "train", str(acts_dir), "--out", str(tmp_path / "y"), "--n-latents", "8",
                                "--k", "8"])
    assert k_bad.exit_code == 2 and "k must be in 1..n_latents-1" in k_bad.output


def test_activation_dirs_from_different_models_are_rejected(acts_dir, tiny_pair, tmp_path):
    copy = tmp_path / "other"
    shutil.copytree(acts_dir, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["config_key"] = "something-else"
    manifest["complete"] = False
    (copy / "manifest.json").write_text(json.dumps(manifest))
    cfg = ActivationsConfig(base=str(tiny_pair[0]), tuned=str(tiny_pair[1]), tokens=100, seq_len=32,
                            tasks=("diffeval_factual",))
    with pytest.raises(DiffevalError, match="different configuration"):
        collect_activations(cfg, copy)


def _files(directory):
    """Every file of an activation directory with its bytes (manifests parsed: key order aside)."""

    return {p.relative_to(directory).as_posix(): json.loads(p.read_text()) if p.name == "manifest.json" else p.read_bytes()
            for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("crash_at", [2, 4])
def test_interrupted_collection_resumes_exactly(tiny_pair, tmp_path, monkeypatch, crash_at):
    # small batches and shards: shards end mid-batch, so rows are still buffered when the crash comes
    cfg = ActivationsConfig(base=str(tiny_pair[0]), tuned=str(tiny_pair[1]), tokens=700, seq_len=32, batch_size=4,
                            shard_rows=128, tasks=("diffeval_factual",))
    whole = collect_activations(cfg, tmp_path / "whole")
    real_write = ShardWriter._write
    calls = []

    def crash(self, acts, rows):
        calls.append(len(acts))
        if len(calls) == crash_at:
            raise KeyboardInterrupt
        real_write(self, acts, rows)

    monkeypatch.setattr(ShardWriter, "_write", crash)
    with pytest.raises(KeyboardInterrupt):
        collect_activations(cfg, tmp_path / "resumed")
    with pytest.raises(ActivationDirError, match="did not finish"):
        ActivationStore(tmp_path / "resumed")
    monkeypatch.undo()
    collect_activations(cfg, tmp_path / "resumed")
    assert [s["rows"] for s in ActivationStore(whole).manifest["shards"]] == [128] * 5 + [60]
    assert _files(tmp_path / "resumed") == _files(whole)  # byte-identical shards, tokens and sequences


@pytest.fixture(scope="module")
def narrow_model(tiny_pair, tmp_path_factory):
    """A tiny Llama of hidden size 48 sharing the tiny pair's tokenizer (whose models have 64)."""

    tok = AutoTokenizer.from_pretrained(tiny_pair[0])
    return save_pair(tiny_llama(len(tok), seed=2, hidden=48), tok, tmp_path_factory.mktemp("narrow") / "model")


def test_models_of_different_hidden_size_are_collected_padded(narrow_model, tiny_pair, tmp_path):
    cfg = ActivationsConfig(base=str(narrow_model), tuned=str(tiny_pair[1]), layer=1, tokens=200, seq_len=32,
                            shard_rows=128, tasks=("diffeval_factual",))
    out = collect_activations(cfg, tmp_path / "acts")
    store = ActivationStore(out, check_hashes=True)
    m = store.manifest
    assert m["d_models"] == [48, 64] and m["d_model"] == 64 and len(store) == 200
    assert np.load(out / "acts_00000.npy", mmap_mode="r").shape == (128, 48 + 64)  # stored unpadded
    x = store[torch.arange(200)]
    assert x.shape == (200, 2, 64) and not x[:, 0, 48:].any() and x[:, 0, :48].abs().sum(-1).min() > 0
    # row 0 equals each model's own hidden state at its (sequence, position)


    seq, pos, _ = np.load(out / "tokens_00000.npy")[0]
    text = [json.loads(line) for line in (out / "sequences.jsonl").read_text().splitlines()][seq]["text"]
    ids = AutoTokenizer.from_pretrained(narrow_model)(text, return_tensors="pt")["input_ids"]
    for i, spec in enumerate((narrow_model, tiny_pair[1])):
        model = load_model(resolve_spec(str(spec)))
        h = truncated_hidden(model, decoder_blocks(model), 1, ids, torch.ones_like(ids))[0, pos]
        assert torch.allclose(x[0, i, :len(h)], h, atol=1e-4)
    with pytest.raises(ValueError, match=r"hidden sizes \(48, 64\) but the config says d_models=None"):
        train_crosscoder(CrossCoderConfig(d_model=64, n_models=2, n_latents=32, k=4), out, progress=False)
    assert config_d_models(m) == (48, 64)


    r = CliRunner().invoke(cli, ["crosscoder", "train", str(out), "--out", str(tmp_path / "cc"), "--n-latents", "32",
                                 "--k", "4", "--n-steps", "5", "--batch-size", "64"])
    assert r.exit_code == 0, r.output
    model = load_crosscoder(tmp_path / "cc")
    assert model.cfg.d_models == (48, 64) and not model.W_dec[:, 0, 48:].any()
    r = CliRunner().invoke(cli, ["crosscoder", "stats", str(tmp_path / "cc"), str(out)])
    assert r.exit_code == 0, r.output
    rows = [json.loads(line) for line in (tmp_path / "cc" / "latents.jsonl").read_text().splitlines()]
    assert len(rows) == 32 and all(r["cosine"] != r["cosine"] for r in rows)  # NaN: no shared space



RANK_WORKER = """
import sys
from diffeval.harness.stages.activations import ActivationsConfig, collect_activations
base, tuned, out = sys.argv[1:4]
cfg = ActivationsConfig(base=base, tuned=tuned, tokens=10**6, seq_len=32, batch_size=4, shard_rows=256,
                        tasks=("diffeval_factual",))
collect_activations(cfg, out)
"""


@pytest.mark.slow
def test_collection_sharded_by_rank_matches_one_process(tiny_pair, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    worker = tmp_path / "worker.py"
    worker.write_text(RANK_WORKER)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", f"--master-port={port}", str(worker),
           str(tiny_pair[0]), str(tiny_pair[1]), str(tmp_path / "ranks")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    # the budget exceeds the corpus, so both collections hold every row of every sequence
    single = collect_activations(ActivationsConfig(base=str(tiny_pair[0]), tuned=str(tiny_pair[1]), tokens=10**6,
                                                   seq_len=32, batch_size=4, shard_rows=256,
                                                   tasks=("diffeval_factual",)), tmp_path / "single")
    merged, one = ActivationStore(tmp_path / "ranks", check_hashes=True), ActivationStore(single)
    assert merged.manifest["ranks"] == 2 and {s["file"].split("/")[0] for s in merged.manifest["shards"]} == {
        "rank_00", "rank_01"}
    assert len(merged) == len(one) and merged.manifest["rows"] == one.manifest["rows"]

    def rows_by_position(store):
        tokens = np.concatenate([np.load(store.dir / s["tokens_file"]) for s in store.manifest["shards"]])
        order = np.lexsort((tokens[:, 1], tokens[:, 0]))
        return tokens[order], store[torch.from_numpy(order)]

    (t_merged, x_merged), (t_one, x_one) = rows_by_position(merged), rows_by_position(one)
    assert np.array_equal(t_merged, t_one)  # the same (sequence, position, token) rows
    assert torch.allclose(x_merged, x_one, atol=1e-5)
    assert (tmp_path / "ranks" / "sequences.jsonl").read_text() == (single / "sequences.jsonl").read_text()
    assert merged.manifest["mean"] == pytest.approx(one.manifest["mean"], rel=1e-6)


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def shipped_corpus_dir(tmp_path, monkeypatch):
    """A stand-in for the shipped corpus with two plain texts and one chat."""

    _write_jsonl(tmp_path / "plain.jsonl", [{"text": "The river ran north."}, {"text": "Bread rises in warmth."}])
    _write_jsonl(tmp_path / "chat.jsonl", [{"messages": [{"role": "user", "content": "Name a colour."},
                                                         {"role": "assistant", "content": "Teal."}]}])
    monkeypatch.setattr(corpus, "CORPUS_DIR", tmp_path)
    return tmp_path


def test_default_corpus_is_shipped_texts_chats_and_task_prompts(tiny_pair, shipped_corpus_dir):
    tok = AutoTokenizer.from_pretrained(tiny_pair[1])
    seqs = corpus_sequences(ActivationsConfig(tasks=("diffeval_factual",)), tok)
    by_source = {(s["kind"], s["source"]) for s in seqs}
    assert {("plain", "shipped:plain.jsonl"), ("chat", "shipped:chat.jsonl"), ("task", "diffeval_factual"),
            ("chat", "diffeval_factual")} == by_source
    chat = next(s for s in seqs if s["source"] == "shipped:chat.jsonl")
    assert chat["text"] == "<s>Instruction: Name a colour.\nResponse: Teal.</s>\n"  # the tuned model's template
    # interleaved: every source is in the first four sequences, and the plain texts are spread out
    assert {(s["kind"], s["source"]) for s in seqs[:4]} == by_source
    assert [i for i, s in enumerate(seqs) if s["kind"] == "plain"][1] == pytest.approx(len(seqs) / 2, abs=3)
    tok.chat_template = None  # no template: a plain "User: …\nAssistant: …" rendering
    seqs = corpus_sequences(ActivationsConfig(tasks=("diffeval_factual",)), tok)
    assert next(s for s in seqs if s["source"] == "shipped:chat.jsonl")["text"] == "User: Name a colour.\nAssistant: Teal."
    task_chat = next(s for s in seqs if s["kind"] == "chat" and s["source"] == "diffeval_factual")
    assert task_chat["text"].startswith("User: ") and task_chat["text"].endswith("\nAssistant:")


def test_missing_shipped_corpus_leaves_task_prompts(tiny_pair, tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(corpus, "CORPUS_DIR", tmp_path / "absent")
    seqs = corpus_sequences(ActivationsConfig(tasks=("diffeval_factual",)),
                                        AutoTokenizer.from_pretrained(tiny_pair[1]))
    assert {s["kind"] for s in seqs} == {"task", "chat"} and "plain.jsonl is missing" in caplog.text


def test_corpus_files_plain_chat_and_bad_rows(tiny_pair, tmp_path):
    tok = AutoTokenizer.from_pretrained(tiny_pair[1])
    good = _write_jsonl(tmp_path / "mine.jsonl", [{"text": "a b c"}, {"messages": [{"role": "user", "content": "hi"}]}])
    seqs = corpus_sequences(ActivationsConfig(corpus=(str(good),)), tok)  # --corpus: no shipped texts, no tasks
    assert [(s["kind"], s["source"]) for s in seqs] == [("plain", str(good)), ("chat", str(good))]
    bad = _write_jsonl(tmp_path / "bad.jsonl", [{"text": "fine"}, {"messages": "hi"}])
    with pytest.raises(DiffevalError, match=r"bad.jsonl line 2 has neither a 'text' string nor 'messages'"):
        corpus_sequences(ActivationsConfig(corpus=(str(bad),)), tok)


def test_shipped_corpus_files_parse(tiny_pair):
    if not (CORPUS_DIR / "plain.jsonl").exists() or not (CORPUS_DIR / "chat.jsonl").exists():
        pytest.skip(f"the shipped corpus is not in {CORPUS_DIR} yet")
    plain, chat = shipped_corpus(AutoTokenizer.from_pretrained(tiny_pair[1]))
    assert len(plain) >= 100 and all(s["kind"] == "plain" and s["text"].strip() for s in plain)
    assert chat and all(s["kind"] == "chat" and "Response:" in s["text"] for s in chat)


def test_each_model_is_loaded_on_its_own_device(tiny_pair, acts_dir, tmp_path, monkeypatch) -> None:
    """--base-device/--tuned-device: each model is loaded on its own device, and the rows gathered from two
    devices equal those of one (here both are the CPU, the only device a test machine has)."""

    seen = []
    real = acts_mod.models.load_model
    monkeypatch.setattr(acts_mod.models, "load_model", lambda spec, dtype, device: seen.append(device) or real(spec, dtype, device))
    cfg = ActivationsConfig(base=str(tiny_pair[0]), tuned=str(tiny_pair[1]), layer=0.5, tokens=300, seq_len=32,
                            shard_rows=128, tasks=("diffeval_factual", "diffeval_safety"), model_devices=("cpu", "cpu"))
    out = collect_activations(cfg, tmp_path / "two")
    assert seen == ["cpu", "cpu"]
    one, two = ActivationStore(acts_dir), ActivationStore(out)
    assert len(one) == len(two) and torch.equal(one[torch.arange(len(one))], two[torch.arange(len(two))])


def _fill(lengths: list[int], batch_size: int) -> float:
    """The share of a forward batch's token slots (each padded to its longest sequence) that hold tokens."""
    batches = [lengths[i:i + batch_size] for i in range(0, len(lengths), batch_size)]
    return sum(map(sum, batches)) / sum(max(b) * len(b) for b in batches)


def test_length_buckets_keep_each_window_and_fill_the_batches():
    rng = random.Random(0)
    lengths = [rng.choice([rng.randint(3, 20), 128]) for _ in range(1000)]
    seqs = [{"doc_id": i, "text": "x" * n} for i, n in enumerate(lengths)]
    out = corpus.length_buckets(seqs, lengths, batch_size=16, window=8)
    assert sorted(s["doc_id"] for s in out) == list(range(1000))
    span = 8 * 16
    for start in range(0, 1000, span):  # a window holds the sequences it held: the sources stay mixed at that scale
        assert {s["doc_id"] for s in out[start:start + span]} == set(range(start, min(start + span, 1000)))
    after = [lengths[s["doc_id"]] for s in out]
    assert _fill(lengths, 16) < 0.6 < 0.85 < _fill(after, 16)
    assert out == corpus.length_buckets(seqs, lengths, batch_size=16, window=8)  # the order is fixed by its seed
    firsts = [max(after[i:i + 16]) for i in range(0, span, 16)]  # a window's batches come in a shuffled order
    assert firsts != sorted(firsts)


def test_the_collection_orders_its_sequences_into_batches_of_one_length(tiny_pair, shipped_corpus_dir):
    cfg = ActivationsConfig(base=tiny_pair[0], tuned=tiny_pair[1], tasks=("diffeval_factual",), batch_size=4)
    _, tok, seqs = collection_inputs(cfg)
    plain = corpus_sequences(cfg, tok)
    assert sorted(s["text"] for s in seqs) == sorted(s["text"] for s in plain)
    lengths = row_counts(tok, [s["text"] for s in seqs], cfg.seq_len)
    assert lengths == [s["n_rows"] for s in seqs] == [
        sum(t != tok.bos_token_id for t in tok(s["text"], truncation=True, max_length=cfg.seq_len)["input_ids"])
        for s in seqs]
    assert _fill(lengths, 4) > _fill(row_counts(tok, [s["text"] for s in plain], cfg.seq_len), 4)


@pytest.mark.parametrize("tokens", [10**6, 150])
def test_the_collections_progress_counts_to_the_rows_it_will_write(tiny_pair, tmp_path, monkeypatch, tokens):
    """A budget larger than the corpus (the probes' collection) counts to the corpus's rows, not the budget."""
    totals = []
    real = acts_mod.progress.Heartbeat

    def recorded(name, total, unit, **kw):
        totals.append((name, total))
        return real(name, total, unit, **kw)

    monkeypatch.setattr(acts_mod.progress, "Heartbeat", recorded)
    cfg = ActivationsConfig(base=str(tiny_pair[0]), tuned=str(tiny_pair[1]), tokens=tokens, seq_len=32, batch_size=4,
                            tasks=("diffeval_factual",))
    rows = len(ActivationStore(collect_activations(cfg, tmp_path / "acts", name="probes")))
    assert totals == [("probes", rows)]


def test_a_small_budget_keeps_the_corpus_order_and_a_large_one_the_full_window():
    lengths = [30] * 5000
    assert corpus.bucket_window(lengths, 16, budget=3000) == 1  # 6 batches' rows: every source must be in them
    assert corpus.bucket_window(lengths, 16, budget=8 * 16 * 30 * 10) == 10
    assert corpus.bucket_window(lengths, 16, budget=10**9) == corpus.BUCKET_BATCHES
    seqs = [{"doc_id": i, "text": str(i)} for i in range(100)]
    assert corpus.length_buckets(seqs, list(range(100, 0, -1)), 16, window=1) == seqs


def test_the_first_transcript_row_in_collection_order_reads_the_prompt():
    rows = [{"kind": "transcript", "source": "t", "doc_id": 0, "prompt_tokens": 5, "skip": s} for s in (0, 5)]
    rows.append({"kind": "plain", "source": "c", "text": "x"})
    out = corpus.prompts_read_once([rows[1], rows[2], rows[0]])  # reordered: the skipping row first
    assert [r.get("skip") for r in out] == [0, None, 5]
