"""The causal check: the ablation hook (exactness, S = ∅, KV cache), a planted latent, scoring, run-dir errors."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from diffeval.crosscoders.config import CrossCoderConfig
from diffeval.crosscoders.l1 import L1CrossCoder
from diffeval.harness.core.config import BenchConfig
from diffeval.harness.core.errors import DiffevalError, RunDirError
from diffeval.harness.organisms.tiny import save_pair, tiny_llama
from diffeval.harness.stages import causal
from diffeval.harness.stages.bench import run_bench
from diffeval.harness.stages.causal import ablated_model, ablation_summary, causal_check

VOCAB, D, LAYER = 64, 32, 0
SCALE = (0.7, 1.9)  # act_scale of (base, tuned): deliberately not 1, so a missing division shows
IDS = torch.tensor([[5, 17, 42, 8, 23, 11]])


def blank_crosscoder(n_latents: int, d: int = D) -> L1CrossCoder:
    cc = L1CrossCoder(CrossCoderConfig(d_model=d, n_latents=n_latents, k=1, architecture="l1"))
    with torch.no_grad():
        for p in (cc.W_enc_T, cc.W_dec, cc.b_enc, cc.b_dec):
            p.zero_()
        cc.act_scale.copy_(torch.tensor(SCALE))
    return cc


def exact_crosscoder(d: int) -> L1CrossCoder:
    """Latents ±e_i for every (model, dimension): the reconstruction is exact, b_dec included."""
    cc = blank_crosscoder(4 * d, d)
    b_dec = torch.randn(2, d)
    with torch.no_grad():
        cc.b_dec.copy_(b_dec)
        j = 0
        for m in range(2):
            for i in range(d):
                for sign in (1.0, -1.0):
                    cc.W_enc_T[j, m, i] = sign  # pre = ±(s·x − b_dec): relu keeps one side
                    cc.b_enc[j] = -sign * b_dec[m, i]
                    cc.W_dec[j, m, i] = sign
                    j += 1
    return cc


def block_output(model, layer: int = LAYER) -> dict:
    """Capture a block's output (registered after the ablation hook, so it sees the ablated value)."""
    seen = {}

    def hook(_m, _i, out):
        seen["h"] = out[0] if isinstance(out, tuple) else out

    return seen, model.model.layers[layer].register_forward_hook(hook)


@pytest.fixture(scope="module")
def pair():
    torch.manual_seed(0)
    return tiny_llama(VOCAB, seed=0, hidden=D, heads=4), tiny_llama(VOCAB, seed=1, hidden=D, heads=4)


# -- (1) the hook ------------------------------------------------------------------------------------
def test_ablating_every_latent_of_an_exact_crosscoder_leaves_only_b_dec(pair):
    base, tuned = pair
    cc = exact_crosscoder(D)
    with torch.no_grad():
        x = torch.stack([base(IDS, output_hidden_states=True).hidden_states[LAYER + 1][0],
                         tuned(IDS, output_hidden_states=True).hidden_states[LAYER + 1][0]], 1)  # [seq, 2, d]
        assert torch.allclose(cc.reconstruct(x), x, atol=1e-5)  # the toy crosscoder really is exact
        abl = ablated_model(base, tuned, cc, LAYER, range(cc.cfg.n_latents))
        with abl as model:
            seen, handle = block_output(model)
            model(IDS)
            handle.remove()
    # h_T − (x̂_T − b_dec_T/s_T) = b_dec_T/s_T at every position: the error-preserving form keeps b_dec
    want = (cc.b_dec[1] / SCALE[1]).expand_as(seen["h"][0])
    assert torch.allclose(seen["h"][0], want, atol=1e-5)
    assert abl.calls == 1


