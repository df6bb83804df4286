"""The report's top flags about how the numbers were made: synthetic runs, noisy cases, differing timing methods.

The results are the committed synthetic H100 fixtures (tests/reports/data/make_synthetic.py), edited in memory."""

from __future__ import annotations

import json
from pathlib import Path

from reports import build

DATA = Path(__file__).parent / "data"


def _report(tmp_path: Path, *runs: dict) -> str:
    paths = []
    for i, run in enumerate(runs):
        path = tmp_path / f"run{i}.json"
        path.write_text(json.dumps(run))
        paths.append(path)
    markdown, _ = build(paths, tmp_path / "out")
    return Path(markdown).read_text()


def test_a_synthetic_run_is_flagged_first(tmp_path: Path) -> None:
    run = json.loads((DATA / "h100_a.json").read_text())
    text = _report(tmp_path, run)
    first = text.split("\n\n")[1]
    assert "SYNTHETIC data, made up rather than measured" in first
    del run["machine_info"]["qkbench"]["synthetic"]
    run["machine_info"].pop("synthetic", None)
    assert "SYNTHETIC" not in _report(tmp_path, run).split("## ")[0]


def test_noisy_cases_and_differing_methods_are_flagged(tmp_path: Path) -> None:
    a = json.loads((DATA / "h100_a.json").read_text())
    b = json.loads((DATA / "h100_a.json").read_text())
    for case in b["benchmarks"]:
        case["extra_info"]["noisy"] = True
    b["machine_info"]["qkbench"]["method"] = {**a["machine_info"]["qkbench"]["method"], "timer": "perf_counter"}
    head = _report(tmp_path, a, b).split("## ")[0]
    noisy_in_a = sum(bool(case["extra_info"].get("noisy")) for case in a["benchmarks"])
    assert f"{len(b['benchmarks']) + noisy_in_a} cases did not reach their noise target" in head
    assert "The runs' timing method differ" in head
