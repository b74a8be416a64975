"""Activation collection throughput: batches of sequences ordered by length (`corpus.length_buckets`, what the
collection and the stream do) against the corpus order, on the same sequences, side by side in one process.

A forward batch is padded to its longest sequence, so the padded slots cost as much as tokens. Both orders
cover the same windows of the corpus and the same tokens; their batches alternate, so that a busy machine
slows both alike. Real tokens per second are printed, and their ratio.

    python -m benches.bench_buckets [--corpus FILE.jsonl] [--model SPEC] [--windows 1] [--batch-size 16]

Without `--model`, a randomly initialised Llama sized like a small real LM (d_model 576, 30 blocks, stopped
after block 15) reads random token ids of each text's length, estimated as 1.3 tokens a word plus BOS; with
`--model` (a directory, a .gguf file, a PEFT adapter), that model and its tokenizer. Without `--corpus`, the
shipped corpus's plain texts.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from benches.common import parse, sync
from diffeval.harness.core import models
from diffeval.harness.stages.activations import decoder_blocks, row_counts, truncated_hidden
from diffeval.harness.stages.corpus import BUCKET_BATCHES, length_buckets
from diffeval.harness.suite import CORPUS_DIR


def texts_of(path: Path) -> list[str]:
    return [json.loads(line)["text"] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def main() -> None:
    args, device = parse(__doc__, {"corpus": "", "model": "", "windows": 1, "batch_size": 16, "seq_len": 128})
    texts = texts_of(Path(args.corpus) if args.corpus else CORPUS_DIR / "plain.jsonl")
    if args.model:
        spec = models.resolve_spec(args.model)
        model, tok = models.load_model(spec, "float32", str(device)), models.load_tokenizer(spec)
        lengths = row_counts(tok, texts, args.seq_len)
        vocab = model.config.vocab_size
    else:
        cfg = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                          num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=2048)
        model = LlamaForCausalLM(cfg).eval().to(device)
        lengths = [min(args.seq_len, 1 + math.ceil(1.3 * len(t.split()))) for t in texts]
        vocab = cfg.vocab_size
    blocks = decoder_blocks(model)
    layer = len(blocks) // 2
    span = BUCKET_BATCHES * args.batch_size
    n = min(len(texts), args.windows * span)
    seqs = [{"id": i} for i in range(n)]
    orders = {"corpus order": seqs, "ordered by length": length_buckets(seqs, lengths[:n], args.batch_size)}
    gen = torch.Generator().manual_seed(0)
    ids = [torch.randint(1, vocab, (length,), generator=gen) for length in lengths[:n]]

    def batch(order: list[dict], start: int) -> tuple[torch.Tensor, torch.Tensor]:
        rows = [ids[s["id"]] for s in order[start:start + args.batch_size]]
        width = max(len(r) for r in rows)
        out = torch.zeros(len(rows), width, dtype=torch.long)
        mask = torch.zeros(len(rows), width, dtype=torch.long)
        for i, r in enumerate(rows):
            out[i, :len(r)], mask[i, :len(r)] = r, 1
        return out.to(device), mask.to(device)

    seconds = dict.fromkeys(orders, 0.0)
    slots = dict.fromkeys(orders, 0)
    with torch.no_grad():
        truncated_hidden(model, blocks, layer, *batch(seqs, 0))  # warm-up
        for start in range(0, n, args.batch_size):
            for name, order in orders.items():
                x, mask = batch(order, start)
                sync(device)
                t0 = time.perf_counter()
                truncated_hidden(model, blocks, layer, x, mask)
                sync(device)
                seconds[name] += time.perf_counter() - t0
                slots[name] += x.numel()
    tokens = sum(lengths[:n])
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.get_num_threads()} threads"
    print(f"torch {torch.__version__}, {where}; {args.model or 'random Llama d576'}, block {layer} of {len(blocks)}; "
          f"{n} sequences ({tokens} tokens) in batches of {args.batch_size}, at most {args.seq_len} tokens")
    for name in orders:
        print(f"{name:<18} {tokens / seconds[name]:9.0f} tokens/s   slots filled {tokens / slots[name]:5.1%}")
    print(f"speed-up: {seconds['corpus order'] / seconds['ordered by length']:.2f}x")


if __name__ == "__main__":
    main()
