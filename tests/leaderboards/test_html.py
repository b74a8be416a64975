"""index.html opened in headless Chromium (Debian's `chromium`): the DOM shows the published pairs.

The screenshot is saved to $TMPDIR/diffeval-artifacts/leaderboard.png (the path is printed).
`.ci/run` installs chromium when it is missing; the test skips only outside CI (CI=true makes a missing chromium a failure).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from PIL import Image

from diffeval.leaderboards import publish
from tests.browser import ARTIFACTS, Tables, chromium, needs_chromium

pytestmark = needs_chromium
ARTIFACT = ARTIFACTS / "leaderboard.png"


@pytest.fixture
def board(tmp_path, make_run) -> Path:
    board = tmp_path / "board"
    publish(make_run("a", base="org/base-7b", tuned="org/base-7b-simpo", spearman=0.8), board)
    publish(make_run("a-seed1", base="org/base-7b", tuned="org/base-7b-simpo", spearman=0.7,
                     config={"layer": 1, "seed": 1, "bench_seed": 0, "tokens": 1000, "n_latents": 64, "k": 4,
                             "n_steps": 100}), board)
    publish(make_run("b", base="org/base-7b", tuned="org/base-7b-dpo", spearman=0.3,
                     headline={"safety": (5.0, 0.01, "-")}, tasks={"ifeval_lite": 0.05, "code_lite": 0.2}), board)
    publish(make_run("c", base="a-toy/base", tuned="a-toy/tuned", reference="a-toy/ref",
                     spearman=None, headline={"hallucination management": (12.0, 0.001, None)}), board)
    return board


def test_index_html_in_chromium_shows_published_pairs(tmp_path, board):
    url = (board / "index.html").as_uri()
    dom = chromium("--dump-dom", url, profile=tmp_path / "profile").stdout
    tables = Tables()
    tables.feed(dom)

    header, *rows = tables.tables["pairs"]
    assert header[1][:5] == ["entry", "base", "tuned", "reference", "task deltas (95% CI)"]
    assert header[1][5:8] == ["hallucination management", "instruction following", "safety"]  # the heat map
    groups = [cells[0] for entry, cells in rows if entry is None]
    assert groups[0].startswith("a-toy/base → a-toy/tuned (reference a-toy/ref) — 1 entry")
    assert groups[1].startswith("org/base-7b → org/base-7b-dpo — 1 entry")
    # two entries of one pair, grouped, told apart by their configuration, with the pair's stability
    assert "2 entries; instruction following changed in 2 of 2 (fold 8.0–8.0×, direction +)" in groups[2]
    entries = [(entry, cells) for entry, cells in rows if entry is not None]
    simpo = [cells for _, cells in entries if cells[2] == "org/base-7b-simpo"]
    assert len(simpo) == 2 and simpo[0][0] != simpo[1][0]
    configs = sorted(c[0].split("layer", 1)[1] for c in simpo)  # the entry id, then its configuration
    assert configs == [" 1 · seed 0 · 1000 tokens · 64 latents, k 4 · 100 steps",
                       " 1 · seed 1 · bench seed 0 · 1000 tokens · 64 latents, k 4 · 100 steps"]
    dpo = next(cells for _, cells in entries if cells[2] == "org/base-7b-dpo")
    assert dpo[4] == "ifeval_lite +0.05 [+0.00, +0.10]*code_lite +0.20 [+0.15, +0.25]*"
    assert dpo[5:8] == ["—", "—", "5.0×−*"]
    toy = next(cells for _, cells in entries if cells[2] == "a-toy/tuned")
    assert toy[5] == "12.0×*" and toy[-2] == "—"
    assert all(cells[-1] == "report.md" for _, cells in entries)  # these runs have no report.html

    # the filters, set from the address: one base, one task, one category
    dom = chromium("--dump-dom", url + "#base=org/base-7b&task=code_lite&category=safety", profile=tmp_path / "profile").stdout
    shown = re.findall(r'<tr data-entry="([^"]+)" data-base="([^"]+)"', dom)
    hidden = set(re.findall(r'<tr data-entry="([^"]+)"[^>]* hidden', dom))
    visible = [e for e, _ in shown if e not in hidden]
    assert len(visible) == 1 and "dpo" in visible[0]
    assert re.findall(r'<th class="heat" data-category="([^"]+)"(?! hidden)>', dom) == ["safety"]

    # the per-base view, built by the page's script: the base named in the address with its tuned models side by side
    dom = chromium("--dump-dom", url + "#base=org/base-7b", profile=tmp_path / "profile").stdout
    tables = Tables()
    tables.feed(dom)
    view = dict((cells[0], cells[1:]) for _, cells in tables.tables["base-view"])
    tuned = view["tuned model →"]
    assert [t.split("org-")[0] for t in tuned] == ["org/base-7b-dpo", "org/base-7b-simpo", "org/base-7b-simpo"]
    assert view["safety"] == ["5.0×−*", "1.3×", "1.3×"]
    assert view["code_lite"] == ["+0.20*", "—", "—"]

    ARTIFACT.parent.mkdir(parents=True, exist_ok=True)
    chromium("--hide-scrollbars", "--window-size=1400,900", f"--screenshot={ARTIFACT}",
             (board / "index.html").as_uri(), profile=tmp_path / "profile")

    with Image.open(ARTIFACT) as img:
        assert img.size == (1400, 900)
        assert len(img.convert("L").getcolors(maxcolors=1 << 16) or range(1 << 16)) > 10  # not a blank page
    print(f"screenshot: {ARTIFACT}")
