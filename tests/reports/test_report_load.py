"""load: results files -> one tidy DataFrame; clear errors for bad files; partial runs stay readable."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from reports.load import CASE_KEY, GROUPS, ReportError, load, load_audit, to_long
from tests.reports.files import AUDIT, CPU, RUN_A, RUN_B


def test_one_row_per_case_and_run():
    results = load([RUN_A, RUN_B])
    cases = results.cases
    expected = sum(len(json.loads(p.read_text())["benchmarks"]) for p in (RUN_A, RUN_B))
    assert len(cases) == expected
    assert list(cases["run"].cat.categories) == ["h100_a", "h100_b"]
    assert set(cases["group"]) == set(GROUPS) - {"finetune"}  # make_synthetic.py models no fine-tuning step
    assert {"run", "device", *CASE_KEY, "time_s", "tflops", "roofline_pct", "sm_clock_mhz"} <= set(cases.columns)
    assert cases["device"].eq("NVIDIA H100 80GB HBM3 (synthetic)").all()  # make_synthetic.py's, and says so
    assert list(results.runs["run"]) == ["h100_a", "h100_b"]
    assert results.runs.loc[0, "bf16_tflops"] == pytest.approx(712.0)
    assert results.problems == []


def test_values_come_from_extra_info():
    cases = load([RUN_A]).cases
    row = cases[(cases["op"] == "matmul") & (cases["impl"] == "qkbench") & (cases["M"] == 1)]
    row = row[row["shape"] == "llama2-7b.q+k+v+o"].iloc[0]
    assert row["precision"] == "nf4" and row["N"] == 4096 and row["K"] == 4096
    assert row["flops"] == 2 * 1 * 4096 * 4096
    assert row["time_s"] == pytest.approx(row["flops"] / row["tflops"] / 1e12)
    oom = cases[cases["status"] == "oom"].iloc[0]
    assert oom["time_s"] != oom["time_s"]  # NaN: a case that did not run has no time
    assert "out of memory" in oom["error"]


def test_to_long_is_one_value_per_row():
    cases = load([CPU]).cases
    long = to_long(cases)
    assert {"run", "op", "impl", "metric", "value"} <= set(long.columns)
    assert long["value"].notna().all()
    n_times = cases["time_s"].notna().sum()
    assert (long["metric"] == "time_s").sum() == n_times


def test_same_stem_runs_get_distinct_labels(tmp_path: Path):
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(CPU.read_text())
    results = load([tmp_path / "a" / "results.json", tmp_path / "b" / "results.json"])
    assert list(results.runs["run"]) == ["a/results", "b/results"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "no such file"),
        ("", "empty file"),
        ("  \n", "empty file"),
        ('{"benchmarks": [', "not valid JSON (line 1"),
        ("[1, 2]", "not a pytest-benchmark results file (top level is a list)"),
        ('{"name": "package.json"}', "missing keys: machine_info, benchmarks, datetime, version"),
        (
            '{"machine_info": {}, "benchmarks": [{"name": "t", "extra_info": {}}], "datetime": "x", "version": "5"}',
            "pytest-benchmark JSON, but not from qkbench's suites",
        ),
        ('{"machine_info": [], "benchmarks": [], "datetime": "x", "version": "5"}', "'machine_info' is a list"),
        ('{"machine_info": {"qkbench": {}}, "benchmarks": {}, "datetime": "x", "version": "5"}', "expected a list"),
        (
            '{"machine_info": {"qkbench": {}}, "benchmarks": [], "datetime": "x", "version": "5"}',
            "the file holds no benchmark cases; nothing to report",
        ),
        (
            '{"machine_info": {"qkbench": {}}, "benchmarks": [42, {"name": "t"}], "datetime": "x", "version": "5"}',
            "none of its 2 benchmark entries is a qkbench case",
        ),
    ],
    ids=[
        "missing",
        "empty",
        "blank",
        "corrupt",
        "list",
        "foreign",
        "not-qkbench",
        "machine-info-list",
        "not-list",
        "no-benchmarks",
        "no-case",
    ],
)
def test_bad_files_name_the_file_and_the_problem(tmp_path: Path, content: str | None, message: str):
    path = tmp_path / "results.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ReportError, match=r"results\.json") as info:
        load([RUN_A, path])
    assert message in str(info.value)


def test_no_paths():
    with pytest.raises(ReportError, match="no results files"):
        load([])


def test_malformed_cases_are_skipped_and_reported(tmp_path: Path):
    data = json.loads(CPU.read_text())
    data["benchmarks"][0]["extra_info"] = {}
    data["benchmarks"].append("not a case")
    path = tmp_path / "partial.json"
    path.write_text(json.dumps(data))
    results = load([path])
    assert len(results.cases) == len(data["benchmarks"]) - 2
    assert len(results.problems) == 2
    assert all(p.startswith("partial:") for p in results.problems)


def test_audit():
    audit = load_audit(AUDIT)
    assert {"kernel", "config", "target", "registers", "spill_bytes", "shared_bytes", "mma", "wgmma"} <= set(audit)
    assert set(audit["target"]) == {"sm_80", "sm_90"}


def test_audit_errors(tmp_path: Path):
    path = tmp_path / "audit.json"
    path.write_text('{"kernel": "x"}')
    with pytest.raises(ReportError, match=r"audit.json: not a kernel audit"):
        load_audit(path)
    path.write_text('[{"kernel": "x"}]')
    with pytest.raises(ReportError, match="lacks config, target"):
        load_audit(path)


def test_results_without_machine_info_still_load(tmp_path: Path):
    data = json.loads(CPU.read_text())
    del data["machine_info"]["qkbench"]
    path = tmp_path / "bare.json"
    path.write_text(json.dumps(data))
    results = load([path])
    assert len(results.cases) == len(data["benchmarks"])
    assert results.runs.loc[0, "device"] is None
    assert results.problems == ["bare: no machine_info['qkbench'] in the file; its environment and peaks are unknown"]


def test_non_finite_measurements_are_problems_not_numbers(tmp_path: Path):
    data = json.loads(CPU.read_text())
    first, second = data["benchmarks"][0], data["benchmarks"][1]
    first["extra_info"].update(time_s=float("nan"), gbps=float("inf"))
    second["extra_info"]["rmse"] = float("-inf")
    second["extra_info"]["telemetry"] = {"power_w": float("nan"), "sm_clock_mhz": 1500}
    data["machine_info"]["qkbench"]["peaks"]["copy_gbps"] = float("inf")
    path = tmp_path / "odd.json"
    path.write_text(json.dumps(data))  # Python writes NaN and Infinity, which json (and pytest-benchmark) read back
    text = path.read_text()
    assert "NaN" in text and "-Infinity" in text
    results = load([path])
    cases = results.cases.set_index("name")
    assert cases.loc[first["name"], ["time_s", "gbps"]].isna().all()
    assert cases.loc[second["name"], ["rmse", "power_w"]].isna().all()
    assert cases.loc[second["name"], "sm_clock_mhz"] == 1500
    assert results.runs.loc[0, "copy_gbps"] is None
    assert results.problems == [
        "odd: measured peaks: non-finite copy_gbps = inf; not shown",
        f"odd: benchmark {first['name']!r}: non-finite time_s = nan, gbps = inf; not shown",
        f"odd: benchmark {second['name']!r}: non-finite rmse = -inf, power_w = nan; not shown",
    ]
