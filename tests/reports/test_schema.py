"""report.json validation: the contract's keys and types, null where undefined, safe read and write."""

from __future__ import annotations

import copy
import json

import pytest

from diffeval.reports.schema import (
    SCHEMA_VERSION,
    ReportError,
    load_report,
    validate_report,
    write_report_json,
)


def _model(spec: str) -> dict:
    return {"spec": spec, "revision": "abc123", "n_layers": 2, "d_model": 64}


def valid_report() -> dict:
    return {
        "schema_version": SCHEMA_VERSION, "created": "2026-01-01T00:00:00+00:00", "diffeval_version": "0.1.0",
        "models": {"base": _model("base"), "tuned": _model("tuned"), "reference": None},
        "tasks": [{"task": "ifeval_mini", "category": "instruction_following", "metric": "acc", "n": 50,
                   "base": 0.2, "tuned": 0.6, "delta": 0.4, "ci_low": 0.25, "ci_high": 0.55, "p_value": 1e-4}],
        "crosscoder": {"layer": 1, "architecture": "batchtopk", "n_latents": 256, "k": 8, "tokens": 20000,
                       "fve": {"base": 0.8, "tuned": 0.78}, "l0": 8.0, "dead_fraction": 0.05},
        "latent_classes": {"tuned_only": 10, "base_only": 4, "shared": 200, "other": 30, "dead": 12},
        "headline_measure": "cue_shift",
        "categories": [{"category": "safety", "n_tuned": 3, "n_base": 0, "N_tuned": 10, "N_base": 4,
                        "shift": None, "ci_low": None, "ci_high": None, "p_value": 0.5, "mass_shift": 0.2,
                        "headline": {"value": 7.2, "ci_low": 5.1, "ci_high": 9.3, "p_value": 2.5e-4, "q_value": 1e-3,
                                     "significant": True}}],
        "attribution": {"spearman": 0.9, "p_value": 0.03,
                        "per_task": [{"task": "ifeval_mini", "delta": 0.4, "predicted": 0.3,
                                      "contributions": {"safety": 0.1, "instruction_following": 0.2}}]},
        "causal": [],
        "provenance": {"config_hash": "deadbeef", "packages": {"torch": "2.4.0"}, "timings": {"bench": 3.2}},
    }


def test_a_schema_1_report_without_the_headline_measure_still_reads():
    report = valid_report()
    report["schema_version"] = 1
    del report["headline_measure"]
    del report["categories"][0]["headline"]
    validate_report(report)
    report["schema_version"] = 2
    with pytest.raises(ReportError, match="report lacks required key.s. headline_measure"):
        validate_report(report)


def test_valid_report_passes_and_extra_keys_are_allowed():
    report = valid_report()
    report["headline"] = "anything"
    report["categories"][0]["small_counts"] = True
    report["models"]["base"]["organism"] = "toyworld"
    validate_report(report)


@pytest.mark.parametrize("mutate, path, valid", [
    (lambda r: r.pop("crosscoder"), "report", "crosscoder"),
    (lambda r: r["tasks"][0].pop("p_value"), "report.tasks[0]", "p_value"),
    (lambda r: r["tasks"][0].update(delta="0.4"), "report.tasks[0].delta", "expected a number"),
    (lambda r: r["tasks"][0].update(delta=None), "report.tasks[0].delta", "expected a number"),
    (lambda r: r["categories"][0].update(n_tuned=True), "report.categories[0].n_tuned", "expected an int"),
    (lambda r: r["categories"][0].update(n_tuned=2.5), "report.categories[0].n_tuned", "expected an int"),
    (lambda r: r["crosscoder"]["fve"].update(base=float("nan")), "report.crosscoder.fve.base", "finite"),
    (lambda r: r["attribution"]["per_task"][0]["contributions"].update(safety="x"),
     "report.attribution.per_task[0].contributions.safety", "expected a number"),
    (lambda r: r.update(causal={}), "report.causal", "expected a list"),
    (lambda r: r["models"].update(reference="tuned"), "report.models.reference", "expected an object"),
    (lambda r: r.update(schema_version="1"), "report.schema_version", "expected an int"),
    (lambda r: r.update(schema_version=SCHEMA_VERSION + 1), "report.schema_version", "newer diffeval"),
])
def test_invalid_report_names_key_path_and_what_is_valid(mutate, path, valid):
    report = valid_report()
    mutate(report)
    with pytest.raises(ReportError) as err:
        validate_report(report)
    assert path in str(err.value)
    assert valid in str(err.value)


def test_not_an_object_is_rejected():
    with pytest.raises(ReportError, match="report is a list; expected an object"):
        validate_report([])


def test_write_then_load_round_trips(tmp_path):
    path = write_report_json(tmp_path / "report.json", valid_report())
    assert load_report(path) == valid_report()


def test_invalid_report_is_not_written_and_old_file_survives(tmp_path):
    path = write_report_json(tmp_path / "report.json", valid_report())
    before = path.read_bytes()
    bad = copy.deepcopy(valid_report())
    del bad["tasks"][0]["delta"]
    with pytest.raises(ReportError, match="delta"):
        write_report_json(path, bad)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]  # no temporary file left behind


@pytest.mark.parametrize("text, message", [
    ('{"schema_version": 1,', "not valid JSON"),
    ("", "not valid JSON"),
    ('{"schema_version": NaN}', "NaN, which is not JSON"),
    ("[1, 2]", "expected an object"),
])
def test_malformed_file_is_rejected_on_read(tmp_path, text, message):
    path = tmp_path / "report.json"
    path.write_text(text)
    with pytest.raises(ReportError, match=message) as err:
        load_report(path)
    assert str(path) in str(err.value)


def test_schema_violation_on_read_names_file_and_key(tmp_path):
    report = valid_report()
    report["latent_classes"]["dead"] = "many"
    path = tmp_path / "report.json"
    path.write_text(json.dumps(report))
    with pytest.raises(ReportError, match=r"report\.latent_classes\.dead is a string"):
        load_report(path)


def test_missing_file_says_how_to_make_it(tmp_path):
    with pytest.raises(ReportError, match="diffeval report"):
        load_report(tmp_path / "nope.json")
