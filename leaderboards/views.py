"""Views of a board: one row per entry, rendered as LEADERBOARD.md, index.html and a terminal table.

The documents are Jinja2 templates in `leaderboards/templates/`; this module only turns each
entry's report.json into a row of plain values. Every text that came from a model or a user
(model specs, task and category names) is escaped for the document it lands in.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
from markupsafe import Markup
from tabulate import tabulate

from diffeval.harness.core.fdr import benjamini_hochberg
from diffeval.harness.core.files import REPORT_HTML, REPORT_JSON, REPORT_MD
from diffeval.harness.core.io import atomic_write_text, read_json
from diffeval.leaderboards.board import (
    ENTRIES_DIR,
    ENTRY_JSON,
    INDEX_HTML,
    LEADERBOARD_MD,
    entry_dirs,
)
from diffeval.reports.build import format_shift
from diffeval.reports.escape import html_escape, md_escape, script_json
from diffeval.reports.schema import load_report

TEMPLATES = Path(__file__).parent / "templates"
TOP_SHIFTS = 3  # category shifts shown per pair, largest |shift| first
ALPHA = 0.05  # a shift whose Fisher p, BH-adjusted across the entry's categories, is below this gets '*'


def entry_rows(board: Path) -> list[dict[str, Any]]:
    """One row per published entry (validated on read), sorted by pair, then entry."""

    rows = []
    for entry_dir in entry_dirs(board):
        report = load_report(entry_dir / REPORT_JSON)
        meta = read_json(entry_dir / ENTRY_JSON) if (entry_dir / ENTRY_JSON).is_file() else {}
        rows.append(_row(entry_dir.name, report, meta, (entry_dir / REPORT_HTML).is_file()))
    return sorted(rows, key=lambda r: (r["base"], r["tuned"], r["reference"] or "", r["entry_id"]))


def _row(entry_id: str, report: dict[str, Any], meta: dict[str, Any], has_html: bool) -> dict[str, Any]:
    models = report["models"]
    defined = [c for c in report["categories"] if c["shift"] is not None]
    qs = benjamini_hochberg([np.nan if c["p_value"] is None else c["p_value"] for c in defined])
    shifts = [_shift(c, None if c["p_value"] is None else float(q)) for c, q in zip(defined, qs, strict=True)]
    shifts.sort(key=lambda s: (-abs(s["shift"]), s["category"]))
    attribution = report["attribution"]
    base, tuned = display_name(models["base"], "base"), display_name(models["tuned"], "tuned")
    reference = (models["reference"] or {}).get("spec")
    return {
        "entry_id": entry_id,
        "pair": "\n".join([base, tuned, reference or ""]),
        "base": base,
        "tuned": tuned,
        "reference": reference,
        "organism": models["base"].get("organism"),
        "config": report.get("run_config") or _config_of_old_report(report),
        "tasks": [t["task"] for t in report["tasks"]],
        "deltas": {t["task"]: t["delta"] for t in report["tasks"]},
        "task_rows": _task_rows(report["tasks"]),
        "headline": _headline_cells(report),
        "headline_measure": report.get("headline_measure"),
        "evidence": _evidence(report),
        "shifts": shifts,
        "top_shifts": shifts[:TOP_SHIFTS],
        "spearman": attribution["spearman"],
        "spearman_p": attribution["p_value"],
        "report": f"{ENTRIES_DIR}/{entry_id}/{REPORT_MD}",
        "report_html": f"{ENTRIES_DIR}/{entry_id}/{REPORT_HTML}" if has_html else None,
        "published": meta.get("published", ""),
        "version": meta.get("version", 1),
    }


def _config_of_old_report(report: dict[str, Any]) -> dict[str, Any]:
    """What a report from before run_config existed says about its run (its crosscoder section)."""
    cc = report["crosscoder"]
    return {"layer": cc["layer"], "seed": None, "bench_seed": None, "tokens": cc["tokens"],
            "n_latents": cc["n_latents"], "k": cc["k"], "n_steps": None}


def config_text(config: dict[str, Any]) -> str:
    """'layer 1 · seed 1234 · 16961 tokens · 768 latents, k 32 · 2000 steps': how two entries of one pair differ."""
    parts = [f"layer {config['layer']}" if config.get("layer") is not None else None,
             f"seed {config['seed']}" if config.get("seed") is not None else None,
             f"bench seed {config['bench_seed']}" if config.get("bench_seed") not in (None, config.get("seed")) else None,
             f"{config['tokens']} tokens" if config.get("tokens") is not None else None,
             f"{config['n_latents']} latents" + (f", k {config['k']}" if config.get("k") else "")
             if config.get("n_latents") is not None else None,
             f"{config['n_steps']} steps" if config.get("n_steps") is not None else None,
             f"crosscoder {Path(config['crosscoder']).name}" if config.get("crosscoder") else None]
    return " · ".join(p for p in parts if p) or "—"


def _task_rows(tasks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each task's delta with its CI and its p BH-adjusted across the entry's tasks."""
    with_p = [t for t in tasks if t["p_value"] is not None]
    q = dict(zip((t["task"] for t in with_p), benjamini_hochberg([t["p_value"] for t in with_p]), strict=True))
    return [{"task": t["task"], "delta": t["delta"], "ci_low": t["ci_low"], "ci_high": t["ci_high"],
             "q_value": None if t["task"] not in q else float(q[t["task"]]),
             "significant": t["task"] in q and bool(q[t["task"]] < ALPHA)} for t in tasks]


