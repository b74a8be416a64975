"""The report stage on a synthetic run directory whose numbers were planted (tests/reports/conftest.py)."""

from __future__ import annotations

import hashlib
import json
import re
import shutil

import pytest

from diffeval.reports.build import (
    accounting_categories,
    baseline_words,
    build_report,
    real_lm_line,
    separation_clause,
    sure_lines,
)
from diffeval.reports.render import render_report, report_main
from diffeval.reports.schema import ReportError, load_report
from tests.reports.conftest import EVIL_CONTEXT, TUNED_NAME

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
FIGURES = ("delta_norm_hist.png", "category_shifts.png", "usage_shifts.png", "predicted_vs_observed.png", "contributions.png")


def test_build_report_recovers_the_planted_numbers(run_dir):
    report = build_report(run_dir)
    assert report["models"]["base"]["organism"] == "toyworld"
    assert report["models"]["tuned"]["spec"] == TUNED_NAME
    assert report["models"]["base"]["revision"] == "config-sha256:aaaa1111bbbb2222"
    assert report["latent_classes"] == {"tuned_only": 20, "base_only": 8, "shared": 150, "other": 60, "dead": 18,
                                        "tuned_specific": 16, "base_specific": 8}
    cc = report["crosscoder"]
    assert (cc["layer"], cc["n_latents"], cc["k"], cc["tokens"]) == (1, 256, 8, 20000)
    assert cc["fve"] == {"base": 0.8123, "tuned": 0.7988}      # the last metrics row, not the first
    assert cc["tokens_seen"] == 400 * 256
    shifts = {c["category"]: c["shift"] for c in report["categories"]}
    assert shifts["instruction_following"] == pytest.approx(1.4) and shifts["safety"] is None
    assert [t["task"] for t in report["tasks"]] == ["ifeval_mini", "refusal_mini", "admit_unknown", "alpaca_eval"]
    assert report["attribution"]["spearman"] == 0.8 and len(report["attribution"]["per_task"]) == 3
    config = json.loads((run_dir / "config.json").read_text())
    assert report["provenance"]["config_hash"] == hashlib.sha256(
        json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]
    assert report["provenance"]["timings"] == {"bench.base": 12.5, "bench.deltas": 0.4, "crosscoder": 41.0}
    assert report["headline_measure"] == "cue_shift"
    head = report["headline"]
    assert head[0] == ("instruction_following: changed — where its 16 probe texts call for an answer, fine-tuning "
                       "moved the models' activations 8.2× as far as the text around every answer cue (which moved more than a "
                       "typical other category's cues) (cue "
                       "shift +720.0 %, 95% CI +510.0 % to +930.0 %; above 3× at q = 0.00075); its own latents carry "
                       "35 % of that difference. Direction +: the tuned model "
                       "prefers the desired reference answers more than the base (margin shift +12.50 nats over 16 "
                       "probes, p < 0.0001).")
    assert not any(h.startswith("self_reference") for h in head)  # measured, not significant: not a claim
    assert ("The paper's share-ratio measure is unavailable for this pair: it needs at least 10 tuned- and 10 "
            "base-specific latents, and the crosscoder has 20 and 8.") in head
    assert not any("writes" in h or "responses" in h for h in head)  # the behavioural readout is never the headline
    assert any(c.startswith("The tuned model wrote nothing after 20 of 24 probe texts") for c in report["caveats"])
    assert [c["headline"] is not None for c in report["categories"]] == [True, True, False]


