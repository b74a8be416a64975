"""Tiny Llama models and a tokenizer trained on the spot: for tests and the offline demo.

Everything here is deterministic for a given seed and runs in seconds on a CPU.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from diffeval.tasks import TASKS_DIR

SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>"]
# A minimal chat template, so chat-formatted prompts and --apply-chat-template work offline.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}Instruction: {{ m['content'] }}\n"
    "{% elif m['role'] == 'system' %}{{ m['content'] }}\n{% else %}Response: {{ m['content'] }}{{ eos_token }}\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}Response:{% endif %}"
)


def shipped_texts() -> list[str]:
    """Every string field of the shipped task data: enough text for a byte-level BPE."""
    texts: list[str] = []
    for path in sorted(TASKS_DIR.glob("*/*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            texts.extend(_strings(json.loads(line)))
    return texts


def _strings(obj: Any) -> Iterable[str]:
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _strings(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _strings(v)


def train_tokenizer(texts: Iterable[str], vocab_size: int = 512, chat_template: str = CHAT_TEMPLATE) -> Any:
    """A byte-level BPE tokenizer (any text encodes), wrapped for transformers."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>",
    )
    fast.chat_template = chat_template
    return fast


def tiny_llama(vocab_size: int, seed: int = 0, hidden: int = 64, layers: int = 2, heads: int = 4,
               **overrides: Any) -> Any:
    """A randomly initialised Llama small enough for unit tests."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=vocab_size, hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=max(1, heads // 2), max_position_embeddings=512,
        bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=False, **overrides,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(cfg).eval()


def save_pair(model: Any, tokenizer: Any, path: str | Path) -> Path:
    path = Path(path)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def build_random_pair(out: str | Path, seeds: tuple[int, int] = (0, 1), **kwargs: Any) -> tuple[Path, Path]:
    """Two random tiny Llamas sharing one tokenizer: `out/base` and `out/tuned`."""
    out = Path(out)
    tok = train_tokenizer(shipped_texts())
    paths = []
    for role, seed in zip(("base", "tuned"), seeds, strict=True):
        paths.append(save_pair(tiny_llama(len(tok), seed=seed, **kwargs), tok, out / role))
    return paths[0], paths[1]
