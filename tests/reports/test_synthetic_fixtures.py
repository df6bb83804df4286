"""The synthetic H100 fixtures: what their generator writes, marked synthetic inside and in the report built from
them, in the current schema, and physically possible (nothing above the ceilings the file itself states)."""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import Any

import pytest

from reports.roofline import compute_class
from tests.reports.files import DATA, SYNTHETIC


def _data(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def test_the_committed_files_are_what_the_generator_writes() -> None:
    sys.path.insert(0, str(DATA))
    try:
        import make_synthetic
    finally:
        sys.path.remove(str(DATA))
    assert make_synthetic.main(["--check"]) == 0, "run tests/reports/data/make_synthetic.py"


@pytest.mark.parametrize("path", SYNTHETIC, ids=lambda p: p.stem)
def test_they_say_they_are_synthetic(path: Path) -> None:
    machine = _data(path)["machine_info"]
    assert machine["synthetic"] is True and machine["qkbench"]["synthetic"] is True
    assert "synthetic" in machine["node"] and machine["qkbench"]["device"].endswith("(synthetic)")
    assert machine["qkbench"]["git_commit"] is None  # no commit was measured


def test_the_report_built_from_them_says_so(compared: tuple[Path, Path]) -> None:
    markdown, html = compared
    assert markdown.read_text().splitlines()[0] == "# qkbench report: NVIDIA H100 80GB HBM3 (synthetic)"
    assert "NVIDIA H100 80GB HBM3 (synthetic)" in html.read_text()


@pytest.mark.parametrize("path", SYNTHETIC, ids=lambda p: p.stem)
def test_every_timed_case_is_physically_possible(path: Path) -> None:
    data = _data(path)
    qk = data["machine_info"]["qkbench"]
    peaks, gpu = qk["peaks"], qk["gpu"]
    ceiling = {"fp32": peaks["fp32_tflops"], "bf16": peaks["bf16_tflops"], "int8": peaks["int8_tops"]}
    assert peaks["copy_gbps"] < 3350 and peaks["bf16_tflops"] < 989.4 and peaks["int8_tops"] < 1978.9  # datasheet
    timed = [b for b in data["benchmarks"] if b["stats"] is not None]
    assert len(timed) > 60
    for bench in timed:
        info, stats = bench["extra_info"], bench["stats"]
        seconds = info["time_s"]
        assert seconds == stats["median"] == statistics.median(stats["data"]) and stats["rounds"] == info["rounds"]
        klass = compute_class(info["precision"], info["impl"], info["op"])
        compute_s = info["flops"] / (ceiling[klass] * 1e12)
        memory_s = info["bytes"] / (peaks["copy_gbps"] * 1e9)
        assert max(compute_s, memory_s) <= seconds, bench["name"]  # at or under the roofline
        assert info["roofline_pct"] <= 100 and info["roofline_flag"] is None
        assert info["telemetry"]["sm_clock_mhz"] <= gpu["sm_clock_max_mhz"]
        assert info["energy_power_w"] <= gpu["power_limit_w"] and 0 < info["energy_busy"] < 1
        assert info["stop"] in ("noise", "timeout", "max_rounds") and info["noisy"] == (info["noise"] > 0.005)
    assert any(b["extra_info"]["noisy"] for b in timed) or path.stem == "h100_b"  # run A shows a noisy case
