"""Render an example board from hand-built reports and screenshot index.html with headless Chromium.

    python -m tests.leaderboards.screenshot docs/leaderboard.png

The reports are fixtures (tests/leaderboards/conftest.py), not measured results: the picture shows
the page's layout, and its model names say they are examples.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from diffeval.leaderboards import publish
from tests.leaderboards.conftest import write_run

EXAMPLES = [
    dict(base="example/base-7b", tuned="example/base-7b-simpo", spearman=0.8,
         shifts={"instruction following": (19, 120, 6, 96, 0.004), "safety": (11, 120, 7, 96, 0.48),
                 "self-reference": (4, 120, 6, 96, 0.33), "code": (9, 120, 8, 96, 1.0)}),
    dict(base="example/base-7b", tuned="example/base-7b-dpo", spearman=0.3,
         shifts={"safety": (16, 90, 8, 110, 0.012), "code": (5, 90, 8, 110, 0.78), "multilingual": (6, 90, 6, 110, 0.77)},
         tasks={"ifeval_lite": 0.05, "code_lite": -0.02}),
    dict(base="example/small-1b", tuned="example/small-1b-refusals", reference="example/small-1b-sft", spearman=None,
         shifts={"hallucination management": (2, 40, 9, 45, 0.031), "safety": (12, 40, 4, 45, 0.018)}),
]


def main(out: str) -> None:
    chromium = shutil.which("chromium")
    if chromium is None:
        sys.exit("chromium is not installed (apt-get install chromium)")
    with tempfile.TemporaryDirectory() as tmp:
        board = Path(tmp) / "board"
        for i, example in enumerate(EXAMPLES):
            publish(write_run(Path(tmp) / f"run{i}", **example), board)
        subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                        f"--user-data-dir={Path(tmp) / 'profile'}", "--window-size=1400,860",
                        f"--screenshot={Path(out).resolve()}", (board / "index.html").as_uri()],
                       check=True, capture_output=True, timeout=120)
    print(f"wrote {out}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "docs/leaderboard.png")
