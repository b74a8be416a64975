"""Headless Chromium (Debian's `chromium`) for page tests: the DOM after the page's script ran, and screenshots.

`.ci/run` installs chromium when it is missing; tests using it skip only outside CI (CI=true makes a missing
chromium a failure). Screenshots go to $TMPDIR/diffeval-artifacts/ (CI artefacts).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from html.parser import HTMLParser
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# in CI (.ci/run installs chromium) a missing browser is a failure, not a silent skip
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None and os.environ.get("CI") != "true",
    reason="Debian's chromium is not installed (apt-get install chromium; .ci/run installs it)",
)
ARTIFACTS = Path(tempfile.gettempdir()) / "diffeval-artifacts"


class Tables(HTMLParser):
    """Collect, per table id, its rows as lists of cell texts (and each row's data-entry)."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[tuple[str | None, list[str]]]] = {}
        self._table: str | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "table":
            self._table = a.get("id") or ""
            self.tables[self._table] = []
        elif tag == "tr" and self._table is not None:
            self.tables[self._table].append((a.get("data-entry"), []))
        elif tag in ("td", "th") and self._table is not None:
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None and self._table is not None:
            self.tables[self._table][-1][1].append(" ".join("".join(self._cell).split()))
            self._cell = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def chromium(*args: str, profile: Path) -> subprocess.CompletedProcess[str]:
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={profile}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True)




def screenshot(url: str, name: str, profile: Path, size: tuple[int, int] = (1400, 900)) -> Path:
    """A PNG of the page at `url` in ARTIFACTS/`name`; its path is printed."""
    path = ARTIFACTS / name
    path.parent.mkdir(parents=True, exist_ok=True)
    chromium("--hide-scrollbars", f"--window-size={size[0]},{size[1]}", f"--screenshot={path}", url, profile=profile)
    print(f"screenshot: {path}")
    return path
