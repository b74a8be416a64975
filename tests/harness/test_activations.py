import numpy as np
import pytest
import torch

from crosscoders.data import ActivationDirError, ActivationStore
from harness.activations import (
    ActivationsConfig,
    collect_activations,
    decoder_blocks,
    resolve_layer,
    truncated_hidden,
)
from harness.errors import DiffevalError
from harness.models import load_model, resolve_spec


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
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(acts_dir, copy)
    shard = copy / "acts_00001.npy"
    shard.write_bytes(shard.read_bytes()[:-100])
    with pytest.raises(ActivationDirError, match="truncated"):
        ActivationStore(copy)


def test_incomplete_collection_is_not_read(acts_dir, tmp_path):
    import json
    import shutil

    copy = tmp_path / "partial"
    shutil.copytree(acts_dir, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["complete"] = False
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ActivationDirError, match="did not finish"):
        ActivationStore(copy)


def test_cli_collect_train_stats_end_to_end(acts_dir, tmp_path):
    import json

    from click.testing import CliRunner

    from harness.cli import cli

    runner = CliRunner()
    cc = tmp_path / "cc"
    r = runner.invoke(cli, ["crosscoder", "train", str(acts_dir), "--out", str(cc), "--n-latents", "64", "--k", "4",
                            "--steps", "30", "--batch-size", "64"])
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
    import json
    import shutil

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


def test_interrupted_collection_resumes(tiny_pair, tmp_path, monkeypatch):
    from harness import activations

    cfg = ActivationsConfig(base=str(tiny_pair[0]), tuned=str(tiny_pair[1]), tokens=300, seq_len=32,
                            shard_rows=128, tasks=("diffeval_factual",))
    real_write = activations._ShardWriter._write
    calls = []

    def crash_on_second(self, acts, rows):
        calls.append(len(acts))
        if len(calls) == 2:
            raise KeyboardInterrupt
        real_write(self, acts, rows)

    monkeypatch.setattr(activations._ShardWriter, "_write", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        collect_activations(cfg, tmp_path)
    with pytest.raises(ActivationDirError, match="did not finish"):
        ActivationStore(tmp_path)
    monkeypatch.undo()
    collect_activations(cfg, tmp_path)
    store = ActivationStore(tmp_path, check_hashes=True)
    assert len(store) == 300 and [s["rows"] for s in store.manifest["shards"]] == [128, 128, 44]
