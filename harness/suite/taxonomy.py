"""The capability taxonomy: categories, their probe corpora and the benchmark tasks they name.

The shipped taxonomy is `tasks/categories.yaml`. A user file (`--categories FILE`) either replaces it or,
with `extends: shipped`, adds categories to it and overrides the ones it names. Probe paths are relative
to the YAML that names them. An organism ships its own probe texts (its made-up world is not English
prose); `probe_overrides` (one file per category) then replaces the taxonomy's probe corpora.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from diffeval.harness.core.errors import DiffevalError, did_you_mean
from diffeval.harness.core.files import check_name
from diffeval.tasks import CATEGORIES_FILE

UNASSIGNED = "unassigned"
MIN_PROBES = 10  # below this an enrichment test has no power; the shipped corpora hold >= 60


@dataclass(frozen=True)
class Category:
    name: str
    description: str = ""
    probes: Path | None = None
    tasks: tuple[str, ...] = ()


@dataclass(frozen=True)
class Taxonomy:
    source: str
    categories: dict[str, Category] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        return list(self.categories)

    def get(self, name: str) -> Category:
        if name not in self.categories:
            raise DiffevalError(f"unknown category {name!r}{did_you_mean(name, self.categories)} (categories in {self.source}: {', '.join(self.categories)})")
        return self.categories[name]

    def probe_texts(self) -> dict[str, list[str]]:
        """Every category's probe texts (categories without a corpus, such as unassigned, are left out)."""
        return {c.name: read_probes(c.probes, c.name) for c in self.categories.values() if c.probes is not None}


def _parse(path: Path) -> tuple[dict[str, Category], Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as e:
        raise DiffevalError(f"categories file {path} cannot be read: {e}".replace("\n", " ")) from None
    if not isinstance(data, dict) or not isinstance(data.get("categories"), dict) or not data["categories"]:
        raise DiffevalError(f"categories file {path} must hold a non-empty mapping 'categories: {{name: {{description, probes, tasks}}}}'")
    out = {}
    for name, spec in data["categories"].items():
        spec = {"description": spec} if isinstance(spec, str) else spec
        if not isinstance(spec, dict) or set(spec) - {"description", "probes", "tasks"}:
            raise DiffevalError(f"category {name!r} in {path}: expected keys description, probes, tasks; got {spec!r}")
        tasks = spec.get("tasks") or []
        if not isinstance(tasks, list) or not all(isinstance(t, str) for t in tasks):
            raise DiffevalError(f"category {name!r} in {path}: 'tasks' must be a list of task names")
        probes = (path.parent / spec["probes"]).resolve() if spec.get("probes") else None
        check_name(f"category (in {path})", str(name))
        out[str(name)] = Category(str(name), str(spec.get("description", "")), probes, tuple(tasks))
    return out, data.get("extends")


def load_taxonomy(path: str | Path | None = None, probe_overrides: dict[str, Path] | None = None) -> Taxonomy:
    """The shipped taxonomy, a user file replacing it, or a user file with `extends: shipped`."""
    shipped, _ = _parse(CATEGORIES_FILE)
    if path is None:
        cats, source = shipped, str(CATEGORIES_FILE)
    else:
        path = Path(path)
        if not path.is_file():
            raise DiffevalError(f"categories file {path} does not exist (a YAML like {CATEGORIES_FILE})")
        user, extends = _parse(path)
        if extends not in (None, "shipped"):
            raise DiffevalError(f"{path}: 'extends' must be 'shipped' (or absent to replace the taxonomy), got {extends!r}")
        cats, source = ({**shipped, **user} if extends else user), str(path)
    cats.setdefault(UNASSIGNED, Category(UNASSIGNED, "No capability category applies."))
    if probe_overrides is not None:  # a probe directory replaces every category's corpus; absent ones get none
        cats = {n: Category(c.name, c.description, probe_overrides.get(n), c.tasks) for n, c in cats.items()}
    return Taxonomy(source, cats)


def read_probes(path: Path, category: str) -> list[str]:
    """A probe corpus's texts (JSON Lines rows with a 'text' field)."""
    return [text for text, _ in read_probe_rows(path, category)]


def read_probe_rows(path: Path, category: str) -> list[tuple[str, tuple[str, str] | None]]:
    """(text, references) per row of a probe corpus; references are the row's optional (desired, undesired)
    continuations of the text, the answer the category's capability calls for and one it rules out."""
    if not path.is_file():
        raise DiffevalError(f"probe corpus of category {category!r} not found: {path} (JSON Lines with a 'text' field)")
    rows: list[tuple[str, tuple[str, str] | None]] = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row: Any = json.loads(line)
            text = str(row["text"])
        except (json.JSONDecodeError, KeyError, TypeError):
            raise DiffevalError(f"{path}:{i}: each line must be a JSON object with a 'text' field") from None
        refs = (row.get("desired"), row.get("undesired"))
        if refs == (None, None):
            rows.append((text, None))
        elif all(isinstance(x, str) and x.strip() for x in refs) and refs[0] != refs[1]:
            rows.append((text, (refs[0], refs[1])))
        else:
            raise DiffevalError(f"{path}:{i}: 'desired' and 'undesired' must both be given, as two different "
                                "non-empty strings (continuations of 'text'), or both left out")
    if len(rows) < MIN_PROBES:
        raise DiffevalError(f"probe corpus of category {category!r} ({path}) has {len(rows)} texts; "
                            f"at least {MIN_PROBES} are needed for an enrichment test")
    return rows


def organism_probes(probes_dir: str | Path) -> dict[str, Path]:
    """{category: file} for an organism's probe directory (one `<category>.jsonl` per category)."""
    return {check_name(f"probe file in {probes_dir}: category", p.stem): p for p in sorted(Path(probes_dir).glob("*.jsonl"))}
