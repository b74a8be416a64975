"""The whole pipeline on a tiny local pair: every stage's files, the stage cache, kill-and-resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import diffeval.crosscoders.train as train
from diffeval.crosscoders import BatchTopKCrossCoder, CrossCoderConfig, load_crosscoder
from diffeval.crosscoders.interop import save_dictionary_learning
from diffeval.harness import pipeline
from diffeval.harness.cli import cli
from diffeval.harness.cli.common import build_config
from diffeval.harness.core.errors import DiffevalError
from diffeval.harness.core.files import REFERENCE_DIRS
from diffeval.harness.core.runconfig import RunConfig
from diffeval.harness.core.rundir import RunDir
from diffeval.harness.stages.attribution import specific_sets
from diffeval.harness.stages.causal import stage_causal
from diffeval.harness.stages.latent_sums import encoded_batches, response_sums
from diffeval.harness.stages.latents import read_latents
from diffeval.harness.stages.report import stage_report
from diffeval.reports.schema import load_report
from tests.conftest import copy_run, tiny_cfg

pytestmark = pytest.mark.slow


def _outputs(run: Path) -> dict[str, bytes]:
    return {name: (run / name).read_bytes()
            for name in ("crosscoder/crosscoder.safetensors", "latents.jsonl", "attribution.json", "bench/deltas.json")}


def test_pipeline_writes_every_stage_and_reuses_them(tiny_pair, tiny_run, tmp_path) -> None:
    run = copy_run(tiny_run, tmp_path / "run")
    manifest = json.loads((run / "manifest.json").read_text())
    for stage in ("bench.base", "bench.tuned", "bench.deltas", "activations", "crosscoder", "transcripts", "probes",
                  "latents", "attribution"):
        assert manifest["stages"][stage]["status"] == "done", stage
    report = load_report(run / "report.json")
    assert [t["task"] for t in report["tasks"]] == ["diffeval_factual", "diffeval_multilingual", "diffeval_hallucination"]
    assert report["crosscoder"]["n_latents"] == 64
    rows = [json.loads(x) for x in (run / "latents.jsonl").read_text().splitlines()]
    assert len(rows) == 64 and all("category" in r for r in rows)
    attr = json.loads((run / "attribution.json").read_text())
    assert {c["category"] for c in attr["categories"]} >= {"safety", "math", "unassigned"}
    assert attr["attribution"]["n_tasks"] == 3
    safety = next(c for c in attr["categories"] if c["category"] == "safety")
    assert safety["n_probes"] == len((run / "probes/transcripts/safety.jsonl").read_text().splitlines()) // 2
    assert all({"usage_shift", "usage_ci_low", "usage_p", "usage_base", "usage_tuned"} <= set(c) for c in attr["categories"])
    _check_response_sums(run)
    config = json.loads((run / "config.json").read_text())
    assert config["n_latents"] == 64  # the full configuration, not only the bench's part
    before = _outputs(run)
    ended = {k: v.get("ended") for k, v in manifest["stages"].items()}
    pipeline.run(tiny_cfg(tiny_pair), run)
    again = json.loads((run / "manifest.json").read_text())
    assert {k: v.get("ended") for k, v in again["stages"].items() if k in ended} == ended  # nothing re-ran
    assert _outputs(run) == before


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA device")
def test_every_stage_runs_on_cuda(tiny_pair, tmp_path) -> None:
    run = pipeline.run(tiny_cfg(tiny_pair, device="cuda", causal=True, n_latents=32), tmp_path / "run")
    manifest = json.loads((run / "manifest.json").read_text())
    assert all(v["status"] == "done" for v in manifest["stages"].values())
    attr = json.loads((run / "attribution.json").read_text())
    assert attr["attribution"]["n_tasks"] == 3
    assert len(attr["causal"]) + len(attr["causal_skipped"]) == 3


def _check_response_sums(run: Path) -> None:
    """Only positions from a transcript's prompt_tokens on count as its response."""

    model = load_crosscoder(run / "crosscoder")
    acts = run / "probes/activations"
    groups = [np.arange(0, 32), np.arange(32, 64)]
    sids = [json.loads(x)["id"] for x in (acts / "sequences.jsonl").read_text().splitlines()]
    _, none = response_sums(model, acts, groups, {s: 10**6 for s in sids})
    assert not none.any()
    _, every = response_sums(model, acts, groups, {s: 0 for s in sids})
    norms = model.W_dec.detach().flatten(1).norm(dim=-1)
    total = sum(float((f @ norms).sum()) for _, f in encoded_batches(model, acts))
    assert every.sum() == pytest.approx(total, rel=1e-4)
    _, half = response_sums(model, acts, groups, {s: 3 for s in sids})
    assert 0 < half.sum() < every.sum()