def _headline_cells(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per category, the headline measure: fold over the drift with its CI, BH q, changed, direction."""
    out = {}
    for c in report["categories"]:
        h = c.get("headline")
        if c["category"] == "unassigned" or not h or h.get("value") is None:
            continue
        out[c["category"]] = {"fold": h["value"] + 1, "ci_low": _plus_one(h.get("ci_low")),
                              "ci_high": _plus_one(h.get("ci_high")), "q_value": h.get("q_value"),
                              "significant": bool(h.get("significant")), "direction": h.get("direction")}
    return out


def _plus_one(x: float | None) -> float | None:
    return None if x is None else x + 1


def _evidence(report: dict[str, Any]) -> dict[str, Any]:
    """The attribution evidence: per-document tests significant, causal checks confirmed (control p < ALPHA)."""
    docs = [d for d in report["attribution"].get("documents") or [] if d.get("p_value") is not None]
    causal = [c for c in report["causal"] if c.get("delta_removed") is not None]
    return {"documents": sum(bool(d.get("significant")) for d in docs), "documents_n": len(docs),
            "causal": sum(c.get("control_p") is not None and c["control_p"] < ALPHA for c in causal),
            "causal_n": len(causal)}


def evidence_text(e: dict[str, Any]) -> str:
    docs = f"per-document {e['documents']}/{e['documents_n']}" if e["documents_n"] else "per-document —"
    causal = f"causal {e['causal']}/{e['causal_n']}" if e["causal_n"] else "causal not run"
    return f"{docs} · {causal}"


def groups(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Entries of one pair (other seeds, layers, crosscoder sizes) together, with how stable each category's
    headline verdict is across them: changed in k of n entries, and the range of its fold."""
    out: dict[str, dict[str, Any]] = {}
    for r in rows:
        g = out.setdefault(r["pair"], {"base": r["base"], "tuned": r["tuned"], "reference": r["reference"],
                                       "entries": []})
        g["entries"].append(r)
    for g in out.values():
        cats = sorted({c for r in g["entries"] for c in r["headline"]})
        g["stability"] = []
        for c in cats:
            cells = [r["headline"][c] for r in g["entries"] if c in r["headline"]]
            folds = [x["fold"] for x in cells]
            g["stability"].append({"category": c, "changed": sum(x["significant"] for x in cells), "n": len(cells),
                                   "fold_min": min(folds), "fold_max": max(folds),
                                   "directions": sorted({x["direction"] for x in cells if x["significant"] and x["direction"]})})
    return list(out.values())


SIGNS = {"+": "+", "-": "−"}  # directions as printed


def stability_text(s: dict[str, Any]) -> str:
    sign = f", direction {'/'.join(SIGNS[d] for d in s['directions'])}" if s["directions"] else ""
    return (f"{s['category']} changed in {s['changed']} of {s['n']} (fold {s['fold_min']:.1f}–{s['fold_max']:.1f}×"
            f"{sign})")


def delta_text(t: dict[str, Any]) -> str:
    """'ifeval +0.12 [+0.07, +0.17]*': a task's delta, its CI, '*' when BH-significant."""
    ci = "" if t["ci_low"] is None else f" [{t['ci_low']:+.2f}, {t['ci_high']:+.2f}]"
    return f"{t['task']} {t['delta']:+.2f}{ci}" + ("*" if t["significant"] else "")


def headline_text(name: str, h: dict[str, Any]) -> str:
    """'safety 4.8×+*': a changed category's fold over the drift, its direction, '*' when BH-significant."""
    return f"{name} {h['fold']:.1f}×" + (SIGNS.get(h["direction"], "") + "*" if h["significant"] else "")


def _shift(c: dict[str, Any], q: float | None) -> dict[str, Any]:
    """One category's share-ratio shift; `q` is its p BH-adjusted across the entry's categories."""
    p = c["p_value"]
    return {
        "category": c["category"], "shift": c["shift"], "p_value": p, "q_value": q,
        "significant": q is not None and q < ALPHA,
        "counts": f"{c['n_tuned']}/{c['N_tuned']} vs {c['n_base']}/{c['N_base']}",
    }


def fmt_pct(x: float | None) -> str:
    """The paper-compatible percentage, written as report.md writes it ('+151.7 %')."""

    return "—" if x is None else format_shift(x)


def fmt_num(x: float | None, digits: int = 2) -> str:
    return "—" if x is None else f"{x:+.{digits}f}"


def fmt_p(p: float | None, q: float | None = None) -> str:
    """'p=0.01*': the p-value, starred when its BH-adjusted q (the p itself when no q is given) is below ALPHA."""
    if p is None:
        return "p n/a"
    text = f"{p:.1e}" if p < 1e-3 else f"{p:.2g}"
    return f"p={text}" + ("*" if (p if q is None else q) < ALPHA else "")


def shift_text(s: dict[str, Any]) -> str:
    """'safety +32.8% (p=0.01*)': the category, the paper-compatible percentage, its significance (* = BH q < ALPHA)."""
    return f"{s['category']} {fmt_pct(s['shift'])} ({fmt_p(s['p_value'], s.get('q_value'))})"


def _environment(html: bool) -> Any:
    """Jinja2 environment: every printed value is escaped for the document unless it is Markup.

    Both documents use reports/escape.py (one escaping rule for reports and leaderboards):
    html_escape for index.html, md_escape (via the `md` filter) for LEADERBOARD.md.
    """

    def finalize(value: Any) -> Any:
        return value if isinstance(value, Markup) or not html else html_escape(value)

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        autoescape=False,  # done by `finalize`, with reports.escape's rules
        finalize=finalize,
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True, trim_blocks=True, lstrip_blocks=True,
    )
    env.filters.update(heat=heat_style, md=md_escape, pct=fmt_pct, num=fmt_num, p=fmt_p, shift=shift_text, sort_key=_sort_key,
                       stability=stability_text, config=config_text, delta=delta_text, evidence=evidence_text)
    return env


