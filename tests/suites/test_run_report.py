"""`python -m suites` end to end with its report: two groups of quick-profile cases, then --assemble."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _env() -> dict[str, str]:
    """This environment without pytest-xdist's worker variables (the child would take itself for a worker)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_XDIST_", "PYTEST_CURRENT_TEST"))}
    return {**env, "PYTHONPATH": str(ROOT)}


def test_bench_writes_results_and_report(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "suites", "--no-audit", "--out", str(tmp_path), "--profile", "quick"]
    command += ["-k", "(test_quantize and 1024x1024 and nf4) or (test_training_memory and llama-7b)"]
    done = subprocess.run(command, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    data = json.loads((tmp_path / "results.json").read_text())
    qk = data["machine_info"]["qkbench"]
    assert qk["profile"] == "quick" and qk["device_kind"] == "cpu"
    assert all(qk["peaks"][k] > 0 for k in ("copy_gbps", "bf16_tflops", "fp32_tflops", "int8_tops"))
    cases = data["benchmarks"]
    groups = Counter(b["extra_info"]["group"] for b in cases)
    assert groups["quantize"] == 4 and groups["memory"] == 5  # nf4, nf4-dq x qkbench, bitsandbytes; 5 methods
    for case in cases:
        info = case["extra_info"]
        assert info["status"] == "ok", info
        assert "flops" in info and "bytes" in info
        if info["group"] == "quantize":
            assert info["flops"] > 0 and info["bytes"] > 0 and info["time_s"] > 0
            # at least the profile's minimum of rounds, unless the case's time budget ran out first (a loaded CPU)
            assert case["stats"]["rounds"] >= 5 or info["stop"] == "timeout", info
            assert 0 < info["rmse"] < 0.2 and info["bits_per_param"] in (4.5, 4 + 8 / 64 + 32 / (64 * 256))
    assert (tmp_path / "report.md").read_text().startswith("# qkbench report")
    assert (tmp_path / "index.html").stat().st_size > 10_000
    # the parts stay beside results.json: --assemble rebuilds the same cases
    again = subprocess.run([*command[:3], "--assemble", "--no-report", "--out", str(tmp_path)], cwd=ROOT, env=_env())
    assert again.returncode == 0
    assert len(json.loads((tmp_path / "results.json").read_text())["benchmarks"]) == len(cases)