def test_render_writes_valid_json_markdown_with_the_numbers_and_pngs(run_dir):
    paths = report_main(run_dir)
    assert {p.name for p in paths} == {"report.md", "report.html", "report.json", "summary.png", *FIGURES}
    assert load_report(run_dir / "report.json")["categories"][0]["n_tuned"] == 12
    md = (run_dir / "report.md").read_text()
    for expected in [
        "| ifeval\\_mini | instruction\\_following | acc | 50 | 0.200 | 0.600 | +0.400 | [+0.240, +0.560] | < 0.0001 |",
        "| 12 / 20 | 2 / 8 | +140.0 % | [+20.0 %, +510.0 %] | 0.012 | +35.0 % |",   # shift with counts, CI, p
        "| 1 / 20 | 3 / 8 | -86.7 % |",                                                 # (1/20)/(3/8) − 1
        "| 3 / 20 | 0 / 8 | undefined |",
        "| +25.0 % [+10.0 %, +40.0 %], 0.002 | +5.0 % [+2.0 %, +12.0 %] |",            # usage shift, absolute and relative
        "self\\_reference ⚠", "**Small counts (⚠):**",
        "| 1 | batchtopk | 256 | 8 | 20000 | 0.812 | 0.799 | 8.0 | 0.070 |",             # crosscoder quality
        "| 20 | 8 | 150 | 60 | 18 | 16 | 8 |",                                            # latent classes
        "**+0.80** (permutation p = 0.33, 3 tasks)",                                       # attribution
        "| ifeval\\_mini | +0.400 | +0.310 | instruction\\_following +0.280; self\\_reference +0.030 |",
        "Not run (opt-in with `--causal`).",
        "| 3 | tuned\\_only | 0.960 | 4.25 |",                                              # top latents
        "Not significant: safety (p = 0.53 ≥ 0.05).",                                     # caveats
        "Causal check not run",
        "(config-sha256:aaaa1111bbbb2222, 2 layers, d_model 64)",                          # provenance
        "| crosscoder | done | 41.0 |",
        "Model organism **toyworld**",
    ]:
        assert expected in md, expected
    for name in FIGURES:
        assert f"](figures/{name})" in md
        data = (run_dir / "figures" / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 2000


def test_model_name_and_contexts_are_escaped(run_dir):
    report_main(run_dir)
    md = (run_dir / "report.md").read_text()
    assert not re.search(r"(?<!\\)\[evil|(?<!\\)<img", md)        # every occurrence is backslash-escaped
    assert "\\[evil\\](http://x.example) \\<img src=x onerror=alert(1)\\> \\<script\\>alert(3)\\</script\\> \\| col" in md
    assert "``<script>alert(1)</script> \\| `tick` **bold**``" in md        # context as a code span
    markdown_it = pytest.importorskip("markdown_it")
    html = markdown_it.MarkdownIt("commonmark").enable("table").render(md)
    assert "<img src=x" not in html and "<script>" not in html and 'href="http://x.example"' not in html
    assert EVIL_CONTEXT.replace("<", "&lt;").replace(">", "&gt;") in html  # shown as text
    # Every table row keeps its column count: no pipe in a name or context split a cell.
    for table in html.split("<table>")[1:]:
        rows = table.split("</table>")[0].split("<tr>")[1:]
        assert len({row.count("<td") + row.count("<th") for row in rows}) == 1


def test_models_of_different_hidden_size(run_dir):
    path = run_dir / "activations" / "manifest.json"
    manifest = json.loads(path.read_text())
    path.write_text(json.dumps({**manifest, "d_model": 96, "d_models": [64, 96]}))
    models = build_report(run_dir)["models"]
    assert (models["base"]["d_model"], models["tuned"]["d_model"]) == (64, 96)


def test_missing_bench_stage_is_a_clear_error(run_dir):
    (run_dir / "bench" / "deltas.json").unlink()
    with pytest.raises(ReportError, match=r"no bench stage output \(bench/deltas.json is missing\)"):
        report_main(run_dir)
    assert not (run_dir / "report.md").exists() and not (run_dir / "report.json").exists()


def test_missing_run_dir_is_a_clear_error(tmp_path):
    with pytest.raises(ReportError, match="does not exist"):
        report_main(tmp_path / "nope")


def test_corrupt_stage_file_names_the_file(run_dir):
    (run_dir / "attribution.json").write_text('{"categories": [')
    with pytest.raises(ReportError, match="attribution.json is not valid JSON"):
        build_report(run_dir)


def test_attribution_breaking_the_contract_names_the_key(run_dir):
    data = json.loads((run_dir / "attribution.json").read_text())
    data["categories"][0]["n_tuned"] = "twelve"
    (run_dir / "attribution.json").write_text(json.dumps(data))
    with pytest.raises(ReportError, match=r"report\.categories\[0\]\.n_tuned is a string"):
        build_report(run_dir)


def test_partial_run_renders_with_caveats_and_skips_figures(run_dir):
    report_main(run_dir)                       # a full render first: its figures must not survive as stale
    for rel in ("attribution.json", "latents.jsonl"):
        (run_dir / rel).unlink()
    shutil.rmtree(run_dir / "crosscoder")
    paths = report_main(run_dir)
    # the summary figure needs only the benchmark deltas; every latent-level figure is gone
    assert {p.name for p in paths} == {"report.md", "report.html", "report.json", "summary.png"}
    assert [p.name for p in (run_dir / "figures").glob("*.png")] == ["summary.png"]
    report = load_report(run_dir / "report.json")
    assert report["categories"] == [] and report["causal"] == [] and report["attribution"]["spearman"] is None
    assert report["latent_classes"]["tuned_only"] is None and report["crosscoder"]["fve"]["base"] is None
    caveats = " ".join(report["caveats"])
    for stage in ("crosscoder", "latents", "attribution"):
        assert f"Stage not run: {stage}" in caveats
    assert "Stage not run: activations" not in caveats
    md = (run_dir / "report.md").read_text()
    assert "No category shifts: the attribution stage has not run." in md
    assert "| admit\\_unknown | hallucination\\_management | acc | 40 | 0.750 | 0.500 | -0.250 |" in md


def test_causal_results_are_rendered(run_dir):
    data = json.loads((run_dir / "attribution.json").read_text())
    data["causal"] = [{"task": "ifeval_mini", "category": "instruction_following", "mode": "revert", "n_latents": 12,
                       "delta": 0.4, "delta_ablated": 0.1, "delta_removed": 0.3, "ci_low": 0.18, "ci_high": 0.42,
                       "control_removed": 0.05, "control_p": 0.048, "n_controls": 20}]
    (run_dir / "attribution.json").write_text(json.dumps(data))
    report_main(run_dir)
    md = (run_dir / "report.md").read_text()
    assert ("| ifeval\\_mini | instruction\\_following (revert) | 12 | +0.400 → +0.100 | +0.300 | [+0.180, +0.420] "
            "| +0.050 | 0.048 (20 sets) |") in md
    assert "reverted (their fine-tuning change undone" in md
    assert ("Causal: reverting its 12 instruction\\_following latents removes 30 % of the delta (95% CI 18–42 %; "
            "20 random sets of as many latents remove a median 5 %, control p = 0.048).") in md.split("## How sure")[0]
    assert "Causal check not run" not in md


def test_report_into_another_folder_and_malformed_result_is_rejected_on_read(run_dir, tmp_path):
    out = tmp_path / "elsewhere"

    render_report(run_dir, out)
    assert (out / "report.md").exists() and (out / "figures" / "contributions.png").exists()
    assert not (run_dir / "report.md").exists()
    (out / "report.json").write_text((out / "report.json").read_text()[:-20])
    with pytest.raises(ReportError, match="not valid JSON"):
        load_report(out / "report.json")


def test_a_pair_that_is_not_an_organism_is_titled_by_its_specs(run_dir):
    config = json.loads((run_dir / "config.json").read_text())
    config.pop("organism")
    (run_dir / "config.json").write_text(json.dumps(config))
    report_main(run_dir)
    first = (run_dir / "report.md").read_text().splitlines()[0]
    assert first.startswith("# diffeval report: toy-base → ") and "\\[evil\\]" in first
    assert "organism" not in load_report(run_dir / "report.json")["models"]["base"]


def test_the_answer_comes_first_and_names_what_explains_each_significant_delta(run_dir):
    report = build_report(run_dir)
    tasks = {t["task"]: t for t in report["answer"]["tasks"]}
    assert set(tasks) == {"ifeval_mini", "admit_unknown"}       # BH q < 0.05; refusal_mini (p = 0.29) is not
    assert tasks["ifeval_mini"]["categories"] == ["instruction_following"]
    assert tasks["ifeval_mini"]["sentence"].startswith(
        "ifeval_mini rose +0.400, 95% CI +0.240 to +0.560, q < 0.0001: instruction_following changed (cue shift 8.2× "
        "its baseline, 95% CI 6.1–10.3×, q = 0.00075, direction +)")
    # it fell, and the only changed category its prompts engage rose: nothing explains it, and that is said
    assert tasks["admit_unknown"]["categories"] == [] and tasks["admit_unknown"]["against"] == ["instruction_following"]
    assert ("no category the headline measure finds changed accounts for it (unexplained); instruction_following "
            "changed in the opposite direction") in tasks["admit_unknown"]["sentence"]
    assert report["answer"]["not_changed"][0] == "Not changed (cue shift not clearly above the threshold): self_reference 1.4×."
    assert report["answer"]["lines"][:2] == [tasks["ifeval_mini"]["sentence"], tasks["admit_unknown"]["sentence"]]
    assert any(line.startswith("The headline measure (cue_shift) on diffeval's toy organism suite, measured with diffeval")
               for line in report["answer"]["sure"])
    # the shipped validation.json's real-LM records are quoted with their counts
    assert any(line.startswith("On a real LM, the organism gemma270m_lora_placebo") and "0 of 9 placebo categories" in line
               for line in report["answer"]["sure"])
    report_main(run_dir)
    md = (run_dir / "report.md").read_text()
    assert md.index("## Answer") < md.index("## How sure") < md.index("## Benchmark deltas") < md.index("## Appendix")
    assert "ifeval\\_mini rose +0.400" in md.split("## How sure")[0]
    body = md.split("## Appendix")[0]
    widths = {line.count("|") - 1 for line in body.splitlines() if line.startswith("|")}
    assert max(widths) <= 8  # every table of the body has at most 8 columns; the full ones are in the appendix


def test_decoded_contexts_mark_the_activating_token_and_show_both_models(run_dir):
    report_main(run_dir)
    md = (run_dir / "report.md").read_text()
    # decoded text, the token between ⟦ ⟧, escaped model-written text, ×count, and what it writes into each model
    assert "| Reply:⟦ Sure⟧ \\<script\\>alert(2)\\</script\\> \\|⏎ ×3 | 2.00 | 1.00 / 4.00 |" in md


def test_report_html_escapes_names_and_contexts(run_dir):
    report_main(run_dir)
    page = (run_dir / "report.html").read_text()
    assert "<img src=x" not in page and "<script>alert" not in page and "</script> |" not in page
    assert ("[evil](http://x.example) &lt;img src=x onerror=alert(1)&gt; &lt;script&gt;alert(3)&lt;/script&gt; | col"
            in page)
    assert page.count("<script") == 2  # the page's own data and code, nothing from a name or a context
    assert "http" not in page.split("<script")[0].split("</head>")[0]  # no external resource is loaded
    assert 'src="data:image/png;base64,' in page                         # figures travel inside the page


def test_which_changed_categories_account_for_a_delta():
    """By the headline measure alone: a signed change accounts for the tasks whose prompts engage its latents
    when its direction matches the delta (else it is named as opposite); an unsigned change accounts for its own
    task only; a task with no exposure row is judged by its own category."""
    heads = {"a": {"direction": "+", "value": 7.0}, "b": {"direction": None, "value": 5.0},
             "c": {"direction": "-", "value": 3.0}}
    changed = ["a", "b", "c"]
    rising = {"task": "t", "delta": 0.4, "category": "b"}
    assert accounting_categories(rising, changed, heads, {"a": 0.2, "c": 0.5}) == (["a", "b"], ["c"])
    assert accounting_categories(rising, changed, heads, {"a": 0.0, "c": 0.0}) == (["b"], [])  # not engaged
    falling = {"task": "u", "delta": -0.3, "category": "c"}
    assert accounting_categories(falling, changed, heads, None) == (["c"], [])
    assert accounting_categories({**falling, "category": "a"}, changed, heads, None) == ([], ["a"])
    # the larger exposure × log(1 + cue shift) comes first; an unsigned own category comes last
    assert accounting_categories({**rising, "delta": -0.1}, changed, heads, {"a": 0.0, "c": 0.9})[0] == ["c", "b"]
    assert accounting_categories(rising, ["a", "c"], {**heads, "c": {"direction": "+", "value": 3.0}},
                                 {"a": 0.1, "c": 0.5})[0] == ["c", "a"]


def test_the_baseline_is_named_as_the_row_measured_it():
    assert baseline_words({"baseline_from": "drift"}).startswith("the text around every answer cue (which")
    assert baseline_words({"baseline_from": "other_categories"}).startswith("at a typical other category's answer cues (")
    # rows of earlier versions: the other categories' cues alone, and before that (no `null`) the drift alone
    assert baseline_words({"null": "other_categories"}) == "at a typical other category's answer cues"
    assert baseline_words({}) == "the text around every answer cue"


def test_a_real_lm_validation_record_is_said_with_its_counts():
    record = {"organism": "pair_x", "command": "diffeval run …", "placebo_false": 2, "placebo": 9,
              "controls_false": 0, "controls": 0, "note": "Read it with care"}
    assert real_lm_line("cue_shift", record) == ("On a real LM, the organism pair_x (diffeval run …), cue_shift gave: "
                                                  "2 of 9 placebo categories flagged. Read it with care.")
    assert real_lm_line("cue_shift", {"organism": "y", "command": "c", "planted_found": 0, "planted": 2}).endswith(
        "gave: 0 of 2 planted changes found with the right sign.")


def test_a_validation_of_another_null_is_not_quoted_as_this_measures(run_dir):
    """validation.json holds for one (measure, null): a suite result measured against another null is not
    quoted, and the report says the measure's error rates are unknown."""
    report = build_report(run_dir)
    cats = {c["category"]: c for c in report["categories"]}
    v = {"measure": "cue_shift", "null": "drift", "diffeval_version": "0", "command": "c", "placebo_false": 0,
         "placebo": 9, "controls_false": 0, "controls": 6, "planted_found": 3, "planted": 3,
         "real_lm": [{"organism": "g", "command": "c", "planted_found": 0, "planted": 2}]}
    lines = sure_lines(report, cats, v, 0.05)
    assert not any("toy organism suite" in line or line.startswith("On a real LM") for line in lines)
    assert any("has no validation on the organism suite" in line for line in lines)
    same = sure_lines(report, cats, {**v, "null": "drift_or_other_categories"}, 0.05)
    assert any(line.endswith("found 3 of 3 planted changes with the right sign.") for line in same)
    assert any(line.startswith("On a real LM, the organism g") for line in same)


def test_the_suite_separation_is_said_where_the_validation_has_it():
    assert separation_clause(None) == "" and separation_clause({"auc": None}) == ""
    sep = {"auc": 0.947, "n_planted": 18, "n_unchanged": 74, "unchanged_max": 2.0, "planted_at_or_below_unchanged_max": 3}
    assert separation_clause(sep) == ("; a planted category's fold exceeded an unchanged one's in 94.7 % of pairs "
                                      "(ROC AUC), and 3 of 18 planted folds were no larger than the largest unchanged "
                                      "fold (2.00×)")
    assert separation_clause({**sep, "auc": 1.0, "planted_at_or_below_unchanged_max": 0}).endswith("in 100.0 % of pairs (ROC AUC)")
