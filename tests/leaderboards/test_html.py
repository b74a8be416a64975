"""index.html opened in headless Chromium (Debian's `chromium`): the DOM shows the published pairs.

The screenshot is saved to $TMPDIR/diffeval-artifacts/leaderboard.png (the path is printed).
`.ci/run` installs chromium when it is missing; the test skips only outside CI (CI=true makes a missing chromium a failure).
"""

from __future__ import annotations

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
    publish(make_run("b", base="org/base-7b", tuned="org/base-7b-dpo", spearman=0.3,
                     shifts={"safety": (0.6, 0.01)}, tasks={"ifeval_lite": 0.05, "code_lite": 0.2}), board)
    publish(make_run("c", base="a-toy/base", tuned="a-toy/tuned", reference="a-toy/ref",
                     spearman=None, shifts={"hallucination management": (-0.685, 0.03)}), board)
    return board


def test_index_html_in_chromium_shows_published_pairs(tmp_path, board):
    url = (board / "index.html").as_uri() + "#sort=spearman&dir=desc&base=org/base-7b"
    dom = chromium("--dump-dom", url, profile=tmp_path / "profile").stdout
    tables = Tables()
    tables.feed(dom)

    header, *rows = tables.tables["pairs"]
    assert header[1][:3] == ["base", "tuned", "reference"]
    # the JS sorted the rows by Spearman, highest first, the pair without one last
    assert [r[1][1] for r in rows] == ["org/base-7b-simpo", "org/base-7b-dpo", "a-toy/tuned"]
    assert [r[1][2] for r in rows] == ["—", "—", "a-toy/ref"]
    assert rows[0][1][5].startswith("+0.80") and rows[2][1][5] == "—"
    assert "instruction following +151.7 %" in rows[0][1][4]
    assert "hallucination management -68.5 % (p=0.03*" in rows[2][1][4]
    assert all(r[0] and r[1][6] == "report.md" for r in rows)

    # the per-base view, built by the page's script: the base named in the address (not the first one,
    # a-toy/base) with its two tuned models side by side
    view = dict((cells[0], cells[1:]) for _, cells in tables.tables["base-view"])
    assert [c.removesuffix("report.md").strip() for c in view["tuned model →"]] == ["org/base-7b-dpo", "org/base-7b-simpo"]
    assert view["Spearman"] == ["+0.30", "+0.80"]
    assert view["safety"] == ["+60.0 % (p=0.01*)", "+32.8 % (p=0.2)"]
    assert view["code_lite"] == ["+0.20", "—"]

    ARTIFACT.parent.mkdir(parents=True, exist_ok=True)
    chromium("--hide-scrollbars", "--window-size=1400,900", f"--screenshot={ARTIFACT}",
             (board / "index.html").as_uri(), profile=tmp_path / "profile")

    with Image.open(ARTIFACT) as img:
        assert img.size == (1400, 900)
        assert len(img.convert("L").getcolors(maxcolors=1 << 16) or range(1 << 16)) > 10  # not a blank page
    print(f"screenshot: {ARTIFACT}")
