"""Render report.md (Jinja2 template), report.json (validated) and figures/*.png from a run directory.

The template escapes every string it prints unless a formatting filter produced it: model names,
task names and model-generated contexts are untrusted text (see reports/escape.py). Re-rendering
needs no model and no GPU: everything comes from the run directory's files.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import jinja2

from diffeval.harness.core.files import FIGURES_DIR, LATENTS, REPORT_HTML, REPORT_JSON, REPORT_MD
from diffeval.harness.core.io import atomic_write_text
from diffeval.reports import figures
from diffeval.reports.build import build_report, format_shift, read_jsonl
from diffeval.reports.escape import md_code, md_context, md_escape
from diffeval.reports.figures import render_figures
from diffeval.reports.formats import number, p_value
from diffeval.reports.html import render_html
from diffeval.reports.schema import write_report_json

log = logging.getLogger(__name__)

TEMPLATE = "report.md.j2"
TEMPLATES_DIR = Path(__file__).parent / "templates"


class Safe(str):
    """Text already formatted for markdown; the template's finalizer leaves it as is."""


def _finalize(value: Any) -> Any:
    if value is None:
        return "—"
    if isinstance(value, Safe) or not isinstance(value, str):
        return value
    return md_escape(value)


def _num(x: Any, spec: str = ".3f") -> Safe:
    return Safe(number(x, spec))


def _ci(lo: Any, hi: Any, spec: str = "+.3f") -> Safe:
    return Safe("—" if lo is None or hi is None else f"[{format(lo, spec)}, {format(hi, spec)}]")


def _pct_ci(lo: Any, hi: Any) -> Safe:
    return Safe("—" if lo is None or hi is None else f"[{lo * 100:+.1f} %, {hi * 100:+.1f} %]")


def _p(p: Any) -> Safe:
    return Safe(p_value(p))


def _context(ctx: dict[str, Any]) -> Safe:
    """A top context as markdown: decoded pieces with the activating token marked (older runs: raw text)."""
    if ctx.get("pieces") is not None:
        at = ctx.get("at")
        return Safe(md_context(ctx["pieces"], at if isinstance(at, int) else -1))
    return Safe(f"{md_code(ctx.get('context') or '')} → {md_code(ctx.get('token') or '')}")


def context_act(ctx: dict[str, Any]) -> float | None:
    """The latent's activation at a context's activating token."""
    acts, at = ctx.get("acts"), ctx.get("at")
    return acts[at] if acts and at is not None and 0 <= at < len(acts) else None


def _writes(act: float | None, norms: list[float] | None) -> Safe:
    if act is None or not norms:
        return Safe("—")
    return Safe(" / ".join(f"{act * n:.2f}" for n in norms))


def template_env() -> Any:
    """The Jinja2 environment with the report's filters (`md`, `code`, `num`, `ci`, `pct`, `pct_ci`, `p`,
    `context`, `act`, `writes`)."""

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES_DIR), finalize=_finalize,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
                             keep_trailing_newline=True)
    env.filters.update({
        "md": lambda s: Safe(md_escape(s)), "code": lambda s: Safe("—" if s is None else md_code(s)),
        "num": _num, "ci": _ci, "pct": lambda s: Safe(format_shift(s)), "pct_ci": _pct_ci, "p": _p,
        "context": _context, "act": context_act, "writes": _writes,
    })
    return env


def render_markdown(report: dict[str, Any], figures: dict[str, Path], out: Path) -> str:
    """report.md's text for a built report; figure links are relative to `out`."""
    links = {name: Safe(path.relative_to(out).as_posix()) for name, path in figures.items()}  # our own names
    return template_env().get_template(TEMPLATE).render(r=report, figures=links)


def render_report(run_dir: str | Path, out: str | Path | None = None) -> list[Path]:
    """Write report.json, figures/*.png, report.md and report.html for `run_dir` into `out` (default: the run directory)."""
    run = Path(run_dir)
    report = build_report(run)
    out = Path(out) if out is not None else run
    out.mkdir(parents=True, exist_ok=True)
    json_path = write_report_json(out / REPORT_JSON, report)
    _remove_stale_figures(out)
    figures = render_figures(report, read_jsonl(run, LATENTS), out)
    md_path = atomic_write_text(out / REPORT_MD, render_markdown(report, figures, out))
    html_path = atomic_write_text(out / REPORT_HTML, render_html(run, report, figures))
    return [md_path, html_path, json_path, *figures.values()]


def report_main(run_dir: str | Path) -> list[Path]:
    """Entry point of `diffeval report RUN_DIR`: re-render the report in place; returns the files written."""
    paths = render_report(run_dir)
    log.info("report written: %s", ", ".join(str(p) for p in paths))
    return paths


def _remove_stale_figures(out: Path) -> None:
    """A figure whose data has since vanished must not outlive it and contradict the report."""

    for name in figures.ALL_FIGURES:
        (out / FIGURES_DIR / name).unlink(missing_ok=True)
