"""A plain-text corpus from directories of documentation, for runs that need more tokens than the
shipped corpus holds (about 60 000 Gemma tokens).

Every paragraph (a block between blank lines) of every `.txt`/`.rst` file, and of every docstring of every
`.py` file, under each DIR becomes one `{"text": …}` row, its lines joined with spaces, if it has at least
--min-chars characters and is prose: reStructuredText directives, tables, literal blocks, doctests and
section rules are dropped, and a paragraph seen before is not repeated. Files are read in sorted order, so the corpus is the same on every machine that
has the same files.

    python -m benches.doc_corpus OUT.jsonl DIR [DIR …] [--min-chars 200]

On Debian, `apt-get install python3.11-doc` puts the Python documentation's sources (about 12 MB of
reStructuredText) under /usr/share/doc/python3.11/html/_sources; the standard library's docstrings are
under /usr/lib/python3.11.
"""

from __future__ import annotations

import argparse
import ast
import inspect
import re
import sys
from pathlib import Path

from diffeval.harness.core.io import atomic_write_jsonl

SUFFIXES = {".txt", ".rst", ".py"}
NOT_PROSE = re.compile(r"^\s*(\.\.|::|[=\-~^*#+`]{3,}\s*$|\||>>>|\$ )")


def paragraphs(text: str, min_chars: int) -> list[str]:
    """The prose paragraphs of one reStructuredText or plain-text file."""
    kept = []
    for block in re.split(r"\n\s*\n", text):
        lines = block.splitlines()
        if not lines or any(NOT_PROSE.match(line) for line in lines) or lines[0].startswith((" ", "\t")):
            continue
        para = " ".join(line.strip() for line in lines)
        if len(para) >= min_chars:
            kept.append(para)
    return kept


def docstrings(source: str) -> str:
    """The docstrings of a Python file, blank-line separated (none if it does not parse)."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return ""
    kinds = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
    found = (ast.get_docstring(node) for node in ast.walk(tree) if isinstance(node, kinds))
    return "\n\n".join(inspect.cleandoc(d) for d in found if d)


def file_paragraphs(path: Path, min_chars: int) -> list[str]:
    text = path.read_text(encoding="utf-8", errors="replace")
    return paragraphs(docstrings(text) if path.suffix == ".py" else text, min_chars)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("dirs", type=Path, nargs="+", metavar="DIR")
    ap.add_argument("--min-chars", type=int, default=200)
    args = ap.parse_args()
    files = [p for d in args.dirs for p in sorted(d.rglob("*")) if p.suffix in SUFFIXES and p.is_file()]
    if not files:
        print(f"doc_corpus: no {', '.join(sorted(SUFFIXES))} files under {', '.join(map(str, args.dirs))}",
              file=sys.stderr)
        return 2
    unique = dict.fromkeys(para for path in files for para in file_paragraphs(path, args.min_chars))
    rows = [{"text": para} for para in unique]
    atomic_write_jsonl(args.out, rows)
    chars = sum(len(r["text"]) for r in rows)
    print(f"doc_corpus: {len(rows)} paragraphs, {chars} characters from {len(files)} files -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
