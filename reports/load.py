"""Results files (pytest-benchmark JSON, suites/SCHEMA.md) -> one tidy DataFrame, a row per case and run.

`load(paths)` validates each file at the boundary and raises `ReportError` naming the file and the problem
(missing, empty, not JSON, not pytest-benchmark's, not written by qkbench's suites). A qkbench file whose
machine_info lacks the 'qkbench' entry still loads, its environment unknown and the gap reported. Inside a valid
file a malformed case is not fatal: it is skipped and reported in `Results.problems`, so a partial run still
gives a partial report. `to_long` gives the (case, metric, value) form, STYLE §7's long table.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["CASE_KEY", "GROUPS", "METRICS", "ReportError", "Results", "load", "load_audit", "to_long"]

GROUPS = ("quantize", "matmul", "lora", "optim", "memory")
CASE_KEY = ("group", "op", "impl", "precision", "shape", "M", "N", "K", "rank", "method")
IDENTITY = ("group", "op", "impl", "baseline", "precision", "shape", "model", "M", "N", "K", "rank", "kernel")
METRICS = (
    "flops",
    "bytes",
    "time_s",
    "time_iqr_s",
    "tflops",
    "gbps",
    "roofline_pct",
    "peak_mem_bytes",
    "err_max",
    "err_rel",
    "noise",  # relative standard error of the median the rounds reached
    # quantize
    "bits_per_param",
    "rmse",
    "sqnr_db",
    "numel",
    # optim
    "state_bytes_per_param",
    "page_ins",
    "page_outs",
    "bytes_moved",
    "peak_resident_bytes",
    "budget_bytes",
    # memory
    "params",
    "weights_bytes",
    "gradients_bytes",
    "optimizer_bytes",
    "adapters_bytes",
    "activations_bytes",
    "total_bytes",
    "measured_bytes",
)
TELEMETRY = ("sm_clock_mhz", "mem_clock_mhz", "power_w", "temp_c")
ENVIRONMENT = ("device", "device_kind", "driver", "cuda", "torch", "triton", "bitsandbytes", "python")
PEAKS = ("copy_gbps", "bf16_tflops", "fp32_tflops", "int8_tops")
STATUSES = ("ok", "oom", "error", "skipped")


class ReportError(ValueError):
    """A results or audit file that cannot be read; the message names the file and the problem."""


@dataclass(frozen=True)
class Results:
    """What `load` read: the cases (a row per case and run), the runs (a row per file) and the problems."""

    cases: pd.DataFrame
    runs: pd.DataFrame
    problems: list[str] = field(default_factory=list)


def _read_json(path: Path) -> Any:
    """Parsed JSON of `path`, or ReportError saying why not."""
    if not path.exists():
        raise ReportError(f"{path}: no such file")
    if path.is_dir():
        raise ReportError(f"{path}: is a directory, expected a results JSON file")
    text = path.read_text(encoding="utf-8", errors="replace")
    if not text.strip():
        raise ReportError(f"{path}: empty file, expected pytest-benchmark JSON (--benchmark-json)")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ReportError(f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None


def _check_results(path: Path, data: Any) -> dict[str, Any]:
    """The top level of a qkbench results file, checked against SCHEMA.md."""
    if not isinstance(data, dict):
        raise ReportError(f"{path}: not a pytest-benchmark results file (top level is a {type(data).__name__})")
    expected = ("machine_info", "benchmarks", "datetime", "version")
    absent = [key for key in expected if key not in data]
    if absent:
        raise ReportError(f"{path}: not a pytest-benchmark results file (missing keys: {', '.join(absent)})")
    if not isinstance(data["benchmarks"], list):
        raise ReportError(f"{path}: 'benchmarks' is a {type(data['benchmarks']).__name__}, expected a list")
    if not isinstance(data["machine_info"], dict):
        raise ReportError(f"{path}: 'machine_info' is a {type(data['machine_info']).__name__}, expected an object")
    ours = any(
        isinstance(b, dict) and isinstance(b.get("extra_info"), dict) and b["extra_info"].get("op")
        for b in data["benchmarks"]
    )
    if not isinstance(data["machine_info"].get("qkbench"), dict) and (data["benchmarks"] and not ours):
        raise ReportError(
            f"{path}: pytest-benchmark JSON, but not from qkbench's suites "
            "(no machine_info['qkbench'] and no case with extra_info op/group)"
        )
    return data


def _run_labels(paths: list[Path]) -> list[str]:
    """Short unique labels: the file stem, with its folder when stems repeat, numbered as a last resort."""
    labels = [p.stem for p in paths]
    if len(set(labels)) < len(labels):
        labels = [f"{p.parent.name}/{p.stem}" if p.parent.name else p.stem for p in paths]
    if len(set(labels)) < len(labels):
        labels = [f"{label}#{i + 1}" for i, label in enumerate(labels)]
    return labels


def _case_row(run: str, index: int, bench: Any) -> tuple[dict[str, Any] | None, str | None]:
    """One benchmark entry -> a row, or (None, why) when it cannot be one."""
    if not isinstance(bench, dict):
        return None, f"{run}: benchmark #{index} is a {type(bench).__name__}, not an object; skipped"
    name = str(bench.get("name", f"#{index}"))
    extra = bench.get("extra_info")
    if not isinstance(extra, dict) or not extra.get("group") or not extra.get("op"):
        return None, f"{run}: benchmark {name!r} has no extra_info group/op; skipped"
    row: dict[str, Any] = {"run": run, "name": name}
    for key in IDENTITY:
        row[key] = extra.get(key)
    row["status"] = extra.get("status") or "ok"
    row["error"] = extra.get("error")
    row["method"] = extra.get("method")
    row["timer"] = extra.get("timer")
    row["rounds_s"] = _rounds(bench.get("stats"))  # raw rounds for reports.gate
    for key in METRICS:
        value = extra.get(key)
        row[key] = float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
    stats = bench.get("stats")
    if row["time_s"] is None and row["status"] == "ok" and row["group"] != "memory" and isinstance(stats, dict):
        median = stats.get("median")
        row["time_s"] = float(median) if isinstance(median, int | float) else None
    telemetry: dict[str, Any] = extra["telemetry"] if isinstance(extra.get("telemetry"), dict) else {}
    for key in TELEMETRY:
        value = telemetry.get(key)
        row[key] = float(value) if isinstance(value, int | float) else None
    reasons = telemetry.get("throttle_reasons")
    row["throttle_reasons"] = ", ".join(map(str, reasons)) if isinstance(reasons, list) else None
    if row["status"] not in STATUSES:
        return row, f"{run}: benchmark {name!r} has status {row['status']!r}, expected one of {STATUSES}"
    return row, None


def _rounds(stats: Any) -> tuple[float, ...] | None:
    """The raw round times (stats.data, seconds), or None where absent or not all finite numbers >= 0."""
    data = stats.get("data") if isinstance(stats, dict) else None
    if not isinstance(data, list) or not data:
        return None
    ok = all(isinstance(t, int | float) and not isinstance(t, bool) and 0 <= t < float("inf") for t in data)
    return tuple(float(t) for t in data) if ok else None


def _run_row(run: str, path: Path, data: dict[str, Any]) -> dict[str, Any]:
    """The environment of one run (machine_info['qkbench'] and commit_info; empty where the suite left it out)."""
    qk: dict[str, Any] = data["machine_info"].get("qkbench") or {}
    commit: dict[str, Any] = data.get("commit_info") or {}
    row: dict[str, Any] = {"run": run, "file": str(path)}
    for key in ENVIRONMENT:
        row[key] = qk.get(key)
    row["git_commit"] = qk.get("git_commit") or commit.get("id")
    row["dirty"] = commit.get("dirty")
    row["date"] = qk.get("date") or data.get("datetime")
    row["profile"] = qk.get("profile")
    peaks: dict[str, Any] = qk["peaks"] if isinstance(qk.get("peaks"), dict) else {}
    for key in PEAKS:
        value = peaks.get(key)
        row[key] = float(value) if isinstance(value, int | float) else None
    row["pytest_benchmark"] = data.get("version")
    for key, name in (("method", "timing_method"), ("gpu", "gpu")):  # reports.gate compares them between runs
        row[name] = qk[key] if isinstance(qk.get(key), dict) else None
    return row


def load(paths: list[str | Path] | tuple[str | Path, ...]) -> Results:
    """Read one or several results files into one DataFrame (a row per case and run, runs in the given order).

    Raises:
        ReportError: no paths, or a file that is missing, empty, not JSON, not pytest-benchmark's, or not qkbench's.
    """
    import pandas as pd

    if not paths:
        raise ReportError("no results files given; expected one or more pytest-benchmark JSON files")
    files = [Path(p) for p in paths]
    labels = _run_labels(files)
    rows: list[dict[str, Any]] = []
    runs: list[dict[str, Any]] = []
    problems: list[str] = []
    for label, path in zip(labels, files, strict=True):
        data = _check_results(path, _read_json(path))
        runs.append(_run_row(label, path, data))
        if not isinstance(data["machine_info"].get("qkbench"), dict):
            problems.append(f"{label}: no machine_info['qkbench'] in the file; its environment and peaks are unknown")
        if not data["benchmarks"]:
            problems.append(f"{label}: the file holds no benchmark cases")
        for index, bench in enumerate(data["benchmarks"]):
            row, problem = _case_row(label, index, bench)
            if row is not None:
                rows.append(row)
            if problem:
                problems.append(problem)
    columns = ["run", "name", *IDENTITY, "method", "timer", "status", "error", *METRICS, *TELEMETRY, "throttle_reasons"]
    columns.append("rounds_s")
    cases = pd.DataFrame(rows, columns=columns)
    run_frame = pd.DataFrame(runs)
    cases = cases.merge(run_frame[["run", "device", "device_kind"]], on="run", how="left")
    cases["run"] = pd.Categorical(cases["run"], categories=labels, ordered=True)
    for key in ("M", "N", "K", "rank"):
        cases[key] = pd.to_numeric(cases[key], errors="coerce").astype("Int64")
    for key in (*METRICS, *TELEMETRY):
        cases[key] = pd.to_numeric(cases[key], errors="coerce").astype("float64")
    cases["baseline"] = cases["baseline"].fillna(False).astype(bool)
    return Results(cases=cases, runs=run_frame, problems=problems)


def to_long(cases: pd.DataFrame, metrics: tuple[str, ...] = METRICS) -> pd.DataFrame:
    """The tidy long form: a row per (run, case key, metric, value), values present only (STYLE §7)."""
    present = [m for m in metrics if m in cases.columns]
    ids = ["run", "device", *CASE_KEY, "status"]
    long = cases.melt(id_vars=ids, value_vars=present, var_name="metric", value_name="value")
    return long.dropna(subset=["value"]).reset_index(drop=True)


AUDIT_FIELDS = ("kernel", "config", "target", "registers", "spill_bytes", "stack_bytes", "shared_bytes", "mma", "wgmma")


def load_audit(path: str | Path) -> pd.DataFrame:
    """The static kernel audit (kernels/audit.py's JSON list of rows) as a DataFrame, a row per (kernel, config,
    target).

    Raises:
        ReportError: the file is missing, empty, not JSON, not a list of objects, or rows lack the audit fields.
    """
    import pandas as pd

    path = Path(path)
    data = _read_json(path)
    if not isinstance(data, list) or not all(isinstance(row, dict) for row in data):
        raise ReportError(f"{path}: not a kernel audit (expected a JSON list of row objects, see suites/SCHEMA.md)")
    for index, row in enumerate(data):
        absent = [key for key in ("kernel", "config", "target") if key not in row]
        if absent:
            raise ReportError(f"{path}: audit row #{index} lacks {', '.join(absent)}")
    frame = pd.DataFrame(data)
    for key in (*AUDIT_FIELDS, "status", "error"):
        if key not in frame.columns:
            frame[key] = None
    return frame[[*AUDIT_FIELDS, "status", "error"]]
