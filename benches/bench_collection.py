"""Activation collection throughput: forward stopped at the middle block vs a full forward.

The baseline is what people usually write: a full forward with output_hidden_states=True, then
taking the middle layer. Both run on the same batches of a randomly initialised Llama sized like
a small real LM (d_model 576, 30 blocks, 49k vocabulary; no download), side by side in one process.

    python -m benches.bench_collection [--batches 6] [--batch-size 8] [--seq-len 256] [--device cuda]
"""

from __future__ import annotations

import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from benches.common import parse, sync
from diffeval.harness.stages.activations import decoder_blocks, truncated_hidden


def main() -> None:
    args, device = parse(__doc__, {"batches": 6, "batch_size": 8, "seq_len": 256})
    cfg = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                      num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=2048)
    model = LlamaForCausalLM(cfg).eval().to(device)
    blocks = decoder_blocks(model)
    layer = cfg.num_hidden_layers // 2
    batches = [torch.randint(0, cfg.vocab_size, (args.batch_size, args.seq_len), device=device) for _ in range(args.batches)]
    mask = torch.ones(args.batch_size, args.seq_len, dtype=torch.long, device=device)

    def full(ids: torch.Tensor) -> torch.Tensor:
        return model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[layer + 1]

    def truncated(ids: torch.Tensor) -> torch.Tensor:
        return truncated_hidden(model, blocks, layer, ids, mask)

    with torch.no_grad():
        assert torch.allclose(full(batches[0]), truncated(batches[0]), atol=1e-4)  # same activations
        rates = {}
        for name, fn in (("full forward + output_hidden_states", full), ("stopped at layer", truncated)):
            fn(batches[0])  # warm-up
            sync(device)
            t0 = time.perf_counter()
            for ids in batches:
                fn(ids)
            sync(device)
            rates[name] = args.batches * args.batch_size * args.seq_len / (time.perf_counter() - t0)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.get_num_threads()} threads"
    print(f"torch {torch.__version__}, {where}; layer {layer} of {cfg.num_hidden_layers}, "
          f"batch {args.batch_size} x {args.seq_len} tokens")
    for name, rate in rates.items():
        print(f"{name:<38} {rate:10.0f} tokens/s")
    ratio = rates["stopped at layer"] / rates["full forward + output_hidden_states"]
    print(f"speed-up: {ratio:.2f}x")


if __name__ == "__main__":
    main()
