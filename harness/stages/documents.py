"""Per-document attribution: does a category's change sit in the benchmark documents whose outcome flipped?

bench logs every document's score for both models, so each document of a task has an outcome: up (the
tuned model scores higher: base wrong → tuned right), down, or same. The activation cache holds every
task prompt, read by both models, so each document also has a paired activation difference at its
answer cue (the prompt's last token). Through the crosscoder, category c's part of that difference is

    a_{d,c} = ‖Σ_{j∈c} f_j (d_j^T − d_j^B)‖² / ((‖x^B‖² + ‖x^T‖²) / 2)

(the decoded change its latents write, relative to the activations, in the crosscoder's scaled space).
Per task and its category: a one-sided Mann–Whitney test of whether flipped documents carry more of the
category's change than unchanged ones, within the task when it has both (at least two of each), else
against the unchanged documents of the other tasks; the effect is mean(a | flipped) / mean(a | same) − 1;
BH across tasks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.stats import mannwhitneyu

from diffeval.crosscoders.data import read_manifest
from diffeval.harness.core import files
from diffeval.harness.core.fdr import benjamini_hochberg
from diffeval.harness.core.io import read_json
from diffeval.harness.stages.bench import headline_metric, per_doc_scores
from diffeval.harness.stages.headline import pair_energy, scaled_pairs

MIN_GROUP = 2  # documents per side of a test


def outcomes(run_path: Path, task: str) -> dict[int, int]:
    """Per document of `task`: +1 (tuned scores higher), −1 (lower) or 0, from bench's per-document logs."""
    metric, flt = headline_metric(read_json(run_path / files.bench_results("tuned"))["configs"][task])
    scores = {role: per_doc_scores(run_path / files.bench_samples(role, task), metric, flt) for role in ("base", "tuned")}
    docs = sorted(set(scores["base"]) & set(scores["tuned"]))
    return {d: int(np.sign(scores["tuned"][d] - scores["base"][d])) for d in docs}


def prompt_cues(acts_dir: Path, seqs: dict[int, dict[str, Any]], tasks: list[str]) -> dict[tuple[str, int], int]:
    """(task, document id) → the row of its prompt's last token in the activation cache (plain task prompts)."""
    manifest = read_manifest(acts_dir)
    seq_ids = np.concatenate([np.load(acts_dir / s["tokens_file"], mmap_mode="r")[:, 0] for s in manifest["shards"]])
    wanted = {sid: (s["source"], int(s["doc_id"])) for sid, s in seqs.items()
              if s.get("kind") == "task" and s.get("source") in tasks}
    last: dict[tuple[str, int], int] = {}
    for row in np.flatnonzero(np.isin(seq_ids, np.fromiter(wanted, dtype=np.int64))):
        last[wanted[int(seq_ids[row])]] = int(row)
    return last


@torch.no_grad()
def category_change(model: Any, acts_dir: Path, rows: list[int], groups: list[np.ndarray]) -> np.ndarray:
    """a [n_rows, n_groups]: each latent group's decoded paired change at each row, relative to the activations."""
    x, scaled = scaled_pairs(model, acts_dir, rows)
    norm = pair_energy(scaled)
    f = model.encode(x)
    delta = model.W_dec[:, 1] - model.W_dec[:, 0]  # [L, d]
    out = torch.zeros(len(rows), len(groups))
    for g, idx in enumerate(groups):
        if len(idx):
            sel = torch.as_tensor(idx, dtype=torch.long)
            out[:, g] = ((f[:, sel] @ delta[sel]).pow(2).sum(-1) / norm).cpu()
    return out.numpy().astype(np.float64)


def document_attribution(run_path: Path, model: Any, seqs: dict[int, dict[str, Any]], task_category: dict[str, str],
                         members: dict[str, np.ndarray], alpha: float) -> list[dict[str, Any]]:
    """attribution.documents: per task (with a category that has latents), the flipped-vs-unchanged test."""
    acts_dir = run_path / files.ACTS_DIR
    tasks = [t for t, c in task_category.items() if c in members and len(members[c])]
    cues = prompt_cues(acts_dir, seqs, tasks)
    keys, out_of = [], {}
    for t in tasks:
        for d, o in outcomes(run_path, t).items():
            if (t, d) in cues:
                keys.append((t, d))
                out_of[(t, d)] = o
    if not keys:
        return []
    cats = sorted({task_category[t] for t in tasks})
    a = category_change(model, acts_dir, [cues[k] for k in keys], [members[c] for c in cats])
    task_of = np.array([t for t, _ in keys], dtype=object)
    outcome = np.array([out_of[k] for k in keys])
    rows = []
    for t in tasks:
        col = a[:, cats.index(task_category[t])]
        mine = task_of == t
        flipped, same = mine & (outcome != 0), mine & (outcome == 0)
        against = "task"
        if same.sum() < MIN_GROUP:
            same, against = (~mine) & (outcome == 0), "other tasks"
        row = {"task": t, "category": task_category[t], "n_up": int((mine & (outcome > 0)).sum()),
               "n_down": int((mine & (outcome < 0)).sum()), "n_same": int((mine & (outcome == 0)).sum()),
               "against": against, "effect": None, "p_value": None}
        if flipped.sum() >= 1 and same.sum() >= MIN_GROUP and col[same].mean() > 0:
            row["effect"] = float(col[flipped].mean() / col[same].mean() - 1)
            row["p_value"] = float(mannwhitneyu(col[flipped], col[same], alternative="greater").pvalue)
        rows.append(row)
    ps = np.array([np.nan if r["p_value"] is None else r["p_value"] for r in rows])
    for r, q in zip(rows, benjamini_hochberg(ps), strict=True):
        r["q_value"] = None if r["p_value"] is None else float(q)
        r["significant"] = r["p_value"] is not None and bool(q < alpha)
    return rows


@torch.no_grad()
def latent_documents(run_path: Path, model: Any, seqs: dict[int, dict[str, Any]], tasks: list[str],
                     top: int = 3) -> dict[str, list[dict[str, Any]]]:
    """Per live latent: the benchmark documents where its decoded paired change is largest.

    The change of latent j at a document's answer cue is f_j² ‖d_j^T − d_j^B‖² over the activations' energy
    (its term of a_{d,c} above, alone). {latent id: [{task, doc_id, outcome, change}, …]}, largest first;
    latents that change nowhere are left out.
    """
    acts_dir = run_path / files.ACTS_DIR
    cues = prompt_cues(acts_dir, seqs, tasks)
    if not cues:
        return {}
    keys = sorted(cues)
    outcome = {}
    for t in tasks:
        outcome.update({(t, d): o for d, o in outcomes(run_path, t).items()})
    x, scaled = scaled_pairs(model, acts_dir, [cues[k] for k in keys])
    f = model.encode(x).float()
    delta = (model.W_dec[:, 1] - model.W_dec[:, 0]).float().pow(2).sum(-1)  # [L]
    change = (f.pow(2) * delta[None, :] / pair_energy(scaled)[:, None]).cpu()  # [docs, L]
    k = min(top, len(keys))
    vals, idx = change.topk(k, dim=0)  # [k, L]
    out = {}
    for j in range(change.shape[1]):
        docs = [{"task": keys[i][0], "doc_id": keys[i][1], "outcome": outcome.get(keys[i]), "change": round(float(v), 6)}
                for v, i in zip(vals[:, j].tolist(), idx[:, j].tolist(), strict=True) if v > 0]
        if docs:
            out[str(j)] = docs
    return out
