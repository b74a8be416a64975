"""Escaping of untrusted text (model names, model-generated contexts) for markdown and HTML.

A model name such as `[click](javascript:…)` or a context holding `<script>` or `|` must show as
the literal text, never become a link, a tag, or break a table. Reports and leaderboards both
use these helpers.
"""

from __future__ import annotations

import html
import re

# Inline markdown syntax anywhere in a line: emphasis, code, links and images, raw HTML and
# entities, table cells, strikethrough, math. CommonMark allows a backslash before any ASCII
# punctuation, so each escape renders as the literal character.
_MD_INLINE = re.compile(r"([\\`*_\[\]<>|~&$])")
# Block syntax only matters at the start of a line: headings, list items, quotes, ordered lists.
# A list marker needs a space (or nothing) after it; `#` is escaped whatever follows.
_MD_LINE_START = re.compile(r"^(\s*)(#|[+\-](?=\s|$)|\d+(?=[.)](?:\s|$)))")
_LINE_BREAKS = re.compile(r"[\r\n\u2028\u2029]+")


def md_escape(text: object) -> str:
    """`text` as literal markdown on one line: punctuation backslash-escaped, line breaks made spaces."""
    flat = _MD_INLINE.sub(r"\\\1", _LINE_BREAKS.sub(" ", str(text)))
    return _MD_LINE_START.sub(_escape_block_start, flat)


def _escape_block_start(m: re.Match) -> str:
    marker = m.group(2)
    return m.group(1) + (marker + "\\" if marker[0].isdigit() else "\\" + marker)


def md_code(text: object) -> str:
    """`text` as an inline code span, for contexts whose exact characters matter.

    The fence is one backtick longer than the longest backtick run inside, as CommonMark requires;
    `|` is backslash-escaped so a span in a table cell does not split the row.
    """
    flat = _LINE_BREAKS.sub(" ", str(text)).replace("|", "\\|")
    longest = max((len(m) for m in re.findall(r"`+", flat)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if flat.startswith("`") or flat.endswith("`") or not flat.strip() else ""
    return f"{fence}{pad}{flat}{pad}{fence}"


def html_escape(text: object) -> str:
    """`text` safe inside an HTML element or a quoted attribute value."""
    return html.escape(str(text), quote=True)


def visible(piece: object) -> str:
    """A decoded token as a reader sees it on one line: line breaks as ⏎, tabs as →."""
    return _LINE_BREAKS.sub("⏎", str(piece)).replace("\t", "→")


def md_context(pieces: list[str], at: int) -> str:
    """A context as literal markdown with its activating token (pieces[at]) between ⟦ ⟧ (not bold: a token
    that starts with a space cannot be emphasised in CommonMark)."""
    if not 0 <= at < len(pieces):  # no activating token to mark: the text as it is
        return md_escape(visible("".join(pieces)))
    token, head, tail = pieces[at], "".join(pieces[:at]), "".join(pieces[at + 1:])
    return f"{md_escape(visible(head))}⟦{md_escape(visible(token))}⟧{md_escape(visible(tail))}"


def script_json(text: str) -> str:
    """JSON text safe inside a <script> element: no `</script>` can close it and no `<!--` open a comment
    (every <, > and & becomes its \\u escape, which JSON reads back as the same character)."""
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
