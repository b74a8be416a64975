"""A board on disk: its layout, entry ids, path safety and the lock around read-modify-write.

Layout of a board directory (file names are constants here and nowhere else):

    board.json                          format version and one summary row per entry
    entries/<entry-id>/report.json      the validated report (plus report.md, figures/*.png)
    entries/<entry-id>/entry.json       when and from where the entry was published
    history/<entry-id>/<timestamp>/     earlier versions of an entry, moved aside on re-publish
    LEADERBOARD.md, index.html          rendered views
    .lock                               flock target for writers (never committed to a git board)
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from diffeval.harness.core.errors import DiffevalError
from diffeval.harness.core.io import atomic_write_json, read_json

BOARD_FORMAT_VERSION = 1
BOARD_JSON = "board.json"
ENTRIES_DIR = "entries"
HISTORY_DIR = "history"
STAGING_DIR = ".staging"
LOCK_FILE = ".lock"
ENTRY_JSON = "entry.json"
LEADERBOARD_MD = "LEADERBOARD.md"
INDEX_HTML = "index.html"
GITIGNORE = ".gitignore"

# A slug keeps entry ids readable; the hash keeps two long specs that slug alike from colliding.
_SLUG_MAX = 40
_ENTRY_ID_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,199}$")


class BoardError(DiffevalError):
    """A board that is malformed, or a name that would escape it."""


def slugify(text: str, max_len: int = _SLUG_MAX) -> str:
    """Lower-case `text`, keep [a-z0-9._-], squeeze the rest into '-': 'org/Model 7B' -> 'org-model-7b'."""
    slug = re.sub(r"[^a-z0-9._]+", "-", text.lower())
    slug = re.sub(r"\.{2,}", ".", slug).strip("-.")
    return slug[:max_len].rstrip("-.") or "model"


def entry_id_for(base: str, tuned: str, reference: str | None, tasks: list[str],
                 run_config: dict[str, Any] | None = None, labels: tuple[str, str] | None = None) -> str:
    """The entry id of a (base, tuned, reference) pair on a task set and run configuration: readable slugs +
    a short hash.

    Model specs are often local paths: only their last two components go into the slug, the full
    spec goes into the hash. The task set is order-free. Runs of one pair at another layer, seed or
    crosscoder size are other entries (the configuration is part of the hash); re-publishing the same
    configuration replaces its entry. `labels` replace the specs in the slug (an organism's name instead
    of its cache path); the specs stay in the hash.
    """
    config = json.dumps(run_config, sort_keys=True) if run_config else ""
    key = "\n".join([base, tuned, reference or "", ",".join(sorted(set(tasks)))] + ([config] if config else []))
    digest = hashlib.sha256(key.encode("utf-8")).hexdigest()[:10]
    parts = [_short(labels[0] if labels else base), "vs", _short(labels[1] if labels else tuned)]
    if reference:
        parts += ["ref", _short(reference)]
    entry_id = "--".join(slugify(p) for p in parts) + f"--{digest}"
    check_entry_id(entry_id)
    return entry_id


def _short(spec: str) -> str:
    return "/".join(Path(spec.rstrip("/")).parts[-2:]) or spec


def check_entry_id(entry_id: str) -> str:
    """Reject an entry id that is not a single safe path component (no '..', '/', absolute path)."""
    if not isinstance(entry_id, str) or not _ENTRY_ID_RE.match(entry_id) or ".." in entry_id:
        raise BoardError(
            f"entry id {entry_id!r} would not stay inside the board: use 1-200 characters from "
            "[a-z0-9._-], starting with a letter or digit, with no '..' and no path separator"
        )
    return entry_id


def safe_child(root: Path, *parts: str) -> Path:
    """`root/parts…`, refusing any component that is absolute, '..', holds a separator or is a symlink."""
    path = root
    for part in parts:
        if not part or part in {".", ".."} or "/" in part or "\\" in part or "\0" in part or Path(part).is_absolute():
            raise BoardError(f"name {part!r} under {root} would escape it; use a plain file or folder name")
        path = path / part
        if path.is_symlink():
            raise BoardError(f"{path} is a symbolic link; a board holds no links (it could point outside {root})")
    resolved_root = root.resolve()
    if resolved_root != path.resolve() and resolved_root not in path.resolve().parents:
        raise BoardError(f"{path} resolves outside {root}")
    return path


def check_board_dir(board: Path) -> Path:
    """A board directory that is a real folder (not a link, not a file), or one that does not exist yet."""
    board = Path(board)
    if board.is_symlink():
        raise BoardError(f"board {board} is a symbolic link; give the real folder")
    if board.exists() and not board.is_dir():
        raise BoardError(f"board {board} is a file; expected a board folder or a git repository URL")
    # A board being created by a concurrent publisher holds only the board's own names for a moment,
    # and a fresh clone of an empty git board only dot-files (.git): both are boards, not foreign folders.
    own = {BOARD_JSON, ENTRIES_DIR, HISTORY_DIR, LEADERBOARD_MD, INDEX_HTML}
    foreign = [p.name for p in board.iterdir() if not p.name.startswith(".") and p.name not in own] \
        if board.is_dir() else []
    if foreign and not (board / BOARD_JSON).is_file():
        raise BoardError(
            f"board {board} is a non-empty folder without {BOARD_JSON} (it holds {', '.join(sorted(foreign)[:3])}); "
            "give an existing board or an empty/new folder"
        )
    return board


@contextmanager
def board_lock(board: Path) -> Iterator[None]:
    """Hold an exclusive flock on <board>/.lock: publishers on one machine take turns."""
    board.mkdir(parents=True, exist_ok=True)
    fd = os.open(board / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def read_board(board: Path) -> dict[str, Any]:
    """board.json, or an empty board's content when it does not exist yet."""
    path = board / BOARD_JSON
    if not path.exists():
        return {"format_version": BOARD_FORMAT_VERSION, "entries": {}}
    data = read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("entries"), dict):
        raise BoardError(f"{path} is not a board index: expected an object with 'format_version' and 'entries'")
    version = data.get("format_version")
    if version != BOARD_FORMAT_VERSION:
        raise BoardError(f"{path} has format_version {version!r}; this diffeval reads {BOARD_FORMAT_VERSION}")
    return data


def write_board(board: Path, data: dict[str, Any]) -> None:
    data = {"format_version": BOARD_FORMAT_VERSION, "entries": dict(sorted(data["entries"].items()))}
    atomic_write_json(board / BOARD_JSON, data)


def entry_dirs(board: Path) -> list[Path]:
    """The published entries' folders, sorted by id (links and stray files are refused)."""
    root = board / ENTRIES_DIR
    if not root.is_dir():
        return []
    return [safe_child(root, p.name) for p in sorted(root.iterdir())]
