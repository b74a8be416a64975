"""Peak memory as the token budget grows: the activation collection (a disk cache) and a streamed crosscoder.

Each measurement runs in its own subprocess, so its peak resident memory (ru_maxrss) is its own. The same
pair is collected at --tokens N and at 4 N, and a crosscoder is trained for --steps steps from the stream
with each budget; the ratio of the peaks says whether memory grows with the budget (an in-memory cache of
the 4 N rows would add 4 N × 2 × d_model × 4 bytes).

    python -m benches.bench_memory [--tokens 100000] [--steps 20] [--base SPEC --tuned SPEC] [--layer 0.5]

Without --base/--tuned it builds a random pair of 4-block Llamas of hidden size 256 in a temporary folder.
The corpus is the shipped task texts, numbered and repeated to more than 4 N words. Below 65 536 rows both
peaks grow with the budget by design: a cache's writer buffers up to one shard (65 536 rows) and the
stream's buffer holds up to 65 536 rows; the default N is above that.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from diffeval.harness.organisms.tiny import save_pair, shipped_texts, tiny_llama, train_tokenizer

CHILD = r"""
import json, resource, sys, time
from pathlib import Path
from diffeval.harness.core.config import ActivationsConfig
kind, base, tuned, tokens, steps, layer, corpus, out = sys.argv[1:]
cfg = ActivationsConfig(base=base, tuned=tuned, layer=float(layer), tokens=int(tokens), seq_len=128, corpus=(corpus,),
                        tasks=("diffeval_factual",))
t0 = time.perf_counter()
if kind == "cache":
    from diffeval.crosscoders.data import ActivationStore
    from diffeval.harness.stages.activations import collect_activations
    rows = len(ActivationStore(collect_activations(cfg, Path(out))))
else:
    from diffeval.crosscoders import CrossCoderConfig, train_crosscoder
    from diffeval.harness.stages.stream import paired_stream
    stream = paired_stream(cfg, seed=0)
    d = stream.buffer.shape[-1]
    train_crosscoder(CrossCoderConfig(d_model=d, n_models=2, n_latents=8 * d, k=32, n_steps=int(steps),
                                      dtype="float32"), stream, progress=False)
    rows = stream.rows_read
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"rows": rows, "peak_bytes": peak, "seconds": time.perf_counter() - t0}))
"""


def measure(kind: str, base: str, tuned: str, tokens: int, steps: int, layer: float, corpus: Path, out: Path) -> dict:
    res = subprocess.run([sys.executable, "-c", CHILD, kind, base, tuned, str(tokens), str(steps), str(layer),
                          str(corpus), str(out)],
                         capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise SystemExit(f"{kind} at {tokens} tokens failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def random_pair(root: Path) -> tuple[str, str]:
    tok = train_tokenizer(shipped_texts(), vocab_size=2000)
    dirs = [str(save_pair(tiny_llama(len(tok), seed=seed, hidden=256, layers=4), tok, root / name))
            for seed, name in ((0, "base"), (1, "tuned"))]
    return dirs[0], dirs[1]


def corpus_file(path: Path, tokens: int) -> Path:
    """A .txt corpus of at least `tokens` words: the shipped task texts, numbered and repeated."""
    texts = shipped_texts()
    per_pass = sum(len(t.split()) for t in texts)
    lines = [f"{r}. {t}" for r in range(tokens // per_pass + 1) for t in texts]
    path.write_text("\n".join(line.replace("\n", " ") for line in lines) + "\n", encoding="utf-8")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=100_000)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--base")
    parser.add_argument("--tuned")
    parser.add_argument("--layer", type=float, default=0.5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        base, tuned = (args.base, args.tuned) if args.base and args.tuned else random_pair(root / "pair")
        corpus = corpus_file(root / "corpus.txt", 4 * args.tokens)
        print(f"pair: {base} vs {tuned}; layer {args.layer}; own peak resident memory of each subprocess")
        for kind in ("cache", "stream"):
            runs = [measure(kind, base, tuned, n, args.steps, args.layer, corpus, root / f"{kind}{n}")
                    for n in (args.tokens, 4 * args.tokens)]
            for n, r in zip((args.tokens, 4 * args.tokens), runs, strict=True):
                print(f"{kind:<6} --tokens {n:>9}: {r['rows']:>9} rows, peak {r['peak_bytes'] / 2**20:8.0f} MiB, "
                      f"{r['seconds']:6.0f} s")
            print(f"{kind:<6} peak at 4x the tokens / peak at 1x: {runs[1]['peak_bytes'] / runs[0]['peak_bytes']:.2f}")


if __name__ == "__main__":
    main()
