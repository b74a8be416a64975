"""Views of a board: one row per entry, rendered as LEADERBOARD.md, index.html and a terminal table.

The documents are Jinja2 templates in `leaderboards/templates/`; this module only turns each
entry's report.json into a row of plain values. Every text that came from a model or a user
(model specs, task and category names) is escaped for the document it lands in.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
from markupsafe import Markup
from tabulate import tabulate

from diffeval.harness.core.fdr import benjamini_hochberg
from diffeval.harness.core.files import REPORT_JSON, REPORT_MD
from diffeval.harness.core.io import atomic_write_text, read_json
from diffeval.leaderboards.board import (
    ENTRIES_DIR,
    ENTRY_JSON,
    INDEX_HTML,
    LEADERBOARD_MD,
    entry_dirs,
)
from diffeval.reports.build import format_shift
from diffeval.reports.escape import html_escape, md_escape
from diffeval.reports.schema import load_report

TEMPLATES = Path(__file__).parent / "templates"
TOP_SHIFTS = 3  # category shifts shown per pair, largest |shift| first
ALPHA = 0.05  # a shift whose Fisher p, BH-adjusted across the entry's categories, is below this gets '*'


def entry_rows(board: Path) -> list[dict[str, Any]]:
    """One row per published entry (validated on read), sorted by base, then tuned model."""

    rows = []
    for entry_dir in entry_dirs(board):
        report = load_report(entry_dir / REPORT_JSON)
        meta = read_json(entry_dir / ENTRY_JSON) if (entry_dir / ENTRY_JSON).is_file() else {}
        rows.append(_row(entry_dir.name, report, meta))
    return sorted(rows, key=lambda r: (r["base"], r["tuned"], r["reference"] or "", r["entry_id"]))


def _row(entry_id: str, report: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
    models = report["models"]
    defined = [c for c in report["categories"] if c["shift"] is not None]
    qs = benjamini_hochberg([np.nan if c["p_value"] is None else c["p_value"] for c in defined])
    shifts = [_shift(c, None if c["p_value"] is None else float(q)) for c, q in zip(defined, qs, strict=True)]
    shifts.sort(key=lambda s: (-abs(s["shift"]), s["category"]))
    attribution = report["attribution"]
    return {
        "entry_id": entry_id,
        "base": display_name(models["base"], "base"),
        "tuned": display_name(models["tuned"], "tuned"),
        "reference": (models["reference"] or {}).get("spec"),
        "organism": models["base"].get("organism"),
        "tasks": [t["task"] for t in report["tasks"]],
        "deltas": {t["task"]: t["delta"] for t in report["tasks"]},
        "shifts": shifts,
        "top_shifts": shifts[:TOP_SHIFTS],
        "spearman": attribution["spearman"],
        "spearman_p": attribution["p_value"],
        "report": f"{ENTRIES_DIR}/{entry_id}/{REPORT_MD}",
        "published": meta.get("published", ""),
        "version": meta.get("version", 1),
    }


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
        keep_trailing_newline=True,
    )
    env.filters.update(md=md_escape, pct=fmt_pct, num=fmt_num, p=fmt_p, shift=shift_text, sort_key=_sort_key)
    return env


def _sort_key(x: Any) -> str:
    """The value a column sorts by in index.html (numbers as numbers, missing numbers last)."""
    return "" if x is None else str(x)


def _script_json(obj: Any) -> str:
    """JSON that cannot close the <script> element holding it (model names may contain '</script>')."""
    text = json.dumps(obj, ensure_ascii=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def render_views(board: Path) -> list[Path]:
    """Write LEADERBOARD.md and index.html from the board's entries; return their paths."""

    rows = entry_rows(board)
    md = _environment(html=False).get_template("LEADERBOARD.md.j2").render(rows=rows, alpha=ALPHA, top=TOP_SHIFTS)
    page = _environment(html=True).get_template("index.html.j2").render(
        rows=rows, alpha=ALPHA, top=TOP_SHIFTS, data=Markup(_script_json(rows)),
        bases=sorted({r["base"] for r in rows}),
    )
    return [atomic_write_text(board / LEADERBOARD_MD, md), atomic_write_text(board / INDEX_HTML, page)]


def show_table(board: Path) -> str:
    """The board as a terminal table."""

    rows = entry_rows(board)
    if not rows:
        return f"no entries in {board}"
    table = [
        [_plain(r["base"]), _plain(r["tuned"]), _plain(r["reference"] or "—"), _plain(", ".join(r["tasks"])),
         _plain("\n".join(shift_text(s) for s in r["top_shifts"]) or "—"),
         fmt_num(r["spearman"]) + (f" ({fmt_p(r['spearman_p'])})" if r["spearman"] is not None else ""),
         r["entry_id"]]
        for r in rows
    ]
    headers = ["base", "tuned", "reference", "tasks", "top category shifts", "Spearman", "entry"]
    return tabulate(table, headers=headers, tablefmt="simple_grid")


def _plain(text: str) -> str:
    """Drop control characters (a model name with an escape sequence must not drive the terminal)."""
    return "".join(ch for ch in text if ch == "\n" or (ch.isprintable()))


def display_name(model: dict[str, Any], role: str) -> str:
    """The spec, or `organism:<name>/<role>` for an organism (whose spec is a local cache path)."""
    organism = model.get("organism")
    return f"organism:{organism}/{role}" if organism else model["spec"]