def heat_style(h: dict[str, Any] | None, top: float) -> Markup:
    """A heat-map cell's background: a changed category's hue by direction (green +, red −, blue unsigned), its
    strength by log fold; a category that did not change is pale grey."""
    if not h or h["fold"] <= 1:
        return Markup("")
    strength = min(1.0, math.log(h["fold"]) / math.log(max(top, 1.5)))
    if not h["significant"]:  # a fold that is not a change: grey, whatever its references say
        return Markup(f"background: rgba(120, 120, 120, {0.15 * strength:.2f})")
    rgb = {"+": "30, 140, 60", "-": "200, 40, 40"}.get(h["direction"], "50, 90, 200")
    alpha = 0.15 + 0.75 * strength
    return Markup(f"background: rgba({rgb}, {alpha:.2f})")


def _sort_key(x: Any) -> str:
    """The value a column sorts by in index.html (numbers as numbers, missing numbers last)."""
    return "" if x is None else str(x)


def render_views(board: Path) -> list[Path]:
    """Write LEADERBOARD.md and index.html from the board's entries; return their paths."""

    rows = entry_rows(board)
    grouped = groups(rows)
    categories = sorted({c for r in rows for c in r["headline"]})
    tasks = sorted({t for r in rows for t in r["tasks"]})
    md = _environment(html=False).get_template("LEADERBOARD.md.j2").render(
        rows=rows, groups=grouped, alpha=ALPHA, table=_md_table(rows))
    page = _environment(html=True).get_template("index.html.j2").render(
        rows=rows, groups=grouped, alpha=ALPHA, data=Markup(script_json(json.dumps(rows, ensure_ascii=False))), categories=categories, tasks=tasks,
        bases=sorted({r["base"] for r in rows}),
    )
    return [atomic_write_text(board / LEADERBOARD_MD, md), atomic_write_text(board / INDEX_HTML, page)]


