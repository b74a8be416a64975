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
    # the board's columns show the headline measure; the share ratio stays in each row's data and the reports
    md = (board / "LEADERBOARD.md").read_text()
    assert "| instruction following 8.0×+\\* |" in md and "+100.0 %" not in md


def test_leaderboard_md_has_one_row_per_pair_with_link(tmp_path, make_run):
    board = tmp_path / "board"
    ids = [publish(make_run(f"r{i}", tuned=f"org/t{i}", reference="org/ref" if i == 1 else None,
                            spearman=None if i == 2 else 0.5), board) for i in range(3)]
    md = (board / "LEADERBOARD.md").read_text()
    rows = [line for line in md.splitlines() if line.startswith("| org-base")]
    assert len(rows) == 3
    cells = [row.strip("| ").split(" | ") for row in rows]
    assert [c[0] for c in cells] == ids
    assert [c[1] for c in cells] == ["org/base-1b → org/t0", "org/base-1b → org/t1 (reference org/ref)",
                                     "org/base-1b → org/t2"]
    assert cells[0][2] == "layer 1 · seed 0 · 1000 tokens · 64 latents, k 4 · 100 steps"
    assert cells[0][3] == "ifeval\\_lite +0.12 \\[+0.07, +0.17\\]\\*<br>gsm\\_lite -0.03 \\[-0.08, +0.02\\]\\*"
    assert cells[0][4] == "instruction following 8.0×+\\*"     # safety (q = 0.9) measured, not changed
    assert cells[0][5] == "per-document — · causal not run"
    assert cells[2][6] == "—"  # no Spearman (one task, or not computed)
    for entry_id in ids:
        assert f"[report.md](entries/{entry_id}/report.md)" in md
        assert (board / "entries" / entry_id / "report.md").is_file()


def test_entries_of_one_pair_are_told_apart_and_grouped_with_their_stability(tmp_path, make_run):
    """Two runs of one pair (another seed, another layer) are two entries, shown with their configurations
    and grouped under the pair with how stable each category's verdict is; re-publishing one replaces it."""
    board = tmp_path / "board"
    a = publish(make_run("s0"), board)
    b = publish(make_run("s1", config={"layer": 2, "seed": 1, "bench_seed": 0, "tokens": 1000, "n_latents": 64,
                                       "k": 4, "n_steps": 100},
                         headline={"instruction following": (2.0, 0.6, None), "safety": (1.2, 0.9, None)}), board)
    assert a != b
    assert publish(make_run("s0-again"), board) == a           # the same configuration replaces its entry
    rows = entry_rows(board)
    assert [r["entry_id"] for r in rows] == sorted([a, b])
    md = (board / "LEADERBOARD.md").read_text()
    assert "layer 1 · seed 0 · 1000 tokens" in md and "layer 2 · seed 1 · bench seed 0 · 1000 tokens" in md
    assert ("- **org/base-1b → org/base-1b-simpo** (2 entries): instruction following changed in 1 of 2 "
            "(fold 2.0–8.0×, direction +); safety changed in 0 of 2 (fold 1.2–1.3×)") in md
    table = show(board)
    assert a in table and b in table and "instruction following changed in 1 of 2" in table


def test_hostile_names_are_escaped_in_markdown_and_html(tmp_path, make_run):
    board = tmp_path / "board"
    publish(make_run("evil", tuned=EVIL, tasks={"<b>task</b>": 0.1}), board)
    md = (board / "LEADERBOARD.md").read_text()
    row = next(line for line in md.splitlines() if line.startswith("| org-base"))
    assert len(row.split(" | ")) == 8  # the '|' in the name did not add a column
    # every '<' in the row is backslash-escaped (literal text in CommonMark): one task, so no <br> of its own
    assert re.findall(r"(?<!\\)<\w+", row) == []
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
    assert "instruction following 8.0×+*" in table and "ifeval_lite +0.12 [+0.07, +0.17]*" in table
    assert "+0.80 (p=0.1)" in table


def test_render_rewrites_views(tmp_path, make_run):
    board = tmp_path / "board"
    publish(make_run("a"), board)
    (board / "index.html").write_text("stale")
    paths = render(board)
    assert paths == [board / "LEADERBOARD.md", board / "index.html"]
    assert "<table id=\"pairs\"" in (board / "index.html").read_text()
