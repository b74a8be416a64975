"""benches/doc_corpus.py: the documentation corpus of the real-LM run keeps prose, drops markup, repeats nothing."""

import json
import subprocess
import sys

from benches.doc_corpus import docstrings, paragraphs

PROSE = "The quick brown fox jumps over the lazy dog, and then it keeps on running far away."


def test_paragraphs_keep_prose_and_drop_directives_literals_and_rules():
    text = "\n\n".join([
        "Title\n=====",
        ".. note::\n   A directive's body.",
        f"{PROSE}\nSecond line of the same paragraph.",
        "   indented literal block that is long enough to pass the length rule on its own anyway",
        ">>> print('a doctest that is long enough to pass the length rule on its own')",
        "short",
    ])
    assert paragraphs(text, 40) == [f"{PROSE} Second line of the same paragraph."]


def test_docstrings_are_read_from_python_sources_and_bad_sources_give_none():
    source = f'"""{PROSE}"""\n\ndef f():\n    """Indented.\n\n    {PROSE}\n    """\n'
    assert paragraphs(docstrings(source), 40) == [PROSE, PROSE]
    assert docstrings("def (:") == ""


def test_the_cli_writes_each_paragraph_once_and_refuses_a_folder_without_text(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.rst").write_text(f"{PROSE}\n\nAnother paragraph, also long enough to be kept in the corpus.\n")
    (src / "b.py").write_text(f'"""{PROSE}"""\n')
    out = tmp_path / "corpus.jsonl"
    cmd = [sys.executable, "-m", "benches.doc_corpus", str(out), str(src), "--min-chars", "40"]
    subprocess.run(cmd, check=True, capture_output=True)
    rows = [json.loads(line)["text"] for line in out.read_text().splitlines()]
    assert rows == [PROSE, "Another paragraph, also long enough to be kept in the corpus."]
    empty = tmp_path / "empty"
    empty.mkdir()
    bad = subprocess.run([*cmd[:3], str(tmp_path / "x.jsonl"), str(empty)], capture_output=True, text=True)
    assert bad.returncode == 2 and "no .py, .rst, .txt files under" in bad.stderr
    assert not (tmp_path / "x.jsonl").exists()