HEADERS = ["entry", "base → tuned", "configuration", "task deltas (95% CI)", "changed categories", "evidence",
           "Spearman", "report"]


def table_cells(r: dict[str, Any]) -> list[str]:
    """One entry's cells, as LEADERBOARD.md and `leaderboard show` print them (plain text, not yet escaped)."""
    pair = f"{r['base']} → {r['tuned']}" + (f" (reference {r['reference']})" if r["reference"] else "")
    changed = [headline_text(c, h) for c, h in sorted(r["headline"].items()) if h["significant"]]
    measured = "none changed" if r["headline"] else "—"
    return [r["entry_id"], pair, config_text(r["config"]), "\n".join(delta_text(t) for t in r["task_rows"]) or "—",
            "\n".join(changed) or measured, evidence_text(r["evidence"]),
            fmt_num(r["spearman"]) + (f" ({fmt_p(r['spearman_p'])})" if r["spearman"] is not None else ""),
            r["report_html"] or r["report"]]


def _md_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    for r in rows:
        *text, link = table_cells(r)
        cells = ["<br>".join(md_escape(x) for x in c.split("\n")) for c in text] + [f"[{Path(link).name}]({link})"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def show_table(board: Path) -> str:
    """The board as a terminal table: the same columns as LEADERBOARD.md, then each pair's stability."""

    rows = entry_rows(board)
    if not rows:
        return f"no entries in {board}"
    table = tabulate([[_plain(c) for c in table_cells(r)] for r in rows], headers=HEADERS, tablefmt="simple_grid")
    notes = [f"{_plain(g['base'])} → {_plain(g['tuned'])}: {len(g['entries'])} entries; "
             + "; ".join(_plain(stability_text(s)) for s in g["stability"])
             for g in groups(rows) if len(g["entries"]) > 1]
    legend = (f"* = BH-adjusted q < {ALPHA} (task deltas across the entry's tasks; categories: the headline measure "
              "across categories); × = cue shift over drift; + / − = direction from reference answers")
    return table + "\n" + legend + ("\n\nPairs with several entries:\n" + "\n".join(notes) if notes else "")


def _plain(text: str) -> str:
    """Drop control characters (a model name with an escape sequence must not drive the terminal)."""
    return "".join(ch for ch in text if ch == "\n" or (ch.isprintable()))


def display_name(model: dict[str, Any], role: str) -> str:
    """The spec, or `organism:<name>/<role>` for an organism (whose spec is a local cache path)."""
    organism = model.get("organism")
    return f"organism:{organism}/{role}" if organism else model["spec"]
