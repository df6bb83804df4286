"""pytest plumbing of the suites: options, the profile's grid, the `meter` that measures and records.

Options (`python -m suites` passes them; see its --help):
    --qkbench-profile quick|full   the sweep (default: the device's, `kernels.device.default_profile`)
    --qkbench-out DIR              where the results parts go (default reports/latest)
    --qkbench-cuda-graphs          replay launch-bound cases from CUDA graphs

Each test marked with `shapes.sweep(params)` is parametrized with `params(grid)`. Under pytest-xdist every
worker takes one GPU (worker i: device i mod count), keeps pytest-benchmark enabled (it switches itself off
under xdist because parallel timing on one device is meaningless; one device per worker makes it sound) and
writes its own parts file.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from kernels.device import DEVICE, default_profile
from suites.measure import Meter, measure_peaks
from suites.record import JsonlSink, environment, parts_dir
from suites.shapes import GRIDS, PROFILES, Grid
from suites.telemetry import open_telemetry
from suites.timing import default_timer

ROOT = Path(__file__).resolve().parent.parent


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("qkbench")
    group.addoption("--qkbench-profile", choices=sorted(PROFILES), default=None, help="sweep (default: the device's)")
    group.addoption("--qkbench-out", default=str(ROOT / "reports" / "latest"), help="results folder")
    group.addoption("--qkbench-cuda-graphs", action="store_true", help="replay launch-bound cases from CUDA graphs")


def _worker() -> str | None:
    return os.environ.get("PYTEST_XDIST_WORKER")


@pytest.hookimpl(trylast=True)
def pytest_configure(config: pytest.Config) -> None:
    # memory-model cases record computed numbers and never time: pytest-benchmark's "fixture not used" is expected
    config.addinivalue_line("filterwarnings", "ignore:Benchmark fixture was not used")
    worker = _worker()
    if worker is None:
        return
    if DEVICE.type == "cuda":
        torch.cuda.set_device(int(worker.removeprefix("gw")) % torch.cuda.device_count())
    session = getattr(config, "_benchmarksession", None)
    if session is not None:  # pytest-benchmark's own switch-off under xdist (see the module docstring)
        session.disabled = False
        session.xdist_warning = False


def _profile_name(config: pytest.Config) -> str:
    return config.getoption("--qkbench-profile") or default_profile()


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    params = getattr(metafunc.function, "_qkbench_sweep", None)
    if params is None:
        return
    rows = params(GRIDS[_profile_name(metafunc.config)])
    if not rows:
        pytest.skip(f"{metafunc.function.__name__}: no cases in this profile")
    names = list(rows[0])
    ids = ["-".join(str(v) for v in row.values() if v is not None) for row in rows]
    metafunc.parametrize(names, [tuple(row[n] for n in names) for row in rows], ids=ids)


@pytest.fixture(scope="session")
def grid(pytestconfig: pytest.Config) -> Grid:
    return GRIDS[_profile_name(pytestconfig)]


@pytest.fixture(scope="session")
def meter(pytestconfig: pytest.Config) -> Any:
    """The session's Meter: device peaks measured once by the cases' timer, the header (machine_info with the
    environment, the method and the GPU's settings), then every case appended to this process's parts file."""
    name = _profile_name(pytestconfig)
    profile = PROFILES[name]
    if pytestconfig.getoption("--qkbench-cuda-graphs"):
        profile = type(profile)(**{**vars(profile), "cuda_graphs": True})
    timer = default_timer(DEVICE)
    peaks = measure_peaks(timer)
    telemetry = open_telemetry(torch.cuda.current_device()) if DEVICE.type == "cuda" else None  # NVML: by PCI id
    out = Path(pytestconfig.getoption("--qkbench-out"))
    sinks: list[JsonlSink] = []

    def record(entry: dict[str, Any]) -> None:
        sinks[0](entry)
        info = entry["extra_info"]
        if info["status"] in ("error", "oom") and _worker() is None:
            print(f"\n  {entry['name']}: {info['status']}: {info['error']}", file=sys.stderr)

    meter = Meter(profile, peaks, telemetry, record, timer=timer)
    hook = pytestconfig.hook
    machine = hook.pytest_benchmark_generate_machine_info(config=pytestconfig)
    gpu = telemetry.facts() if telemetry is not None else None
    machine["qkbench"] = environment(name, vars(peaks), ROOT, method=meter.method(), gpu=gpu)
    header = {
        "machine_info": machine,
        "commit_info": hook.pytest_benchmark_generate_commit_info(config=pytestconfig),
        "datetime": machine["qkbench"]["date"],
    }
    sinks.append(JsonlSink(parts_dir(out) / f"{_worker() or 'main'}.jsonl", header))
    yield meter
    sinks[0].close()
