"""The run directory: config.json, manifest.json and the stage cache.

A stage is recorded as done in manifest.json only after all of its outputs were written
(each atomically), together with the hash of its inputs and config. On re-run, a stage whose
hash matches and whose outputs all exist is skipped; anything else is recomputed.
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import logging
import re
import shutil
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from diffeval import __version__
from diffeval.crosscoders.files import file_sha256
from diffeval.harness.core import progress
from diffeval.harness.core.config import config_hash, to_dict
from diffeval.harness.core.errors import RunDirError
from diffeval.harness.core.files import CONFIG, MANIFEST, STAGE_KEY, source_name
from diffeval.harness.core.io import atomic_write_json, read_json

log = logging.getLogger(__name__)

MANIFEST_VERSION = 1
_PACKAGES = ("torch", "transformers", "lm_eval", "datasets", "peft", "numpy", "scipy")


def default_run_dir(base: str, tuned: str, root: str | Path = "runs", cfg: Any = None) -> Path:
    """runs/<base>-vs-<tuned>-<config hash> for a config (the same command finds its run again, so it
    resumes or reuses it); runs/<time>-<base>-vs-<tuned> for one-off commands."""
    if cfg is not None:
        return Path(root) / f"{_slug(base)}-vs-{_slug(tuned)}-{config_hash(cfg)[:8]}"
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path(root) / f"{stamp}-{_slug(base)}-vs-{_slug(tuned)}"


def _slug(spec: str) -> str:
    name = Path(spec.rstrip("/")).name or spec
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)[:40]


def package_versions() -> dict[str, str]:
    versions = {"diffeval": __version__}
    for name in _PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name.replace("_", "-"))
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


class RunDir:
    """A run directory and its manifest of stages."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.manifest_path = self.path / MANIFEST
        self.manifest = self._load_manifest()
        self._verified: set[str] = set()  # stages whose outputs were checked against their hashes
        self._announced: set[str] = set()  # stages already reported as reused

    def _load_manifest(self) -> dict[str, Any]:
        if not self.manifest_path.exists():
            return {"format_version": MANIFEST_VERSION, "created": _now(), "stages": {}}
        data = read_json(self.manifest_path)
        if not isinstance(data, dict) or not isinstance(data.get("stages"), dict):
            raise RunDirError(f"{self.manifest_path} is not a diffeval manifest (no 'stages' mapping)")
        return data

    def write_config(self, cfg: Any) -> Path:
        return atomic_write_json(self.path / CONFIG, to_dict(cfg))

    def is_done(self, stage: str, input_hash: str) -> bool:
        """True when `stage` finished with these inputs and its outputs are all still there, as written.

        An output whose content no longer matches the sha256 recorded when the stage wrote it (a corrupt
        or edited file) is an error naming the file: reusing it would pass damage on as a result."""
        entry = self.manifest["stages"].get(stage)
        if not entry or entry.get("status") != "done" or entry.get("input_hash") != input_hash:
            return False
        if not all((self.path / rel).exists() for rel in entry.get("outputs", [])):
            return False
        self.verify(stage)
        if stage not in self._announced:
            self._announced.add(stage)
            progress.stage_reused(stage)
        return True

    def key(self, stage: str) -> str:
        """The input key of a finished stage (what a later stage's key is built from); its outputs are
        checked against their recorded hashes, since the caller is about to read them."""
        entry = self.manifest["stages"].get(stage)
        if not entry or entry.get("status") != "done":
            raise RunDirError(f"{self.path} has no finished '{stage}' stage; run `diffeval run` (or that stage) first")
        self.verify(stage)
        return entry["input_hash"]

    def verify(self, stage: str) -> None:
        """Check a finished stage's output files against the sha256 recorded when it wrote them (once per RunDir)."""
        if stage in self._verified:
            return
        for rel, digest in (self.manifest["stages"][stage].get("sha256") or {}).items():
            path = self.path / rel
            if not path.is_file():
                raise RunDirError(f"{path} is missing although the '{stage}' stage wrote it; re-run to recompute it")
            if file_sha256(path) != digest:
                raise RunDirError(f"{path} no longer matches the sha256 the '{stage}' stage recorded in "
                                  f"{MANIFEST} (corrupt or edited); delete it and re-run to recompute it")
        self._verified.add(stage)

    def rehash(self, stage: str) -> None:
        """Record the current content of a finished stage's outputs (after a later stage added to one of them)."""
        entry = self.manifest["stages"][stage]
        self._set(stage, {**entry, "sha256": _hashes(self.path, entry.get("outputs", []))})

    def outputs(self, stage: str) -> list[Path]:
        entry = self.manifest["stages"].get(stage)
        if not entry or entry.get("status") != "done":
            raise RunDirError(f"{self.path} has no finished '{stage}' stage; run it first")
        return [self.path / rel for rel in entry["outputs"]]

    @contextmanager
    def stage(self, name: str, input_hash: str):
        """Record a stage as running, then as done with its outputs (set `rec["outputs"]` inside)."""
        rec: dict[str, Any] = {"outputs": []}
        previous = (self.manifest["stages"].get(name) or {}).get("seconds")
        progress.stage_started(name, previous)
        self._set(name, {"status": "running", "input_hash": input_hash, "started": _now()})
        scope = reset_peak_memory()
        t0 = time.perf_counter()
        try:
            yield rec
        except BaseException:
            self._set(name, {"status": "failed", "input_hash": input_hash, "ended": _now()})
            raise
        outputs = [str(Path(p).resolve().relative_to(self.path.resolve())) for p in rec["outputs"]]
        self._set(name, {
            "status": "done", "input_hash": input_hash, "ended": _now(),
            "seconds": round(time.perf_counter() - t0, 2), **peak_memory(scope), "outputs": outputs,
            "sha256": _hashes(self.path, outputs),
        })
        self._verified.add(name)
        progress.stage_done(name, time.perf_counter() - t0)

    def _set(self, name: str, entry: dict[str, Any]) -> None:
        self.manifest["stages"][name] = entry
        self.manifest["packages"] = package_versions()
        self.manifest["updated"] = _now()
        atomic_write_json(self.manifest_path, self.manifest)


