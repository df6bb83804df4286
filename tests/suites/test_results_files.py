"""suites/record.py: results parts on disk, results.json assembled from them, and reports/ reading it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from reports.load import load
from suites.record import JsonlSink, assemble, parts_dir

HEADER = {
    "machine_info": {
        "node": "test",
        "qkbench": {"device": "cpu (2 threads)", "device_kind": "cpu", "profile": "quick"},
    },
    "commit_info": {"id": "abc123", "dirty": False},
    "datetime": "2026-11-24T00:00:00+00:00",
}


def _entry(name: str, status: str = "ok") -> dict:
    info = {"group": "matmul", "op": "matmul", "impl": "torch", "precision": "bf16", "shape": "8x8", "M": 1}
    info.update(status=status, flops=2e3, bytes=1e3, time_s=1e-6 if status == "ok" else None)
    return {"group": "matmul", "name": name, "fullname": f"suites/bench_x.py::{name}", "params": {}, "extra_info": info}


def _write(out: Path, worker: str, names: list[str]) -> Path:
    sink = JsonlSink(parts_dir(out) / f"{worker}.jsonl", HEADER)
    for name in names:
        sink(_entry(name))
    sink.close()
    return sink.path


def test_each_case_is_a_line_after_the_header(tmp_path: Path) -> None:
    path = _write(tmp_path, "main", ["test_a[1]", "test_a[2]"])
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert lines[0] == {"header": HEADER}
    assert [line["name"] for line in lines[1:]] == ["test_a[1]", "test_a[2]"]


def test_assemble_writes_pytest_benchmark_json(tmp_path: Path) -> None:
    import pytest_benchmark

    _write(tmp_path, "main", ["test_a[1]", "test_a[2]"])
    path, count, problems = assemble(tmp_path)
    data = json.loads(path.read_text())
    assert path == tmp_path / "results.json" and count == 2 and problems == []
    assert set(data) == {"machine_info", "commit_info", "benchmarks", "datetime", "version"}
    assert data["machine_info"] == HEADER["machine_info"] and data["version"] == pytest_benchmark.__version__
    results = load([path])
    assert list(results.cases["name"]) == ["test_a[1]", "test_a[2]"]
    assert results.runs.loc[0, "device"] == "cpu (2 threads)"


def test_workers_parts_merge(tmp_path: Path) -> None:
    _write(tmp_path, "gw0", ["test_a[1]"])
    _write(tmp_path, "gw1", ["test_a[2]", "test_a[3]"])
    path, count, _ = assemble(tmp_path)
    assert count == 3
    assert sorted(b["name"] for b in json.loads(path.read_text())["benchmarks"]) == [
        "test_a[1]",
        "test_a[2]",
        "test_a[3]",
    ]


def test_a_line_cut_by_a_crash_costs_that_line_only(tmp_path: Path) -> None:
    path = _write(tmp_path, "main", ["test_a[1]", "test_a[2]"])
    with path.open("a") as f:
        f.write(json.dumps(_entry("test_a[3]"))[:40])  # the process died mid-write
    out, count, problems = assemble(tmp_path)
    assert count == 2
    assert len(problems) == 1 and "main.jsonl:4" in problems[0]
    assert len(load([out]).cases) == 2


def test_a_failed_case_keeps_its_row_and_status(tmp_path: Path) -> None:
    sink = JsonlSink(parts_dir(tmp_path) / "main.jsonl", HEADER)
    sink(_entry("test_a[ok]"))
    sink({**_entry("test_a[oom]", "oom"), "stats": None})
    sink.close()
    path, _, _ = assemble(tmp_path)
    cases = load([path]).cases.set_index("name")
    assert cases.loc["test_a[oom]", "status"] == "oom" and cases.loc["test_a[ok]", "status"] == "ok"


def test_nothing_to_assemble_names_the_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=str(parts_dir(tmp_path))):
        assemble(tmp_path)