def test_empty_latent_set_leaves_logits_bit_identical(pair):
    base, tuned = pair
    cc = exact_crosscoder(D)
    with torch.no_grad():
        plain = tuned(IDS).logits
        abl = ablated_model(base, tuned, cc, LAYER, [])
        with abl as model:
            hooked = model(IDS).logits
    assert abl.calls == 1  # the hook ran and subtracted an exact zero
    assert torch.equal(plain, hooked)
    assert torch.equal(tuned(IDS).logits, plain)  # hooks are gone after the context


# -- (2) known answer: a planted direction and the latent that reads it ------------------------------
@pytest.fixture(scope="module")
def planted(pair):
    """tuned = base + α·u vᵀ in block 0's down_proj, v chosen so that v·a = 1 at every position of IDS:
    the tuned residual after block 0 is exactly h_B + α·u there, a direction only the tuned model has."""
    base = pair[0]
    gen = torch.Generator().manual_seed(3)
    u = torch.randn(D, generator=gen)
    u /= u.norm()
    acts = {}
    mlp = base.model.layers[LAYER].mlp
    handle = mlp.down_proj.register_forward_pre_hook(lambda _m, inp: acts.update(a=inp[0][0]))
    with torch.no_grad():
        base(IDS)
    handle.remove()
    v = torch.linalg.pinv(acts["a"]) @ torch.ones(IDS.shape[1])  # [intermediate]: v·a_t = 1 for every t
    tuned = copy.deepcopy(base)
    alpha = 3.0
    with torch.no_grad():
        tuned.model.layers[LAYER].mlp.down_proj.weight += alpha * torch.outer(u, v)
    w = torch.randn(D, generator=gen)
    w -= (w @ u) * u
    w /= w.norm()
    cc = blank_crosscoder(8)
    with torch.no_grad():
        torch.nn.init.normal_(cc.W_enc_T[2:], std=0.1)  # latents 2..7: noise that is never ablated
        torch.nn.init.normal_(cc.W_dec[2:], std=0.1)
        for j, direction in ((0, u), (1, w)):  # latent 0 reads the planted u; latent 1 an unrelated w ⟂ u
            cc.W_enc_T[j, 1] = direction / SCALE[1]  # f_j = direction·(h_T − h_B) in raw units
            cc.W_enc_T[j, 0] = -direction / SCALE[0]
            cc.W_dec[j, 1] = SCALE[1] * direction  # tuned-only decoder (Δnorm = 1)
    return base, tuned, cc, alpha, u


def _last_logits(model, ids=IDS):
    with torch.no_grad():
        return model(ids).logits[0, -1]


def test_ablation_of_a_planted_latent_removes_its_effect(planted):
    base, tuned, cc, alpha, u = planted
    with torch.no_grad():
        h = [m(IDS, output_hidden_states=True).hidden_states[LAYER + 1][0] for m in (base, tuned)]
    assert torch.allclose(h[1] - h[0], alpha * u.expand_as(h[0]), atol=1e-4)  # the plant is what we think
    gap = (_last_logits(tuned) - _last_logits(base)).norm()
    assert gap > 0.05  # the planted direction changes the output materially
    with ablated_model(base, tuned, cc, LAYER, [0]) as model:
        gap_planted = (_last_logits(model) - _last_logits(base)).norm()
    with ablated_model(base, tuned, cc, LAYER, [1]) as model:
        gap_unrelated = (_last_logits(model) - _last_logits(base)).norm()
    assert gap_planted <= 0.1 * gap  # ≥ 90 % of the tuned-vs-base difference is gone
    assert abs(gap_unrelated - gap) <= 0.01 * gap


