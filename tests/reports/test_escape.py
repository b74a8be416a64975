"""Untrusted text (model names, contexts) shows literally in markdown and HTML."""

from __future__ import annotations

import markdown_it
import pytest

from diffeval.reports.escape import html_escape, md_code, md_escape


@pytest.mark.parametrize("text, expected", [
    ("gemma-2-9b-it", "gemma-2-9b-it"),              # ordinary names stay readable
    ("org/model_v1.5", "org/model\\_v1.5"),
    ("[x](javascript:alert(1))", "\\[x\\](javascript:alert(1))"),
    ("<img src=x>", "\\<img src=x\\>"),
    ("a | b", "a \\| b"),
    ("**bold** `code` ~~s~~ $x$ &amp;", "\\*\\*bold\\*\\* \\`code\\` \\~\\~s\\~\\~ \\$x\\$ \\&amp;"),
    ("# heading", "\\# heading"),
    ("- item", "\\- item"),
    ("3. item", "3\\. item"),
    ("0.1.0", "0.1.0"),
    ("line one\nline two\r\n", "line one line two "),
])
def test_md_escape(text, expected):
    assert md_escape(text) == expected


def test_md_escape_renders_as_the_literal_text():
    evil = "[click](http://x.example) <script>alert(1)</script> **b** | c # h"
    html = markdown_it.MarkdownIt("commonmark").render(md_escape(evil))
    assert "<a " not in html and "<script>" not in html and "<strong>" not in html
    assert html == f"<p>{html_escape(evil)}</p>\n".replace("&#x27;", "'").replace("&quot;", '"')


@pytest.mark.parametrize("text, expected", [
    ("plain", "`plain`"),
    ("has `tick`", "`` has `tick` ``"),
    ("`start", "`` `start ``"),
    ("a|b\nc", "`a\\|b c`"),
])
def test_md_code_fences_longer_than_inner_backticks(text, expected):
    assert md_code(text) == expected


@pytest.mark.parametrize("text", ["has `tick`", "``double`` and `single`", "<b>x</b> **y**"])
def test_md_code_renders_the_exact_text(text):
    html = markdown_it.MarkdownIt("commonmark").render(md_code(text))
    assert html == f"<p><code>{html_escape(text)}</code></p>\n".replace("&#x27;", "'").replace("&quot;", '"')


def test_html_escape_quotes_and_tags():
    assert html_escape('<a href="x">O\'Neil & co</a>') == "&lt;a href=&quot;x&quot;&gt;O&#x27;Neil &amp; co&lt;/a&gt;"
