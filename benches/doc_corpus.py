"""A plain-text corpus from directories of documentation, for runs that need more tokens than the shipped
corpus holds (its plain and chat texts come to about 49 000 Gemma-3 tokens).

Every paragraph (a block between blank lines) of every `.txt`/`.rst` file, and of every docstring of every
`.py` file, under each DIR becomes one `{"text": …}` row, its lines joined with spaces, if it has at least
--min-chars characters and is prose. reStructuredText directives, tables, literal blocks (after `::` or a
code directive), doctests, fenced code and section rules are dropped; a directive's indented description is
kept; a paragraph seen before is not repeated. Files are read in sorted order, so the corpus is the same on
every machine that has the same files. A text file that is not UTF-8 is skipped, and the count is printed.

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
RULE = r"[=\-~^*#+`]{3,}"
# a line that is markup, not prose: a directive or comment, a section rule or table border, a table row, a
# doctest, a shell prompt, a fenced code block
NOT_PROSE = re.compile(rf"^\s*(\.\.|::|{RULE}(\s+{RULE})*\s*$|\||>>>|\$ |```)")
# directives whose indented body is code, not prose
CODE_DIRECTIVE = re.compile(r"^\s*\.\. (code-block|code|sourcecode|doctest|testcode|testoutput|testsetup|"
                            r"productionlist|literalinclude|highlight|parsed-literal|math)::")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def paragraphs(text: str, min_chars: int) -> list[str]:
    """The prose paragraphs of one reStructuredText or plain-text file.

    A literal block (the blocks indented deeper than a paragraph ending in `::`, or than a code directive) is
    code and is skipped; any other indented block, such as a `.. function::` directive's description, is prose.
    """
    kept, literal_above = [], None  # the indentation a literal block must exceed, while inside one
    for block in re.split(r"\n\s*\n", text.strip("\n")):
        lines = block.splitlines()
        if not lines:
            continue
        indent = _indent(lines[0])
        if literal_above is not None and indent > literal_above:
            continue
        literal_above = None
        if lines[-1].rstrip().endswith("::") or CODE_DIRECTIVE.match(lines[0]):
            literal_above = indent
        if any(NOT_PROSE.match(line) for line in lines):
            continue
        para = " ".join(line.strip() for line in lines)
        if len(para) >= min_chars:
            kept.append(para)
    return kept


def docstrings(source: bytes) -> str:
    """The docstrings of a Python file, blank-line separated (none if it does not parse). `ast.parse` reads the
    bytes with the file's own encoding declaration."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return ""
    kinds = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
    found = (ast.get_docstring(node) for node in ast.walk(tree) if isinstance(node, kinds))
    return "\n\n".join(inspect.cleandoc(d) for d in found if d)


def file_paragraphs(path: Path, min_chars: int) -> list[str] | None:
    """The prose paragraphs of one file; None for a text file that is not UTF-8 (skipped and counted)."""
    raw = path.read_bytes()
    if path.suffix == ".py":
        return paragraphs(docstrings(raw), min_chars)
    try:
        return paragraphs(raw.decode("utf-8"), min_chars)
    except UnicodeDecodeError:
        return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("dirs", type=Path, nargs="+", metavar="DIR")
    ap.add_argument("--min-chars", type=int, default=200)
    args = ap.parse_args()
    missing = [str(d) for d in args.dirs if not d.is_dir()]
    if missing or args.min_chars < 1:
        why = f"not a directory: {', '.join(missing)}" if missing else f"--min-chars must be >= 1, got {args.min_chars}"
        print(f"doc_corpus: {why}", file=sys.stderr)
        return 2
    files = [p for d in args.dirs for p in sorted(d.rglob("*")) if p.suffix in SUFFIXES and p.is_file()]
    if not files:
        print(f"doc_corpus: no {', '.join(sorted(SUFFIXES))} files under {', '.join(map(str, args.dirs))}",
              file=sys.stderr)
        return 2
    found = [file_paragraphs(path, args.min_chars) for path in files]
    unique = dict.fromkeys(para for paras in found if paras for para in paras)
    rows = [{"text": para} for para in unique]
    atomic_write_jsonl(args.out, rows)
    chars = sum(len(r["text"]) for r in rows)
    skipped = sum(paras is None for paras in found)
    note = f" ({skipped} text files skipped: not UTF-8)" if skipped else ""
    print(f"doc_corpus: {len(rows)} paragraphs, {chars} characters from {len(files)} files{note} -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