def test_killed_run_resumes_to_identical_results(tiny_pair, tiny_run, tmp_path, monkeypatch) -> None:
    cfg = tiny_cfg(tiny_pair)
    reference = tiny_run  # the same configuration, uninterrupted

    real_step = train.train_step

    def dying_step(model, ddp, opt, source, c, step, since_fired):
        if step == 25:  # after the checkpoints at steps 10 and 20
            raise KeyboardInterrupt
        return real_step(model, ddp, opt, source, c, step, since_fired)

    monkeypatch.setattr(train, "train_step", dying_step)
    with pytest.raises(KeyboardInterrupt):
        pipeline.run(cfg, tmp_path / "killed")
    manifest = json.loads((tmp_path / "killed" / "manifest.json").read_text())
    assert manifest["stages"]["crosscoder"]["status"] == "failed"
    assert not (tmp_path / "killed" / "latents.jsonl").exists()
    monkeypatch.setattr(train, "train_step", real_step)
    resumed = pipeline.run(cfg, tmp_path / "killed")
    assert _outputs(resumed) == _outputs(reference)


def test_dry_run_plans_without_running(tiny_pair, tmp_path) -> None:
    base, tuned = tiny_pair
    res = CliRunner().invoke(cli, ["run", "--base", str(base), "--tuned", str(tuned), "--dry-run", "--out", str(tmp_path / "r")])
    assert res.exit_code == 0, res.output
    assert "crosscoder" in res.output and "disk: activation cache" in res.output
    assert not (tmp_path / "r" / "manifest.json").exists()


def test_models_named_in_a_config_file_are_used(tiny_pair, tmp_path) -> None:
    base, tuned = tiny_pair
    conf = tmp_path / "c.yaml"
    conf.write_text(f"base: {base}\ntuned: {tuned}\nn_steps: 77\n")
    res = CliRunner().invoke(cli, ["run", "--config", str(conf), "--dry-run", "--out", str(tmp_path / "r")])
    assert res.exit_code == 0, res.output
    assert "default model organism" not in res.output  # the file's models, not toyworld


