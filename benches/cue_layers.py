"""The headline's cue folds at every layer of a finished run's pair: where in depth fine-tuning moved each
category's answer cues beyond the text around them and the other categories' cues.

    python -m benches.cue_layers RUN_DIR [--layers 0,4,9,13,17] [--dtype float32] [--base A --tuned B]

The run fixes the pair, the probe prompts (its transcripts: each probe counts once, its cue is its prompt's
last token) and the layer its headline read. Both models read each prompt, and every block's output is
scaled per model as the crosscoder scales its inputs (the square root of d_model over the mean squared norm,
here over the prompts' positions), so that the run's own layer reproduces its headline up to that scale. The
folds are `harness/stages/headline.headline_rows` on those rows, the same null and test at `MIN_FOLD`, BH across
categories at `--alpha`. A diagnostic of where a change lives, not a second headline: the run's layer stays
the one its settings chose.

`--base`/`--tuned` read the run's probe prompts with another pair of the same tokenizer (a placebo of
the run's organism, whose probes are the same).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from diffeval.harness.core import files, models
from diffeval.harness.core.config import ActivationsConfig
from diffeval.harness.stages.activations import decoder_blocks, resolve_layer
from diffeval.harness.stages.headline import MIN_FOLD, headline_rows, relative_difference
from diffeval.harness.stages.transcripts import read_transcripts

OUTLIER_FACTOR = ActivationsConfig.outlier_factor


def prompts(run: Path) -> tuple[list[str], list[str]]:
    """(each probe's prompt, its category), one per probe (its base-side transcript row)."""
    texts, cats = [], []
    for path in sorted((run / files.TRANSCRIPTS_DIR).glob("*.jsonl")):
        for row in read_transcripts(path):
            if row["side"] == files.SIDES[0]:
                texts.append(row["prompt"])
                cats.append(path.stem)
    if not texts:
        raise SystemExit(f"{run / files.TRANSCRIPTS_DIR} holds no transcripts: run the pipeline with --probe-responses > 0")
    return texts, cats


@torch.no_grad()
def hidden_states(spec: str, texts: list[str], dtype: str, blocks: list[int] | None) -> tuple[int, dict[int, list[np.ndarray]]]:
    """(the model's number of blocks, per block of `blocks` (or every one) each prompt's non-BOS positions
    [positions, d])."""
    s = models.resolve_spec(spec)
    tok, model = models.load_tokenizer(s), models.load_model(s, dtype, "cpu")
    n_blocks = len(decoder_blocks(model))
    wanted = blocks if blocks is not None else list(range(n_blocks))
    per_block: dict[int, list[np.ndarray]] = {b: [] for b in wanted}
    for text in texts:
        enc = tok(text, return_tensors="pt")
        keep = enc["input_ids"][0] != tok.bos_token_id
        out = model(**enc, output_hidden_states=True, use_cache=False)
        for b in wanted:  # hidden_states[0] is the embedding; block b's output is b + 1
            per_block[b].append(out.hidden_states[b + 1][0][keep].float().numpy())
    return n_blocks, per_block


def folds_at(base: list[np.ndarray], tuned: list[np.ndarray], cats: list[str], alpha: float) -> dict[str, dict]:
    """The cue shift per category from one block's paired rows (per prompt: [positions, d] each side)."""
    norms = [np.maximum(np.linalg.norm(xb, axis=1), np.linalg.norm(xt, axis=1)) for xb, xt in zip(base, tuned, strict=True)]
    limit = OUTLIER_FACTOR * np.median(np.concatenate(norms))  # the collection's outlier filter
    kept = [n <= limit for n in norms]
    flat = [np.concatenate([x[k] for x, k in zip(side, kept, strict=True)]) for side in (base, tuned)]
    scale = [np.sqrt(x.shape[1] / (x.astype(np.float64) ** 2).sum(1).mean()) for x in flat]
    r_cue, drift = [], []
    for xb, xt, k in zip(base, tuned, kept, strict=True):
        pair = torch.as_tensor(np.stack([xb[k] * scale[0], xt[k] * scale[1]], 1))
        r = relative_difference(pair).numpy().astype(np.float64)
        r_cue.append(r[-1])
        drift.append(r[:-1].mean() if len(r) > 1 else np.nan)
    names = list(dict.fromkeys(cats))
    rows = headline_rows(np.array(r_cue), np.zeros(len(r_cue)), cats, names, alpha, {}, np.array(drift))
    return dict(zip(names, rows, strict=True))  # no latents and no references: the fold, its q, `significant`


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--layers", default="", help="comma-separated block indices; empty = every block")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--alpha", type=float, default=0.05)
    ap.add_argument("--base", default="", help="another base model (default: the run's)")
    ap.add_argument("--tuned", default="", help="another tuned model (default: the run's)")
    args = ap.parse_args()
    cfg = json.loads((args.run / files.CONFIG).read_text())
    pair = {"base": args.base or cfg["base"], "tuned": args.tuned or cfg["tuned"]}
    texts, cats = prompts(args.run)
    wanted = [int(x) for x in args.layers.split(",")] if args.layers else None
    (n_blocks, base), (_, tuned) = (hidden_states(pair[side], texts, args.dtype, wanted) for side in ("base", "tuned"))
    blocks = list(base)
    run_layer = resolve_layer(cfg["layer"], n_blocks, pair["tuned"])
    names = list(dict.fromkeys(cats))
    print(f"cue fold over the larger null, per block (* = significant, fold > {MIN_FOLD} at BH q < {args.alpha}); "
          f"{len(texts)} probes of {args.run}, read by {pair['base']} and {pair['tuned']}; the run read block {run_layer}")
    print(f"{'block':>5} " + " ".join(f"{c[:12]:>13}" for c in names))
    for b in blocks:
        shifts = folds_at(base[b], tuned[b], cats, args.alpha)
        cells = [("   —" if s["value"] is None else f"{s['value'] + 1:.2f}x" + ("*" if s["significant"] else " "))
                 for s in (shifts[c] for c in names)]
        print(f"{b:>5}{'<' if b == run_layer else ' '}" + " ".join(f"{x:>13}" for x in cells))


if __name__ == "__main__":
    main()
