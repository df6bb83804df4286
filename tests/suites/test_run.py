"""`python -m suites` end to end on a few quick-profile quantize cases, and the size of the quick sweep."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
KEYWORD = "test_quantize and 1024x1024 and nf4"  # nf4 and nf4-dq, qkbench and bitsandbytes: 4 cases
MODULES = {"bench_quantize", "bench_matmul", "bench_lora", "bench_optim", "bench_memory", "bench_finetune"}


def _env() -> dict[str, str]:
    """This environment without pytest-xdist's worker variables (the child would take itself for a worker)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_XDIST_", "PYTEST_CURRENT_TEST"))}
    return {**env, "PYTHONPATH": str(ROOT)}


def _suites(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "suites", *args]
    return subprocess.run(command, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess[str], Path]:
    out = tmp_path_factory.mktemp("bench")
    done = _suites("--no-audit", "--no-report", "--profile", "quick", "--out", str(out), "-k", KEYWORD)
    return done, out


def _results(run: tuple[subprocess.CompletedProcess[str], Path]) -> dict[str, Any]:
    done, out = run
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    return json.loads((out / "results.json").read_text())


def test_help_lists_the_options() -> None:
    done = _suites("--help", timeout=60)
    assert done.returncode == 0
    for option in ("--profile", "-k", "--out", "--no-audit", "--no-report", "--assemble", "--cuda-graphs"):
        assert option in done.stdout


def test_the_selected_cases_are_measured(run: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    data = _results(run)
    cases = data["benchmarks"]
    assert len(cases) >= 2
    assert Counter((c["extra_info"]["impl"], c["extra_info"]["precision"]) for c in cases) == {
        ("qkbench", "nf4"): 1,
        ("qkbench", "nf4-dq"): 1,
        ("bitsandbytes", "nf4"): 1,
        ("bitsandbytes", "nf4-dq"): 1,
    }
    for case in cases:
        info = case["extra_info"]
        assert info["status"] == "ok" and info["error"] is None, info
        assert info["group"] == "quantize" and info["op"] == "quantize" and info["shape"] == "1024x1024"
        assert info["flops"] > 0 and info["bytes"] > 0
        assert info["flops"] == 4 * 1024 * 1024  # quantize_cost: 4 ops an element
        assert info["time_s"] > 0 and info["gbps"] > 0 and info["peak_mem_bytes"] > 4 * 1024 * 1024
        assert info["roofline_pct"] > 0 and 0 < info["rmse"] < 0.2
        assert case["stats"]["rounds"] >= 3 and case["stats"]["median"] == info["time_s"]


def test_the_run_records_its_environment(run: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    data = _results(run)
    qk = data["machine_info"]["qkbench"]
    assert qk["profile"] == "quick"
    assert qk["peaks"]["copy_gbps"] > 0 and qk["peaks"]["bf16_tflops"] > 0
    assert qk["torch"] and qk["triton"] and qk["python"] and qk["date"] == data["datetime"]
    assert data["version"] and isinstance(data["commit_info"], dict)


def test_the_parts_stay_beside_the_results(run: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    data = _results(run)
    _, out = run
    lines = [json.loads(line) for line in (out / "parts" / "main.jsonl").read_text().splitlines()]
    assert "header" in lines[0] and [line["name"] for line in lines[1:]] == [b["name"] for b in data["benchmarks"]]
    assert not (out / "report.md").exists()  # --no-report


def test_each_entry_has_its_group(run: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    """SCHEMA.md: each benchmark entry has name, fullname, group, params, stats, extra_info."""
    assert {c["group"] for c in _results(run)["benchmarks"]} == {"quantize"}


def test_the_quick_profile_collects_every_suite() -> None:
    command = [sys.executable, "-m", "pytest", "suites", "--collect-only", "-q", "-p", "no:cacheprovider"]
    command += ["--qkbench-profile", "quick"]
    done = subprocess.run(command, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    items = [line for line in done.stdout.splitlines() if "::" in line]
    per_module = Counter(Path(line.split("::")[0]).stem for line in items)
    assert set(per_module) == MODULES
    assert sum(per_module.values()) >= 60
    # quick: 2 shapes; quantize: 6 formats x 2 impls; dequantize: nf4, nf4-dq, fp4 x 2 impls, int8, fp16, bf16
    assert per_module["bench_quantize"] == 2 * 6 * 2 + 2 * (3 * 2 + 1 + 1 + 1)
    assert per_module["bench_finetune"] == 3 * 2 + 1  # qkbench, peft-bnb, peft at ranks 8 and 64; full fine-tuning
