"""Results on disk as they come, and the results file assembled from them.

Each pytest process (the only one, or each pytest-xdist worker) appends every finished case to
`<out>/parts/<worker>.jsonl`, one line per case, flushed and fsynced: a crash loses nothing measured. Its first
line is the run's header (machine_info with the "qkbench" environment and peaks, commit_info). `assemble(out)`
turns the parts into `<out>/results.json` in pytest-benchmark's own schema (`--benchmark-json`: machine_info,
commit_info, benchmarks, datetime, version), which reports/ reads. `python -m suites --assemble` rebuilds it by
hand after a run that was killed.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

__all__ = ["JsonlSink", "assemble", "environment", "parts_dir"]


def parts_dir(out: Path) -> Path:
    return out / "parts"


class JsonlSink:
    """Appends JSON lines to one file, each flushed to disk before the call returns."""

    def __init__(self, path: Path, header: dict[str, Any]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._file = path.open("a", encoding="utf-8")
        self({"header": header})

    def __call__(self, entry: dict[str, Any]) -> None:
        self._file.write(json.dumps(entry, default=str) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()


def _git_commit(root: Path) -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def environment(
    profile: str,
    peaks: dict[str, float] | None,
    root: Path,
    method: dict[str, Any] | None = None,
    gpu: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """machine_info["qkbench"] (suites/SCHEMA.md): device, driver, versions, commit, date, profile, peaks, the
    measurement `method` (suites.measure.Meter.method) and, on a GPU, `gpu`: its properties from torch (compute
    capability, SMs, memory, L2) with NVML's settings (`gpu`, suites.telemetry.Telemetry.facts) over them."""
    import torch
    import triton

    from kernels.device import DEVICE, device_name

    try:
        import bitsandbytes

        bnb: str | None = bitsandbytes.__version__
    except Exception:  # absent, or failing to import on this machine
        bnb = None
    driver = None
    if DEVICE.type == "cuda":
        try:
            import pynvml

            pynvml.nvmlInit()
            version = pynvml.nvmlSystemGetDriverVersion()  # bytes in older nvidia-ml-py releases
            driver = version.decode() if isinstance(version, bytes) else str(version)
        except Exception:  # NVML absent: the driver stays unknown
            driver = None
    return {
        "device": device_name(),
        "device_kind": DEVICE.type,
        "driver": driver,
        "cuda": torch.version.cuda if DEVICE.type == "cuda" else None,
        "torch": torch.__version__,
        "triton": triton.__version__,
        "bitsandbytes": bnb,
        "python": platform.python_version(),
        "git_commit": _git_commit(root),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "profile": profile,
        "peaks": peaks,
        "method": method,
        "gpu": _gpu(gpu) if DEVICE.type == "cuda" else None,
    }


def _gpu(nvml: dict[str, Any] | None) -> dict[str, Any]:
    """The GPU's properties from torch, NVML's settings (None where NVML is not open) beside them."""
    import torch

    from kernels.device import DEVICE

    props = torch.cuda.get_device_properties(DEVICE)
    return {
        "capability": f"{props.major}.{props.minor}",
        "sms": props.multi_processor_count,
        "memory_bytes": props.total_memory,
        "l2_bytes": getattr(props, "L2_cache_size", None),
        "nvml": nvml is not None,
        **(nvml or {}),
    }


def _read_parts(out: Path) -> tuple[dict[str, Any] | None, list[dict[str, Any]], list[str]]:
    """(the first header, every case once, problems) from the parts files. A line that is not JSON (torn by a
    crash), or JSON that is neither a header nor a case (an object with a name and an extra_info object), is
    skipped and reported; a case written twice is kept once (the later copy where the two differ)."""
    header: dict[str, Any] | None = None
    cases: dict[str, tuple[str, dict[str, Any]]] = {}  # by fullname: (where first read, the entry)
    problems: list[str] = []
    for path in sorted(parts_dir(out).glob("*.jsonl")):
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            where = f"{path}:{number}"
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                problems.append(f"{where}: not JSON (a line cut short by a crash?); skipped")
                continue
            if isinstance(entry, dict) and isinstance(entry.get("header"), dict):
                if not isinstance(entry["header"].get("machine_info"), dict):
                    problems.append(f"{where}: a header without machine_info; skipped")
                else:
                    header = header or entry["header"]
                continue
            if not (
                isinstance(entry, dict)
                and isinstance(entry.get("name"), str)
                and isinstance(entry.get("extra_info"), dict)
            ):
                kind = "an object without name and extra_info" if isinstance(entry, dict) else type(entry).__name__
                problems.append(f"{where}: JSON but not a case ({kind}: {line[:60]}); skipped")
                continue
            key = str(entry.get("fullname") or entry["name"])
            if key in cases and cases[key][1] == entry:
                problems.append(f"{where}: a copy of {cases[key][0]} ({key}); kept once")
                continue
            if key in cases:
                problems.append(f"{where}: {key} again, with other values than {cases[key][0]}; the later kept")
            cases[key] = (where, entry)
    return header, [entry for _, entry in cases.values()], problems


def assemble(out: Path) -> tuple[Path, int, list[str]]:
    """Write `<out>/results.json` from the parts; returns (its path, the number of cases, problems met).

    Raises:
        FileNotFoundError: no parts under `<out>/parts` (nothing was run there).
    """
    import pytest_benchmark

    header, cases, problems = _read_parts(out)
    if header is None and not cases:
        raise FileNotFoundError(f"{parts_dir(out)}: no results parts (*.jsonl) to assemble; run `python -m suites`")
    if header is None:  # every header line torn: the cases stand, the environment is unknown
        problems.append(f"{parts_dir(out)}: no readable header line; the run's machine_info and commit_info are lost")
        header = {"machine_info": {}}
    results = {
        "machine_info": header["machine_info"],
        "commit_info": header.get("commit_info", {}),
        "benchmarks": cases,
        "datetime": header.get("datetime"),
        "version": pytest_benchmark.__version__,
    }
    path = out / "results.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=1, default=str), encoding="utf-8")
    tmp.replace(path)
    return path, len(cases), problems
