"""LEADERBOARD.md, index.html and the terminal table: content, ordering, escaping."""

from __future__ import annotations

import json
import re

import pytest

from diffeval.leaderboards import publish, render, show
from diffeval.leaderboards.views import entry_rows, fmt_p

EVIL = 'evil|</script><img src=x onerror="alert(1)">*_[x](y)'


def test_rows_carry_top_shifts_by_magnitude_with_significance(tmp_path, make_run):
    board = tmp_path / "board"
    publish(make_run("a", shifts={"safety": (0.3, 0.5), "code": (-0.95, 0.0001), "math": (1.0, 0.04),
                                   "multilingual": (0.1, 0.9), "empty": (None, None)}), board)
    (row,) = entry_rows(board)
    assert [s["category"] for s in row["top_shifts"]] == ["math", "code", "safety"]
    # BH over the entry's four p-values: math's 0.04 becomes q = 0.08, not significant; code's 1e-4 stays
    assert [s["significant"] for s in row["top_shifts"]] == [False, True, False]
    assert row["top_shifts"][0]["q_value"] == pytest.approx(0.08)
    assert "empty" not in [s["category"] for s in row["shifts"]]
    md = (board / "LEADERBOARD.md").read_text()
    assert "math +100.0 % (p=0.04)<br>code -95.0 % (p=1.0e-04\\*)<br>safety +30.0 % (p=0.5)" in md


def test_leaderboard_md_has_one_row_per_pair_with_link(tmp_path, make_run):
    board = tmp_path / "board"
    ids = [publish(make_run(f"r{i}", tuned=f"org/t{i}", reference="org/ref" if i == 1 else None,
                            spearman=None if i == 2 else 0.5), board) for i in range(3)]
    md = (board / "LEADERBOARD.md").read_text()
    rows = [line for line in md.splitlines() if line.startswith("| org/")]
    assert len(rows) == 3
    cells = [row.split(" | ") for row in rows]
    assert [c[1] for c in cells] == ["org/t0", "org/t1", "org/t2"]
    assert [c[2] for c in cells] == ["—", "org/ref", "—"]
    assert cells[2][5] == "—"  # no Spearman (one task, or not computed)
    for entry_id in ids:
        assert f"[report.md](entries/{entry_id}/report.md)" in md
        assert (board / "entries" / entry_id / "report.md").is_file()


def test_hostile_names_are_escaped_in_markdown_and_html(tmp_path, make_run):
    board = tmp_path / "board"
    publish(make_run("evil", tuned=EVIL, tasks={"<b>task</b>": 0.1}), board)
    md = (board / "LEADERBOARD.md").read_text()
    row = next(line for line in md.splitlines() if line.startswith("| org/base"))
    assert len(row.split(" | ")) == 7  # the '|' in the name did not add a column
    # every '<' in the row is backslash-escaped (literal text in CommonMark), except the row's own <br>
    assert re.findall(r"(?<!\\)<\w+", row) == ["<br", "<br"]
    assert "evil\\|\\</script\\>\\<img" in row

    page = (board / "index.html").read_text()
    assert page.count("</script>") == 2  # the page's own two script elements, nothing from the name
    assert "<img" not in page and "<b>task" not in page
    assert "evil|&lt;/script&gt;&lt;img src=x onerror=&quot;alert(1)&quot;&gt;" in page
    data = re.search(r'<script type="application/json" id="board-data">(.*?)</script>', page, re.S).group(1)
    assert json.loads(data)[0]["tuned"] == EVIL  # the embedded data still round-trips exactly


def test_p_formatting():
    assert fmt_p(None) == "p n/a" and fmt_p(0.2) == "p=0.2" and fmt_p(0.01) == "p=0.01*"
    assert fmt_p(0.00012) == "p=1.2e-04*"


def test_show_is_a_table_without_control_characters(tmp_path, make_run):
    board = tmp_path / "board"
    publish(make_run("a", tuned="org/tuned\x1b[31mred"), board)
    publish(make_run("b", tuned="org/second"), board)
    table = show(board)
    assert "\x1b" not in table
    assert "org/tuned[31mred" in table and "org/second" in table
    assert "instruction following +151.7 % (p=0.002*)" in table
    assert "+0.80 (p=0.1)" in table


def test_render_rewrites_views(tmp_path, make_run):
    board = tmp_path / "board"
    publish(make_run("a"), board)
    (board / "index.html").write_text("stale")
    paths = render(board)
    assert paths == [board / "LEADERBOARD.md", board / "index.html"]
    assert "<table id=\"pairs\"" in (board / "index.html").read_text()