def test_revert_undoes_only_what_fine_tuning_changed(planted):
    """revert swaps the tuned decoder for the base one: with no base decoder it removes the plant (like ablate);
    with a base decoder writing the same raw direction, the latent did not change and nothing moves."""
    base, tuned, cc, _, u = planted
    gap = (_last_logits(tuned) - _last_logits(base)).norm()
    with ablated_model(base, tuned, cc, LAYER, [0], mode="revert") as model:
        assert (_last_logits(model) - _last_logits(base)).norm() <= 0.1 * gap
    kept = copy.deepcopy(cc)
    with torch.no_grad():
        kept.W_dec[0, 0] = SCALE[0] * u  # base writes u as well: the same raw contribution in both models
    with ablated_model(base, tuned, kept, LAYER, [0], mode="revert") as model:
        assert torch.allclose(_last_logits(model), _last_logits(tuned), atol=1e-5)
    with ablated_model(base, tuned, kept, LAYER, [0], mode="ablate") as model:  # ablate ignores the base decoder
        assert (_last_logits(model) - _last_logits(base)).norm() <= 0.1 * gap


def test_revert_needs_one_hidden_size_and_a_known_mode(planted):
    base, tuned, _, _, _ = planted
    with pytest.raises(DiffevalError, match="mode 'revert' .* needs one hidden size"):
        ablated_model(base, tuned, blank_crosscoder_dims((D, D // 2)), LAYER, [0], mode="revert")
    with pytest.raises(DiffevalError, match="ablation mode 'zero' is not one of ablate, revert"):
        ablated_model(base, tuned, blank_crosscoder(8), LAYER, [0], mode="zero")


def blank_crosscoder_dims(d_models: tuple[int, int]) -> L1CrossCoder:
    return L1CrossCoder(CrossCoderConfig(d_model=max(d_models), d_models=d_models, n_latents=4, k=1, architecture="l1"))


def test_generation_with_a_kv_cache_sees_the_same_ablation(planted):
    base, tuned, cc, _, _ = planted
    with ablated_model(base, tuned, cc, LAYER, [0, 3, 5]) as model:
        full = _last_logits(model)
        with torch.no_grad():
            first = model(IDS[:, :-1], use_cache=True)
            step = model(IDS[:, -1:], cache=first.past_key_values, use_cache=True).logits[0, -1]
        mask = torch.ones(2, IDS.shape[1], dtype=torch.long)
        mask[1, :2] = 0  # a left-padded row, as lm-eval batches generations
        batch = torch.cat([IDS, IDS], 0)
        kw = {"attention_mask": mask, "max_new_tokens": 4, "do_sample": False, "pad_token_id": 0}
        cached = model.generate(batch, use_cache=True, **kw)
        uncached = model.generate(batch, use_cache=False, **kw)
    assert torch.allclose(step, full, atol=1e-5)
    assert torch.equal(cached, uncached)


def test_skipped_tokens_keep_their_hidden_state(planted):
    base, tuned, cc, _, _ = planted
    with torch.no_grad(), ablated_model(base, tuned, cc, LAYER, [0], skip_token_ids=[5]) as model:
        seen, handle = block_output(model)
        model(IDS)
        handle.remove()
        plain = tuned(IDS, output_hidden_states=True).hidden_states[LAYER + 1][0]
    assert torch.equal(seen["h"][0, 0], plain[0])  # token 5 sits at position 0
    assert not torch.allclose(seen["h"][0, 1:], plain[1:])


def test_bad_latents_and_layers_are_rejected(planted):
    base, tuned, cc, _, _ = planted
    with pytest.raises(DiffevalError, match=r"out of range: the crosscoder has latents 0\.\.7"):
        ablated_model(base, tuned, cc, LAYER, [8])
    with pytest.raises(DiffevalError, match="layer 5 is out of range"):
        ablated_model(base, tuned, cc, 5, [0])
    with pytest.raises(DiffevalError, match="two distinct model objects"):
        ablated_model(tuned, tuned, cc, LAYER, [0])


# -- scoring -----------------------------------------------------------------------------------------
def test_summary_known_answers():
    rng = np.random.default_rng(0)
    base = rng.integers(0, 2, 200).astype(float)
    tuned = np.where(rng.random(200) < 0.4, 1.0, base)  # tuned fixes ~40 % of the documents
    full = ablation_summary(base, tuned, base.copy(), n_boot=500)
    assert full["delta_removed"] == 1.0 and full["ci_low"] == full["ci_high"] == 1.0
    none = ablation_summary(base, tuned, tuned.copy(), n_boot=500)
    assert none["delta_removed"] == 0.0 and none["delta_ablated"] == none["delta"] > 0
    half = np.where(np.arange(200) % 2 == 0, base, tuned)  # undo the change on every other document
    part = ablation_summary(base, tuned, half, n_boot=500)
    assert 0.3 < part["ci_low"] < part["delta_removed"] < part["ci_high"] < 0.7
    zero = ablation_summary(base, base.copy(), base.copy(), n_boot=500)
    assert zero["delta_removed"] is None and "undefined" in zero["note"]


# -- (3) the run directory ---------------------------------------------------------------------------
def _fake_bench(run, task="t1"):
    """The bench stage's files, just enough for causal_check to read (no models are run)."""
    run.mkdir(parents=True, exist_ok=True)
    (run / "config.json").write_text(json.dumps({"base": "a", "tuned": "b"}))
    (run / "bench" / "tuned").mkdir(parents=True)
    (run / "bench" / "deltas.json").write_text(json.dumps({"tasks": [{"task": task, "source": "lm-eval"}]}))
    (run / "bench" / "tuned" / "results.json").write_text(json.dumps({"configs": {task: {}}}))
    for role in ("base", "tuned"):
        (run / "bench" / role / "samples").mkdir(parents=True, exist_ok=True)
        (run / "bench" / role / "samples" / f"{task}.jsonl").write_text('{"doc_id": 0, "acc": 1.0}\n')


def test_missing_stages_are_named(tmp_path):
    with pytest.raises(RunDirError, match="no finished bench stage"):
        causal_check(tmp_path / "empty", "t1", "safety", [0])
    _fake_bench(tmp_path / "run")
    with pytest.raises(DiffevalError, match=r"task 'nope' is not among .* available: t1"):
        causal_check(tmp_path / "run", "nope", "safety", [0])
    with pytest.raises(RunDirError, match=r"no crosscoder stage \(crosscoder/cfg.json is missing\)"):
        causal_check(tmp_path / "run", "t1", "safety", [0])
    blank_crosscoder(8).save(tmp_path / "run" / "crosscoder")
    with pytest.raises(RunDirError, match="no activations stage"):
        causal_check(tmp_path / "run", "t1", "safety", [0])
    (tmp_path / "run" / "activations").mkdir()
    (tmp_path / "run" / "activations" / "manifest.json").write_text(json.dumps({"layer": [0, 0]}))
    with pytest.raises(DiffevalError, match="out of range"):
        causal_check(tmp_path / "run", "t1", "safety", [99])
    with pytest.raises(DiffevalError, match="category name 'a/b' is not allowed"):
        causal_check(tmp_path / "run", "t1", "a/b", [0])


# -- end to end: bench stage, planted pair, lm-eval on the ablated model -----------------------------
@pytest.fixture(scope="module")
def planted_run(tiny_pair, tmp_path_factory):
    """A run directory whose tuned model is the base plus α·u vᵀ in block 0 (every position, either sign),
    with a hand-built crosscoder: latents 0/1 read +u/−u in the tuned-minus-base difference, latent 2 reads
    a direction w ⟂ u."""

    root = tmp_path_factory.mktemp("causal")
    model = AutoModelForCausalLM.from_pretrained(tiny_pair[0])
    d, gen = model.config.hidden_size, torch.Generator().manual_seed(0)
    u, v, w = (torch.randn(n, generator=gen) for n in (d, model.config.intermediate_size, d))
    u, v = u / u.norm(), v / v.norm()
    w = (w - (w @ u) * u) / (w - (w @ u) * u).norm()
    with torch.no_grad():
        model.model.layers[0].mlp.down_proj.weight += 20.0 * torch.outer(u, v)
    tuned = save_pair(model, AutoTokenizer.from_pretrained(tiny_pair[0]), root / "tuned")
    run = root / "run"
    run_bench(BenchConfig(base=str(tiny_pair[0]), tuned=str(tuned), tasks=("planted_ll", "diffeval_math"),
                          tasks_dir=(str(_loglikelihood_task(root / "tasks")),), limit=12, batch_size=12,
                          max_gen_toks=6), run)
    cc = blank_crosscoder(4, d)
    with torch.no_grad():
        for j, direction in ((0, u), (1, -u), (2, w)):
            cc.W_enc_T[j, 1], cc.W_enc_T[j, 0] = direction / SCALE[1], -direction / SCALE[0]
            cc.W_dec[j, 1] = SCALE[1] * direction
    cc.save(run / "crosscoder")
    (run / "activations").mkdir()
    (run / "activations" / "manifest.json").write_text(json.dumps({"layer": [0, 0]}))
    return run


def _loglikelihood_task(directory):
    """A task scored by each document's log-likelihood: a continuous per-document metric, so the plant's
    delta is never zero by a tie of 0/1 scores."""
    texts = [("The capital of France is", "Paris"), ("Two plus two is", "four"), ("Water boils at", "100 degrees"),
             ("The sky is", "blue"), ("Cats are", "mammals"), ("The opposite of hot is", "cold"),
             ("A week has", "seven days"), ("The sun rises in the", "east"), ("Ice is frozen", "water"),
             ("Bees make", "honey"), ("The largest ocean is the", "Pacific"), ("Snow is", "white")]
    task = directory / "planted_ll"
    task.mkdir(parents=True)
    (task / "planted_ll.jsonl").write_text("".join(json.dumps({"context": c, "answer": a}) + "\n" for c, a in texts))
    (task / "planted_ll.yaml").write_text(
        "task: planted_ll\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: planted_ll.jsonl\n"
        "test_split: test\noutput_type: loglikelihood\ndoc_to_text: '{{context}}'\ndoc_to_target: ' {{answer}}'\n"
        "metric_list:\n  - metric: perplexity\n    aggregation: perplexity\n    higher_is_better: false\n"
        "metadata:\n  version: 1.0\n  category: factual_recall\n")
    return directory


def _resps(path):
    return [row["resps"] for row in map(json.loads, path.read_text().splitlines())]


@pytest.mark.slow
def test_causal_check_end_to_end(planted_run, monkeypatch):
    run = planted_run
    res = causal_check(run, "planted_ll", "planted", [0, 1], n_boot=500)
    assert abs(res["delta"]) > 0.02  # mean per-document log-likelihood change of the plant (nats)
    assert res["n_latents"] == 2 and res["n"] == 12 and res["metric"] == "perplexity"
    assert res["delta_removed"] == pytest.approx(1.0, abs=1e-3) and abs(res["delta_ablated"]) < 1e-3 * abs(res["delta"])
    assert res["ci_low"] == pytest.approx(1.0, abs=1e-3) and res["ci_high"] == pytest.approx(1.0, abs=1e-3)
    unrelated = causal_check(run, "planted_ll", "unrelated", [2], n_boot=500)
    assert unrelated["delta_removed"] == pytest.approx(0.0, abs=1e-3)
    # generation (KV cache inside lm-eval): the ablated model writes the base model's text
    causal_check(run, "diffeval_math", "planted", [0, 1], n_boot=500)
    gen = [_resps(p / "samples" / "diffeval_math.jsonl")
           for p in (run / "bench" / "base", run / "bench" / "tuned", run / "causal" / "diffeval_math__planted")]
    assert gen[2] == gen[0] != gen[1]
    # unchanged inputs: the stored result is reused without running lm-eval
    monkeypatch.setattr(causal, "_evaluate_ablated", lambda *a, **k: pytest.fail("re-ran an unchanged check"))
    assert causal_check(run, "planted_ll", "planted", [0, 1], n_boot=500) == res
    stored = json.loads((run / "causal" / "planted_ll__planted.json").read_text())
    assert stored == res