def test_config_file_and_flags(tmp_path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("base: a\ntuned: b\nn_steps: 77\nk: 8\n")
    cfg = build_config(RunConfig, str(path), k=4)
    assert cfg.n_steps == 77 and cfg.k == 4
    path.write_text("base: a\ntuned: b\nn_stepz: 1\n")

    with pytest.raises(DiffevalError, match="unknown key.*n_stepz"):
        build_config(RunConfig, str(path))


def test_reference_design_takes_specific_latents_against_the_reference(tiny_pair, tmp_path) -> None:
    base, tuned = tiny_pair
    cfg = tiny_cfg(tiny_pair, tasks=("diffeval_factual",), reference=str(base), specific_by="delta_norm")
    run = pipeline.run(cfg, tmp_path / "ref")
    attr = json.loads((run / "attribution.json").read_text())
    assert attr["reference"] == str(base)
    counts = {side: len(specific_sets(read_latents(run / sub / "latents.jsonl"), "delta_norm")[0])
              for side, sub in REFERENCE_DIRS.items()}
    assert (attr["N_tuned"], attr["N_base"]) == (counts["tuned"], counts["base"])
    # R is the base itself: no latent can be specific to the base against R
    assert counts["base"] == 0
    assert attr["attribution"]["reason"] is not None  # one task: no correlation, and it says why


def test_causal_stage_reverts_each_task_category_beside_a_control(tiny_pair, tiny_run, tmp_path) -> None:
    cfg = tiny_cfg(tiny_pair, causal=True)
    run = copy_run(tiny_run, tmp_path / "run")
    stage_causal(RunDir(run), cfg.stages().causal)
    attr = json.loads((run / "attribution.json").read_text())
    done, skipped = attr["causal"], attr["causal_skipped"]
    assert sorted(r["task"] for r in done + skipped) == sorted(t["task"] for t in attr["attribution"]["per_task"])
    for row in skipped:
        assert row["reason"] in ("no live latent in its category", "delta is 0")
    # random tiny models give the annotator nothing to find; hand a third of the live latents to a task's category
    # as their primary one, and one more latent as its second category (a member all the same)
    moved = next(t for t in attr["attribution"]["per_task"] if t["delta"] != 0)
    rows = [json.loads(x) for x in (run / "latents.jsonl").read_text().splitlines()]
    live = [r for r in rows if r["class"] != "dead"]
    other = next(c for c in ("math", "code") if c != moved["category"])
    for i, r in enumerate(live):
        r["category"], r["categories"] = ((moved["category"], [moved["category"]]) if i < len(live) // 3 else
                                          (other, [other, moved["category"]]) if i == len(live) // 3 else
                                          ("unassigned", []))
    (run / "latents.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    stage_causal(RunDir(run), cfg.stages().causal)
    attr = json.loads((run / "attribution.json").read_text())
    row = next(r for r in attr["causal"] if r["task"] == moved["task"])
    assert row["mode"] == "revert" and row["n_latents"] == len(live) // 3 + 1
    assert row["delta"] == pytest.approx(moved["delta"], abs=0.2)  # per-document mean vs the headline aggregate
    assert row["delta_removed"] is not None and row["control_removed"] is not None  # the random control ran too
    stage_report(RunDir(run))
    assert load_report(run / "report.json")["causal"] == attr["causal"]
    assert " (revert) |" in (run / "report.md").read_text()


def test_corpus_responses_adds_the_transcripts_to_the_crosscoder_corpus(tiny_pair, tmp_path) -> None:
    with pytest.raises(DiffevalError, match="probe_responses > 0"):
        tiny_cfg(tiny_pair, corpus_responses=True, probe_responses=0)
    cfg = tiny_cfg(tiny_pair, tasks=("diffeval_factual",), corpus_responses=True, seq_len=64)  # prompt and response
    run = pipeline.run(cfg, tmp_path / "run")
    seqs = [json.loads(x) for x in (run / "activations/sequences.jsonl").read_text().splitlines()]
    sources = {s["source"] for s in seqs}
    assert "probes/transcripts/safety.jsonl" in sources  # named relative to the run
    assert any(src.startswith("shipped:") for src in sources) and "diffeval_factual" in sources  # still there
    _check_each_probe_token_collected_once(run, seqs)
    manifest = json.loads((run / "manifest.json").read_text())
    order = list(manifest["stages"])
    assert order.index("transcripts") < order.index("activations")
    # a moved run directory keeps every stage and still finds its transcripts (the usage shift needs them)
    before = json.loads((run / "attribution.json").read_text())
    assert any(c.get("n_probes") for c in before["categories"])  # usage rows were computed from the transcripts
    moved = run.rename(tmp_path / "moved")
    pipeline.run(cfg, moved)
    again = json.loads((moved / "manifest.json").read_text())
    assert {k: v.get("ended") for k, v in again["stages"].items()} == {k: v.get("ended") for k, v in manifest["stages"].items()}
    assert json.loads((moved / "attribution.json").read_text())["categories"] == before["categories"]


def _check_each_probe_token_collected_once(run: Path, seqs: list[dict]) -> None:
    """A probe's prompt reaches the crosscoder's corpus once: its first transcript row whole, the second from
    its response on, and no corpus text that equals a transcript's prompt."""
    acts = json.loads((run / "activations/manifest.json").read_text())
    rows = np.concatenate([np.load(run / "activations" / s["tokens_file"]) for s in acts["shards"]])
    positions: dict[int, list[int]] = {}
    for seq_id, pos in rows[:, :2].tolist():
        positions.setdefault(seq_id, []).append(pos)
    transcripts = [s for s in seqs if s["kind"] == "transcript"]
    prompts = {s["prompt"] for s in transcripts}
    assert transcripts and not any(s["text"] in prompts for s in seqs if s["kind"] != "transcript")
    by_probe: dict[tuple[str, int], list[dict]] = {}
    for s in transcripts:
        by_probe.setdefault((s["source"], s["doc_id"]), []).append(s)
    pairs = [g for g in by_probe.values() if len(g) == 2 and all(s["id"] in positions for s in g)]
    assert pairs, "no probe has both transcript rows collected"
    for first, second in pairs:
        assert first["skip"] == 0 and second["skip"] > 1
        assert min(positions[second["id"]]) >= second["skip"]  # the prompt's tokens are not collected twice
        assert min(positions[first["id"]]) < second["skip"]  # ... but once


BYTE_MARKERS = ("Ġ", "Ċ", "▁")  # byte-level BPE and SentencePiece spellings of space and newline


def test_contexts_are_decoded_deduplicated_and_carry_their_activations(tiny_run) -> None:
    """Top contexts read as text: each token decoded (no byte-level markers), one context per distinct text,
    and the latent's activation at the activating token equal to the activation the statistics recorded."""
    seqs = [json.loads(x) for x in (tiny_run / "activations/sequences.jsonl").read_text().splitlines()]
    for s in seqs:  # the pieces spell the text they were cut from, space for space (up to truncation)
        joined = "".join(s["pieces"])
        assert joined and s["text"].startswith(joined) and len(s["pieces"]) == len(s["tokens"])
    assert any(any(m in "".join(s["tokens"]) for m in BYTE_MARKERS) for s in seqs)  # the raw tokens have them
    rows = read_latents(tiny_run / "latents.jsonl")
    checked = 0
    for r in rows:
        ctxs = r["top_contexts"]
        texts = ["".join(c["pieces"]) for c in ctxs]
        assert len(texts) == len(set(texts)), r["latent"]
        assert sum(c["count"] for c in ctxs) == len(r["top_rows"])
        assert len(r["decoder_norms"]) == 2
        for c in ctxs:
            assert not any(m in "".join(c["pieces"]) for m in BYTE_MARKERS)
            assert len(c["acts"]) == len(c["pieces"]) and 0 <= c["at"] < len(c["pieces"])
        if ctxs:
            assert ctxs[0]["acts"][ctxs[0]["at"]] == pytest.approx(r["top_acts"][0], abs=2e-3)
            checked += 1
    assert checked > 10
    for name in ("report.md", "report.html"):
        text = (tiny_run / name).read_text()
        assert not any(m in text for m in BYTE_MARKERS), name


def test_run_with_a_given_crosscoder_uses_it_instead_of_training(tiny_pair, tiny_run, tmp_path, monkeypatch) -> None:
    """`--crosscoder` with a dictionary_learning checkpoint of the tiny run's crosscoder: nothing is trained,
    the run's crosscoder encodes as the original does, its fit is measured on the run's activations, the
    report says where it came from; a crosscoder of another hidden size is refused."""
    original = load_crosscoder(tiny_run / "crosscoder")
    checkpoint = save_dictionary_learning(original, tmp_path / "given.pt")
    run = copy_run(tiny_run, tmp_path / "run")
    def no_training(*_args: object, **_kw: object) -> None:
        raise AssertionError("the crosscoder stage trained although --crosscoder was given")

    monkeypatch.setattr("diffeval.harness.stages.crosscoder.train_crosscoder", no_training)
    pipeline.run(tiny_cfg(tiny_pair, crosscoder=str(checkpoint)), run)
    used = load_crosscoder(run / "crosscoder")
    x = torch.randn(64, 2, original.cfg.d_model) * 3
    with torch.no_grad():
        torch.testing.assert_close(used.encode(x), original.encode(x), rtol=1e-5, atol=1e-5)
    metrics = [json.loads(x) for x in (run / "crosscoder/metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 1 and metrics[0]["step"] == 0 and all(0 < f <= 1 for f in metrics[0]["fve"])
    report = load_report(run / "report.json")
    assert report["crosscoder"]["source"] == str(checkpoint.resolve())
    assert report["run_config"]["crosscoder"] == str(checkpoint.resolve()) and report["run_config"]["n_steps"] is None
    assert "trained elsewhere" in (run / "report.md").read_text()
    other = tmp_path / "other"
    BatchTopKCrossCoder(CrossCoderConfig(d_model=original.cfg.d_model + 1, n_latents=16, k=2)).save(other)
    with pytest.raises(DiffevalError, match="hidden size"):
        pipeline.run(tiny_cfg(tiny_pair, crosscoder=str(other)), copy_run(tiny_run, tmp_path / "run2"))
    with pytest.raises(DiffevalError, match="does not exist"):
        tiny_cfg(tiny_pair, crosscoder=str(tmp_path / "nowhere"))


def test_each_stage_records_its_own_peak_memory(tmp_path):
    """The manifest gives every stage its own peak resident set: a stage that holds 400 MB shows it, and the
    small stage after it does not inherit it (on Linux the peak is reset when a stage starts)."""
    import mmap  # noqa: PLC0415

    run = RunDir(tmp_path / "r")
    with run.stage("big", "a") as rec:
        # 400 MB of its own mapping, touched, then unmapped: malloc's arenas could keep freed memory resident
        held = mmap.mmap(-1, 400 * 2**20)
        view = np.frombuffer(held, dtype=np.uint8)
        view[:] = 1
        del view
        rec["outputs"] = []
    held.close()
    with run.stage("small", "b") as rec:
        rec["outputs"] = []
    stages = json.loads((tmp_path / "r" / "manifest.json").read_text())["stages"]
    big, small = stages["big"], stages["small"]
    assert big["peak_rss_mib"] >= 380
    if big["peak_rss_scope"] == "stage":
        assert small["peak_rss_scope"] == "stage" and small["peak_rss_mib"] < big["peak_rss_mib"] - 300


def test_a_peak_reset_that_did_not_take_is_reported_as_the_process_peak(monkeypatch):
    """A sandbox may accept the write to /proc/self/clear_refs and keep the old peak: the stage then says its
    peak is the process's, not its own."""
    from diffeval.harness.core import rundir  # noqa: PLC0415

    monkeypatch.setattr(rundir, "_status_kib", lambda *names: {"VmHWM:": 1500 * 1024, "VmRSS:": 800 * 1024})
    monkeypatch.setattr(rundir.Path, "write_text", lambda self, text: len(text))
    assert rundir.reset_peak_memory() == "process"
    monkeypatch.setattr(rundir, "_status_kib", lambda *names: {"VmHWM:": 801 * 1024, "VmRSS:": 800 * 1024})
    assert rundir.reset_peak_memory() == "stage"
