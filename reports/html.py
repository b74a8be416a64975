"""report.html: the report and a latent browser in one self-contained page (no network, works from file://).

The page is a Jinja2 template with HTML autoescaping: every model name, task name and model-written
context is escaped where it lands. The latent browser's data (every live latent with its statistics,
decoded top contexts and per-token activations, and the benchmark documents where it changed most)
travels inside the page as JSON that the page's script reads and writes into the DOM as text only.
Figures are embedded as data: URIs.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import jinja2

from diffeval.harness.core import files
from diffeval.reports.build import read_jsonl
from diffeval.reports.escape import script_json
from diffeval.reports.formats import finite, number, p_value

TEMPLATE = "report.html.j2"
TEMPLATES_DIR = Path(__file__).parent / "templates"
LATENT_KEYS = ("latent", "category", "categories", "class", "delta_norm", "cosine", "nu_eps", "nu_r", "freq",
               "enrichment", "changed", "decoder_norms")


def browser_data(run: Path) -> dict[str, Any]:
    """The latent browser's data: live latents, their contexts, and the documents they link to."""
    latents = read_jsonl(run, files.LATENTS) or []
    attribution = json.loads((run / files.ATTRIBUTION).read_text()) if (run / files.ATTRIBUTION).is_file() else {}
    by_latent = attribution.get("latent_documents") or {}
    rows = []
    for r in latents:
        if r.get("class") == "dead":
            continue
        row = {k: _json_safe(r.get(k)) for k in LATENT_KEYS}
        row["contexts"] = [{k: c.get(k) for k in ("pieces", "at", "acts", "count", "source", "task", "doc_id")}
                           for c in r.get("top_contexts") or [] if c.get("pieces") is not None]
        row["documents"] = by_latent.get(str(r["latent"])) or []
        rows.append(row)
    wanted = {(d["task"], d["doc_id"]): d.get("outcome") for r in rows for d in r["documents"]}
    return {"latents": rows, "documents": documents(run, wanted)}


def documents(run: Path, wanted: dict[tuple[str, int], int | None]) -> list[dict[str, Any]]:
    """Each linked benchmark document: its prompt as both models read it, and its outcome (as the attribution
    stage recorded it: +1 the tuned model scores higher, −1 lower, 0 the same)."""
    seqs = run / files.ACTS_DIR / files.SEQUENCES
    if not wanted or not seqs.is_file():
        return []
    prompts = {}
    for line in seqs.read_text(encoding="utf-8").splitlines():
        s = json.loads(line)
        key = (s.get("source"), s.get("doc_id"))
        if s.get("kind") == "task" and key in wanted:
            prompts[key] = s.get("text")
    return [{"task": t, "doc_id": d, "prompt": prompts.get((t, d)), "outcome": wanted[(t, d)]}
            for t, d in sorted(wanted)]


def render_html(run: Path, report: dict[str, Any], figures: dict[str, Path]) -> str:
    """report.html's text."""
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES_DIR), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters.update({"num": number, "p": p_value})
    images = {name: "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()
              for name, path in figures.items()}
    data = json.dumps(browser_data(run), allow_nan=False, separators=(",", ":"))
    return env.get_template(TEMPLATE).render(r=report, images=images, data=script_json(data))




def _json_safe(x: Any) -> Any:
    """A latent's field for the page's JSON: NaN and ±inf become null, anything else stays as it is."""
    return finite(x) if isinstance(x, float) else x