def reset_peak_memory() -> str:
    """Start measuring a stage's peak memory: "stage" where the process's peak resident set can be reset (Linux,
    /proc/self/clear_refs) and the reset took effect, else "process" (the peak since the process began). Some
    sandboxes accept the write and keep the old peak; a reset is trusted only when the peak then sits within
    64 MiB of the current resident set. CUDA peaks are reset too."""
    if "torch" in sys.modules and sys.modules["torch"].cuda.is_initialized():
        sys.modules["torch"].cuda.reset_peak_memory_stats()
    try:
        Path("/proc/self/clear_refs").write_text("5")
        fields = _status_kib("VmHWM:", "VmRSS:")
    except (OSError, StopIteration, ValueError):
        return "process"
    return "stage" if fields["VmHWM:"] - fields["VmRSS:"] <= 64 * 1024 else "process"


def _status_kib(*names: str) -> dict[str, int]:
    """The named fields of /proc/self/status, in KiB."""
    lines = Path("/proc/self/status").read_text().splitlines()
    return {name: next(int(line.split()[1]) for line in lines if line.startswith(name)) for name in names}


def peak_memory(scope: str) -> dict[str, Any]:
    """The manifest's memory fields of a finished stage: peak resident set in MiB (`peak_rss_scope` says whether
    it is the stage's own or the process's), and with CUDA in use the peak allocated per device."""
    try:
        kib = _status_kib("VmHWM:")["VmHWM:"]
        out: dict[str, Any] = {"peak_rss_mib": round(kib / 1024, 1), "peak_rss_scope": scope}
    except (OSError, StopIteration):
        import resource  # noqa: PLC0415 (POSIX only; reached only without /proc)

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
        out = {"peak_rss_mib": round(peak / (2**20 if sys.platform == "darwin" else 1024), 1), "peak_rss_scope": "process"}
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        out["peak_cuda_mib"] = {f"cuda:{i}": round(torch.cuda.max_memory_allocated(i) / 2**20, 1)
                                for i in range(torch.cuda.device_count())}
    return out


def _hashes(root: Path, outputs: list[str]) -> dict[str, str]:
    """sha256 of each output that is a file (a folder output is checked by its own manifest)."""
    return {rel: file_sha256(root / rel) for rel in outputs if (root / rel).is_file()}


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def fresh_stage_dir(directory: Path, key: str) -> None:
    """Keep `directory` for a resume of the same inputs; clear it when it holds another configuration's output."""
    marker = directory / STAGE_KEY
    if directory.exists() and (not marker.exists() or marker.read_text() != key):
        log.info("%s holds output of other inputs; clearing it", directory)
        shutil.rmtree(directory)
    directory.mkdir(parents=True, exist_ok=True)
    marker.write_text(key)


def file_stamp(path: str, root: Path | None = None) -> list[Any]:
    """A file's identity in a stage key: its name (relative to `root`, the run, when inside it), size and mtime."""
    p, name = Path(path), source_name(path, root)
    return [name, p.stat().st_size, p.stat().st_mtime_ns] if p.exists() else [name, None]
