"""benches/doc_corpus.py: the documentation corpus of the real-LM run keeps prose, drops markup, repeats nothing."""

import json
import subprocess
import sys
from pathlib import Path

from benches.doc_corpus import docstrings, paragraphs

ROOT = Path(__file__).resolve().parents[1]
PROSE = "The quick brown fox jumps over the lazy dog, and then it keeps on running far away."
MORE = "Another paragraph, also long enough to be kept in the corpus."


def test_paragraphs_keep_prose_and_drop_directives_tables_literals_and_rules():
    text = "\n\n".join([
        "Title\n=====",
        ".. note::\n   A directive's first line.",
        f"{PROSE}\nSecond line of the same paragraph.",
        "=====  =====\nleft   right column of a simple table, long enough to pass the length rule\n=====  =====",
        ">>> print('a doctest that is long enough to pass the length rule on its own')",
        "short",
    ])
    assert paragraphs(text, 40) == [f"{PROSE} Second line of the same paragraph."]


def test_a_directive_description_is_prose_and_a_literal_block_is_not():
    text = "\n\n".join([
        ".. function:: f(x)",
        f"   {PROSE}",  # the function's description: kept
        f"   {MORE} Example::",  # ends in '::': what is indented below it is code
        "      for item in range(10): print('a loop long enough to pass the length rule', item)",
        "      print('a second block of the same literal, after a blank line, also long enough')",
        f"   {PROSE} Again, back at the description's indentation.",
        ".. code-block:: python",
        "   result = compute_something_long(argument_one, argument_two, argument_three)",
    ])
    assert paragraphs(text, 40) == [PROSE, f"{MORE} Example::", f"{PROSE} Again, back at the description's indentation."]


def test_docstrings_are_read_from_python_sources_and_bad_sources_give_none():
    source = f'"""{PROSE}"""\n\ndef f():\n    """Indented.\n\n    {PROSE}\n    """\n'.encode()
    assert paragraphs(docstrings(source), 40) == [PROSE, PROSE]
    assert docstrings(b"def (:") == ""
    latin = f'# -*- coding: latin-1 -*-\n"""{PROSE} Caf\xe9."""\n'.encode("latin-1")  # its own declared encoding
    assert paragraphs(docstrings(latin), 40) == [f"{PROSE} Café."]


def _corpus(tmp_path, *dirs) -> subprocess.CompletedProcess:
    out = tmp_path / "corpus.jsonl"
    cmd = [sys.executable, "-m", "benches.doc_corpus", str(out), *map(str, dirs), "--min-chars", "40"]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)


def test_the_cli_writes_each_paragraph_once_and_counts_files_it_cannot_read(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.rst").write_text(f"{PROSE}\n\n{MORE}\n")
    (src / "b.py").write_text(f'"""{PROSE}"""\n')
    (src / "c.txt").write_bytes(f"{MORE} \xff".encode("latin-1"))  # not UTF-8
    done = _corpus(tmp_path, src)
    assert done.returncode == 0, done.stderr
    assert "(1 text files skipped: not UTF-8)" in done.stdout
    rows = [json.loads(line)["text"] for line in (tmp_path / "corpus.jsonl").read_text().splitlines()]
    assert rows == [PROSE, MORE]


def test_the_cli_refuses_a_missing_folder_or_one_without_text_and_writes_nothing(tmp_path):
    (tmp_path / "empty").mkdir()
    for bad, said in ((tmp_path / "empty", "no .py, .rst, .txt files under"), (tmp_path / "nowhere", "not a directory")):
        done = _corpus(tmp_path, bad)
        assert done.returncode == 2 and said in done.stderr, done.stderr
        assert not (tmp_path / "corpus.jsonl").exists()
