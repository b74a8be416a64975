"""report.html of a real (tiny) run, opened in headless Chromium: the answer, the tables and the latent browser.

The screenshot is saved to $TMPDIR/diffeval-artifacts/report.png (the path is printed).
"""

from __future__ import annotations

import json
import re

import pytest
from PIL import Image

from diffeval.harness.stages.latents import read_latents
from diffeval.reports.schema import load_report
from tests.browser import Tables, chromium, needs_chromium, screenshot

pytestmark = [needs_chromium, pytest.mark.slow]


def test_report_html_in_chromium(tiny_run, tmp_path):
    report = load_report(tiny_run / "report.json")
    live = [r for r in read_latents(tiny_run / "latents.jsonl") if r["class"] != "dead"]
    pick = max((r for r in live if r["top_contexts"]), key=lambda r: r["top_acts"][0])
    page = tiny_run / "report.html"
    dom = chromium("--dump-dom", page.as_uri() + f"#latent-{pick['latent']}", profile=tmp_path / "profile").stdout
    tables = Tables()
    tables.feed(dom)

    assert [cells[0] for _, cells in tables.tables["tasks"][1:]] == [t["task"] for t in report["tasks"]]
    measured = [c["category"] for c in report["categories"] if c.get("headline")]
    assert [cells[0] for _, cells in tables.tables["categories"][1:]] == measured
    # the script listed every live latent, and the address opened the chosen one with its contexts
    latents = tables.tables["latents"][1:]
    assert len(latents) == len(live)
    assert {int(cells[0]) for _, cells in latents} == {r["latent"] for r in live}
    detail = dom.split('id="latent-detail"')[1].split('id="documents"')[0]
    assert f"latent {pick['latent']} — {pick['category']}" in detail
    lines = re.findall(r'<div class="ctx"><span class="who">(base|tuned)</span>(.*?)</div>', detail)
    assert [who for who, _ in lines] == ["base", "tuned"] * len(pick["top_contexts"])
    first = "".join(re.findall(r'<span class="tok[^"]*"[^>]*>(.*?)</span>', lines[0][1]))
    assert first == "".join(pick["top_contexts"][0]["pieces"]).replace("\n", "⏎").replace("&", "&amp;").replace(
        "<", "&lt;").replace(">", "&gt;")
    assert detail.count('class="tok at"') == 2 * len(pick["top_contexts"])  # the activating token, in both rows
    # the filter narrows the list to one category (the page reads it from the address)
    cat = pick["category"]
    dom = chromium("--dump-dom", page.as_uri() + f"#category={cat}", profile=tmp_path / "profile").stdout
    tables = Tables()
    tables.feed(dom)
    shown = {int(cells[0]) for _, cells in tables.tables["latents"][1:]}
    assert shown == {r["latent"] for r in live if r["category"] == cat or cat in (r.get("categories") or [])}

    shot = screenshot(page.as_uri() + f"#latent-{pick['latent']}", "report.png", tmp_path / "profile", (1400, 1800))
    with Image.open(shot) as img:
        assert img.size == (1400, 1800)
        assert len(img.convert("L").getcolors(maxcolors=1 << 16) or range(1 << 16)) > 10  # not a blank page


def test_report_html_is_self_contained(tiny_run):
    page = (tiny_run / "report.html").read_text()
    assert not re.search(r'(src|href)="(https?:)?//', page)  # nothing is fetched: it works from file:// and offline
    data = json.loads(page.split('<script id="browser-data" type="application/json">')[1].split("</script>")[0])
    assert data["latents"] and all("contexts" in r and "documents" in r for r in data["latents"])
