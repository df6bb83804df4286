"""suites/record.py: the JSONL results parts, results.json assembled from them, and reports/ reading it."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import pytest_benchmark

from reports.load import load
from suites.measure import Case, Meter, Peaks, Profile
from suites.record import JsonlSink, assemble, environment, parts_dir
from suites.timing import Stopping
from tests.suites.test_measure import TinyFlush

ROOT = Path(__file__).resolve().parents[2]
PEAKS = {"copy_gbps": 40.0, "bf16_tflops": 1.0, "fp32_tflops": 0.25, "int8_tops": 1.5}
HEADER = {
    "machine_info": {
        "node": "ci",
        "cpu": {"brand_raw": "test cpu"},
        "qkbench": {"device": "cpu (2 threads)", "device_kind": "cpu", "profile": "quick", "peaks": PEAKS},
    },
    "commit_info": {"id": "0123abcd", "dirty": True, "branch": "main"},
    "datetime": "2026-11-25T00:00:00+00:00",
}


def _entry(name: str, precision: str = "nf4", status: str = "ok", time_s: float | None = 2e-3) -> dict[str, Any]:
    info = {
        "group": "quantize",
        "op": "quantize",
        "impl": "qkbench",
        "baseline": False,
        "precision": precision,
        "shape": "1024x1024",
        "model": None,
        "M": None,
        "N": 1024,
        "K": 1024,
        "rank": None,
        "flops": 4_194_304.0,
        "bytes": 4_784_128.0,
        "kernel": None,
        "time_s": time_s,
        "time_iqr_s": None if time_s is None else 1e-4,
        "tflops": None if time_s is None else 4_194_304.0 / time_s / 1e12,
        "gbps": None if time_s is None else 4_784_128.0 / time_s / 1e9,
        "status": status,
        "error": None if status == "ok" else "RuntimeError: boom",
        "telemetry": None,
        "rmse": 0.09,
    }
    stats = None if time_s is None else {"median": time_s, "iqr": 1e-4, "rounds": 5}
    fullname = f"suites/bench_quantize.py::{name}"
    return {"group": "quantize", "name": name, "fullname": fullname, "params": {}, "extra_info": info, "stats": stats}


def _write(out: Path, worker: str, entries: list[dict[str, Any]], header: dict[str, Any] = HEADER) -> Path:
    sink = JsonlSink(parts_dir(out) / f"{worker}.jsonl", header)
    for entry in entries:
        sink(entry)
    sink.close()
    return sink.path


def test_the_sink_writes_a_header_then_a_line_per_entry(tmp_path: Path) -> None:
    sink = JsonlSink(tmp_path / "deep" / "parts" / "main.jsonl", HEADER)
    sink(_entry("test_quantize[a]"))
    # on disk before close: a crash after the call loses nothing
    lines = sink.path.read_text().splitlines()
    assert [json.loads(line) for line in lines] == [{"header": HEADER}, _entry("test_quantize[a]")]
    sink({"path": tmp_path, "n": 1})  # not JSON by itself: written as text
    sink.close()
    assert json.loads(sink.path.read_text().splitlines()[-1]) == {"path": str(tmp_path), "n": 1}


def test_assemble_writes_pytest_benchmark_json(tmp_path: Path) -> None:
    entries = [_entry("test_quantize[nf4]"), _entry("test_quantize[fp4]", "fp4")]
    _write(tmp_path, "main", entries)
    path, count, problems = assemble(tmp_path)
    assert path == tmp_path / "results.json" and count == 2 and problems == []
    data = json.loads(path.read_text())
    assert list(data) == ["machine_info", "commit_info", "benchmarks", "datetime", "version"]
    assert data["machine_info"] == HEADER["machine_info"] and data["commit_info"] == HEADER["commit_info"]
    assert data["datetime"] == HEADER["datetime"] and data["version"] == pytest_benchmark.__version__
    assert data["benchmarks"] == entries
    assert not list(tmp_path.glob("*.tmp"))
    # again after one more case: the file is replaced, not appended to
    _write(tmp_path, "main", [_entry("test_quantize[int8]", "int8")])
    assert assemble(tmp_path)[1] == 3


def test_a_torn_last_line_is_a_problem_not_a_failure(tmp_path: Path) -> None:
    path = _write(tmp_path, "main", [_entry("test_quantize[nf4]"), _entry("test_quantize[fp4]", "fp4")])
    with path.open("a") as f:
        f.write(json.dumps(_entry("test_quantize[int8]", "int8"))[:57])  # killed mid-write
    out, count, problems = assemble(tmp_path)
    assert count == 2
    assert len(problems) == 1 and problems[0].startswith(f"{path}:4: not JSON")
    names = [b["name"] for b in json.loads(out.read_text())["benchmarks"]]
    assert names == ["test_quantize[nf4]", "test_quantize[fp4]"]


def test_nothing_to_assemble_names_the_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "parts")):
        assemble(tmp_path)
    parts_dir(tmp_path).mkdir()
    (parts_dir(tmp_path) / "notes.txt").write_text("not a part")
    with pytest.raises(FileNotFoundError, match="no results parts"):
        assemble(tmp_path)
    assert not (tmp_path / "results.json").exists()


def test_workers_parts_are_merged(tmp_path: Path) -> None:
    other = {**HEADER, "datetime": "2026-11-25T00:00:09+00:00"}
    _write(tmp_path, "gw1", [_entry("test_quantize[c]"), _entry("test_quantize[d]")], header=other)
    _write(tmp_path, "gw0", [_entry("test_quantize[a]"), _entry("test_quantize[b]")])
    path, count, problems = assemble(tmp_path)
    data = json.loads(path.read_text())
    assert count == 4 and problems == []
    assert [b["name"] for b in data["benchmarks"]] == [f"test_quantize[{c}]" for c in "abcd"]  # gw0 then gw1
    assert data["datetime"] == HEADER["datetime"]  # the first part's header


def test_reports_read_the_assembled_file(tmp_path: Path) -> None:
    entries = [
        _entry("test_quantize[nf4]"),
        _entry("test_quantize[fp4]", "fp4", time_s=4e-3),
        _entry("test_quantize[int8]", "int8", status="error", time_s=None),
    ]
    _write(tmp_path, "main", entries)
    path, _, _ = assemble(tmp_path)
    results = load([path])
    cases = results.cases.set_index("precision")
    assert len(results.cases) == 3 and set(cases["group"]) == {"quantize"} and set(cases["op"]) == {"quantize"}
    assert list(cases["status"]) == ["ok", "ok", "error"]
    assert cases.loc["fp4", "time_s"] == pytest.approx(4e-3) and cases.loc["nf4", "flops"] == 4_194_304.0
    assert cases.loc["int8", "error"] == "RuntimeError: boom" and cases.loc["nf4", "N"] == 1024
    assert set(cases["device"]) == {"cpu (2 threads)"}
    run = results.runs.iloc[0]
    assert run["profile"] == "quick" and run["copy_gbps"] == 40.0 and run["git_commit"] == "0123abcd"


def test_meter_records_to_parts_that_reports_read(tmp_path: Path) -> None:
    """Untimed cases (skipped, failed, computed) through a real Meter, sink, assemble and reports.load."""
    header = {"machine_info": {"qkbench": environment("quick", PEAKS, ROOT)}, "commit_info": {}, "datetime": None}
    sink = JsonlSink(parts_dir(tmp_path) / "main.jsonl", header)
    meter = Meter(Profile("t", 0, Stopping(0.01, 1, 1, 0.0, 1.0)), Peaks(**PEAKS), None, sink, flush=TinyFlush())

    def bench(name: str) -> Any:
        return SimpleNamespace(group=None, name=name, fullname=name, params={}, param=None, extra_info={}, stats=None)

    def fail() -> Any:
        raise RuntimeError("no kernel for this shape")

    lora = Case("lora", "lora_fwd", "qkbench", "nf4-dq", "1024x1024", None, 1, 1024, 1024, 8, 1.0, 2.0)
    meter.run(bench("test_lora[skip]"), lora, fail, skip="interpreted: not timed")
    meter.run(bench("test_lora[err]"), Case("lora", "lora_fwd", "unfused", "bf16", "1024x1024"), fail)
    memory = Case("memory", "training_memory", "model", "nf4-dq", "llama-7b", "llama-7b", rank=8)
    meter.record(bench("test_training_memory[qlora]"), memory, total_bytes=5e9, measured_bytes=None)
    sink.close()
    path, count, problems = assemble(tmp_path)
    assert count == 3 and problems == []
    results = load([path])
    cases = results.cases.set_index("name")
    assert list(cases["status"]) == ["skipped", "error", "ok"]
    assert cases.loc["test_lora[skip]", "error"] == "interpreted: not timed"
    assert cases.loc["test_lora[err]", "error"] == "RuntimeError: no kernel for this shape"
    assert cases.loc["test_lora[skip]", "rank"] == 8 and cases.loc["test_training_memory[qlora]", "group"] == "memory"
    assert cases.loc["test_training_memory[qlora]", "total_bytes"] == 5e9  # Meter.record keeps its metrics
    assert results.runs.iloc[0]["profile"] == "quick" and results.runs.iloc[0]["device_kind"] == "cpu"
    assert [b["group"] for b in json.loads(path.read_text())["benchmarks"]] == ["lora", "lora", "memory"]


def test_the_environment_carries_the_method_and_the_gpu_settings() -> None:
    """machine_info["qkbench"]: how the run measured, and (on a GPU) the settings that decide its speed."""
    from kernels.device import DEVICE

    method = {"timer": "perf_counter", "flush_bytes": 2**21, "stopping": {"noise": 0.03}}
    qk = environment("quick", PEAKS, ROOT, method=method, gpu={"power_limit_w": 700.0})
    assert qk["method"] == method and qk["peaks"] == PEAKS and qk["torch"] and qk["triton"]
    if DEVICE.type == "cuda":
        assert qk["gpu"]["power_limit_w"] == 700.0 and qk["gpu"]["nvml"] is True and qk["gpu"]["l2_bytes"] > 0
    else:
        assert qk["gpu"] is None  # the CPU: no GPU settings, whatever NVML said
