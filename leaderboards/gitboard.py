"""Boards kept in a git repository: clone, change, commit, push; on a rejected push, start again.

A rejected push means someone else published first. Rebasing would conflict on board.json and the
rendered views, which are derived files, so a retry instead resets the clone to the remote branch
and re-applies the same change (the submission is held in memory); the lock file and staging
folder are .gitignored.
"""

from __future__ import annotations

import logging
import os
import random
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from diffeval.leaderboards.board import BoardError

log = logging.getLogger(__name__)

PUSH_ATTEMPTS = 12
MAX_BACKOFF_S = 3.0
_URL_PREFIXES = ("file://", "ssh://", "https://", "http://", "git://", "git@")
# what git prints when the remote moved on since our fetch: retry; anything else is a real failure
_REJECTED = ("[rejected]", "fetch first", "non-fast-forward", "cannot lock ref", "failed to update ref")
T = TypeVar("T")


def is_git_board(board: str | Path) -> bool:
    """A git URL, a path ending in .git, or a path to a bare repository."""
    text = str(board)
    if text.startswith(_URL_PREFIXES) or text.rstrip("/").endswith(".git"):
        return True
    path = Path(text)
    return path.is_dir() and (path / "HEAD").is_file() and (path / "objects").is_dir() and (path / "refs").is_dir()


def _git(args: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0", "LC_ALL": "C"}
    result = subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True)
    if check and result.returncode != 0:
        detail = (result.stderr or result.stdout).strip().splitlines()
        raise BoardError(f"git {' '.join(args)} failed: {detail[-1] if detail else 'exit ' + str(result.returncode)}")
    return result


def with_git_board(url: str, change: Callable[[Path], T], message: str, push: bool = True) -> T:
    """Clone `url`, run `change(clone_dir)`, commit and push; on a rejected push reset and retry.

    With push=False (read-only use such as `show`), the clone is only read.
    """
    with tempfile.TemporaryDirectory(prefix="diffeval-board-") as tmp:
        clone = Path(tmp) / "board"
        _git(["clone", "--quiet", url, str(clone)], cwd=Path(tmp))
        _git(["config", "user.name", "diffeval"], cwd=clone)
        _git(["config", "user.email", "diffeval@localhost"], cwd=clone)
        branch = _git(["symbolic-ref", "--short", "HEAD"], cwd=clone).stdout.strip()
        for attempt in range(1, PUSH_ATTEMPTS + 1):
            result = change(clone)
            if not push:
                return result
            _git(["add", "-A"], cwd=clone)
            if not _git(["status", "--porcelain"], cwd=clone).stdout.strip():
                return result  # nothing changed: nothing to push
            _git(["commit", "--quiet", "-m", message], cwd=clone)
            pushed = _git(["push", "--quiet", "origin", f"HEAD:refs/heads/{branch}"], cwd=clone, check=False)
            if pushed.returncode == 0:
                log.info("pushed %r to %s (attempt %d)", message, url, attempt)
                return result
            if not any(marker in pushed.stderr for marker in _REJECTED):
                raise BoardError(f"git push to {url} failed: {pushed.stderr.strip()}")
            log.info("push to %s rejected (someone published first); retrying on top of theirs", url)
            _reset_to_remote(clone, branch)
            # exponential backoff with full jitter spreads out publishers that collided
            time.sleep(random.uniform(0, min(MAX_BACKOFF_S, 0.1 * 2**attempt)))
        raise BoardError(
            f"git push to {url} was rejected {PUSH_ATTEMPTS} times (others keep publishing); try again later"
        )


def _reset_to_remote(clone: Path, branch: str) -> None:
    _git(["fetch", "--quiet", "origin"], cwd=clone)
    remote = f"refs/remotes/origin/{branch}"
    if _git(["rev-parse", "--verify", "--quiet", remote], cwd=clone, check=False).returncode == 0:
        _git(["reset", "--quiet", "--hard", remote], cwd=clone)
    _git(["clean", "--quiet", "-fd"], cwd=clone)
