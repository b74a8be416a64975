"""Publishing a run's report into a board directory: validate first, then swap the entry in under the lock.

Everything a publish will write is read and validated before the board is touched, so a rejected
report leaves the board byte-identical. The new entry is assembled in a staging folder inside the
board and renamed into place (one atomic rename); the entry it replaces is renamed into history.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from diffeval.harness.core.files import FIGURES_DIR, REPORT_HTML, REPORT_JSON, REPORT_MD
from diffeval.harness.core.io import atomic_write_json, atomic_write_text
from diffeval.leaderboards.board import (
    ENTRIES_DIR,
    ENTRY_JSON,
    GITIGNORE,
    HISTORY_DIR,
    LOCK_FILE,
    STAGING_DIR,
    BoardError,
    board_lock,
    check_board_dir,
    check_entry_id,
    entry_id_for,
    read_board,
    safe_child,
    write_board,
)
from diffeval.leaderboards.views import display_name, render_views
from diffeval.reports.schema import load_report

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Submission:
    """A validated report and the files that go with it, held in memory until they are written."""

    entry_id: str
    report: dict[str, Any]
    report_md: str
    figures: dict[str, bytes]  # file name -> PNG bytes
    report_html: str | None  # the self-contained report.html, when the run has one
    source: str  # the run folder's name (not its path: a public board should not show the publisher's disk)

    def summary(self) -> dict[str, Any]:
        models = self.report["models"]
        return {
            "base": models["base"]["spec"],
            "tuned": models["tuned"]["spec"],
            "reference": (models["reference"] or {}).get("spec"),
            "tasks": [t["task"] for t in self.report["tasks"]],
        }


def read_submission(run_dir: str | Path, entry_id: str | None = None) -> Submission:
    """Read and validate `<run_dir>/report.json`, `report.md` and `figures/*.png`; touch nothing."""

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise BoardError(f"run directory {run_dir} does not exist; give a run folder holding {REPORT_JSON}")
    report = load_report(run_dir / REPORT_JSON)
    md_path = run_dir / REPORT_MD
    if not md_path.is_file():
        raise BoardError(f"{md_path} does not exist; render the report first with `diffeval report {run_dir}`")
    figures: dict[str, bytes] = {}
    fig_dir = run_dir / FIGURES_DIR
    if fig_dir.is_dir() and not fig_dir.is_symlink():
        for path in sorted(fig_dir.iterdir()):
            if path.suffix.lower() != ".png":
                continue
            if path.is_symlink() or not path.is_file():
                raise BoardError(f"figure {path} is not a regular file (a link could publish a file from outside the run)")
            figures[path.name] = path.read_bytes()
    models = report["models"]
    derived = entry_id_for(
        models["base"]["spec"],
        models["tuned"]["spec"],
        (models["reference"] or {}).get("spec"),
        [t["task"] for t in report["tasks"]],
        report.get("run_config"),
        (display_name(models["base"], "base"), display_name(models["tuned"], "tuned")),  # an organism by its name
    )
    html_path = run_dir / REPORT_HTML
    if html_path.is_symlink():
        raise BoardError(f"{html_path} is a symbolic link (a link could publish a file from outside the run)")
    return Submission(
        entry_id=check_entry_id(entry_id) if entry_id is not None else derived,
        report=report,
        report_md=md_path.read_text(encoding="utf-8"),
        figures=figures,
        report_html=html_path.read_text(encoding="utf-8") if html_path.is_file() else None,
        source=run_dir.resolve().name,
    )


def publish_dir(sub: Submission, board: str | Path) -> str:
    """Write `sub` into the board directory under its lock, keep a replaced entry in history, re-render."""

    board = check_board_dir(Path(board))
    with board_lock(board):
        data = read_board(board)
        _ensure_layout(board)
        version = int(data["entries"].get(sub.entry_id, {}).get("version", 0)) + 1
        stage = _stage_entry(board, sub, version)
        try:
            dest = safe_child(board, ENTRIES_DIR, sub.entry_id)
            if dest.exists():
                _move_to_history(board, sub.entry_id, dest)
            os.rename(stage, dest)
        finally:
            shutil.rmtree(stage, ignore_errors=True)
        published = json.loads((dest / ENTRY_JSON).read_text(encoding="utf-8"))["published"]
        data["entries"][sub.entry_id] = {**sub.summary(), "version": version, "published": published}
        write_board(board, data)
        render_views(board)
    log.info("published %s to %s", sub.entry_id, board)
    return sub.entry_id


def _stage_entry(board: Path, sub: Submission, version: int) -> Path:
    """Assemble the entry in <board>/.staging/ (invisible to readers until renamed)."""
    staging = safe_child(board, STAGING_DIR)
    staging.mkdir(exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f"{sub.entry_id}.", dir=staging))
    report_text = json.dumps(sub.report, indent=2) + "\n"
    atomic_write_text(stage / REPORT_JSON, report_text)
    atomic_write_text(stage / REPORT_MD, sub.report_md)
    if sub.report_html is not None:
        atomic_write_text(stage / REPORT_HTML, sub.report_html)
    if sub.figures:
        (stage / FIGURES_DIR).mkdir()
        for name, data in sub.figures.items():
            (stage / FIGURES_DIR / name).write_bytes(data)
    atomic_write_json(stage / ENTRY_JSON, {
        "entry_id": sub.entry_id,
        "version": version,
        "published": datetime.now(timezone.utc).isoformat(timespec="microseconds"),
        "source": sub.source,
        "report_sha256": hashlib.sha256(report_text.encode("utf-8")).hexdigest(),
    })
    return stage


def _move_to_history(board: Path, entry_id: str, dest: Path) -> Path:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    target_dir = safe_child(board, HISTORY_DIR, entry_id)  # checked before mkdir: never follow a link out
    target_dir.mkdir(parents=True, exist_ok=True)
    target, n = target_dir / stamp, 1
    while target.exists():
        target, n = target_dir / f"{stamp}-{n}", n + 1
    os.rename(dest, target)
    return target


def _ensure_layout(board: Path) -> None:
    """Create entries/, clear a staging folder a killed publish left behind, write .gitignore.

    Staging happens only under the lock, so whatever is in .staging/ now is debris. The lock and
    the staging folder are local to one machine: a git board never commits them.
    """
    safe_child(board, ENTRIES_DIR).mkdir(exist_ok=True)
    shutil.rmtree(safe_child(board, STAGING_DIR), ignore_errors=True)
    path = board / GITIGNORE
    wanted = [LOCK_FILE, f"{STAGING_DIR}/"]
    lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
    if not all(w in lines for w in wanted):
        atomic_write_text(path, "\n".join(lines + [w for w in wanted if w not in lines]) + "\n")
