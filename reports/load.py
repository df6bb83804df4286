"""Results files (pytest-benchmark JSON, suites/SCHEMA.md) -> one tidy DataFrame, a row per case and run.

`load(paths)` validates each file at the boundary and raises `ReportError` naming the file and the problem
(missing, empty, not JSON, not pytest-benchmark's, not written by qkbench's suites). A qkbench file whose
machine_info lacks the 'qkbench' entry still loads, its environment unknown and the gap reported. Inside a valid
file a malformed case is not fatal: it is skipped and reported in `Results.problems`, so a partial run still
gives a partial report; a file with no case to report is refused. A measurement that is NaN or infinite is
dropped (missing, never shown as a number) and reported the same way. `to_long` gives the (case, metric, value)
form, STYLE §7's long table.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["CASE_KEY", "GROUPS", "METRICS", "ReportError", "Results", "load", "load_audit", "to_long"]

GROUPS = ("quantize", "matmul", "lora", "optim", "memory", "finetune")
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
    # the timing method (suites/timing.py): rounds, noise reached, throttled rounds, first call and compile, energy
    "rounds",
    "noise_target",
    "throttled_rounds",
    "first_call_s",
    "compile_s",
    "autotune_s",
    "energy_j",
    "energy_power_w",
    "energy_busy",
    "j_per_token",
    "j_per_gb",
    # fine-tuning: a training step of a small Llama (suites/bench_finetune.py)
    "tokens_per_s",
    "steps",
    "loss_first",
    "loss_last",
    "predicted_weights_bytes",
    "predicted_adapters_bytes",
    "predicted_gradients_bytes",
    "predicted_optimizer_bytes",
)
TEXT_FIELDS = ("timer", "stop", "noisy", "roofline_ceiling", "roofline_flag", "cuda_graph")  # per case, as text
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
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise ReportError(f"{path}: cannot read it ({exc.strerror or exc})") from None
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


def _number(value: Any) -> float | None:
    """A JSON number as a float (None for anything else, booleans included)."""
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _drop_non_finite(row: dict[str, Any], keys: tuple[str, ...], what: str) -> list[str]:
    """Set NaN and ±inf values of `row[keys]` to None (Python's json reads NaN, Infinity and overflowing literals:
    none is a measurement to show); returns the problem naming them, if any."""
    bad = [key for key in keys if row[key] is not None and not math.isfinite(row[key])]
    named = ", ".join(f"{key} = {row[key]}" for key in bad)
    for key in bad:
        row[key] = None
    return [f"{what}: non-finite {named}; not shown"] if bad else []


def _case_row(run: str, index: int, bench: Any) -> tuple[dict[str, Any] | None, list[str]]:
    """One benchmark entry -> (a row, or None when it cannot be one; the problems met)."""
    if not isinstance(bench, dict):
        return None, [f"{run}: benchmark #{index} is a {type(bench).__name__}, not an object; skipped"]
    name = str(bench.get("name", f"#{index}"))
    extra = bench.get("extra_info")
    if not isinstance(extra, dict) or not extra.get("group") or not extra.get("op"):
        return None, [f"{run}: benchmark {name!r} has no extra_info group/op; skipped"]
    row: dict[str, Any] = {"run": run, "name": name}
    for key in IDENTITY:
        row[key] = extra.get(key)
    row["status"] = extra.get("status") or "ok"
    row["error"] = extra.get("error")
    row["method"] = extra.get("method")
    row["rounds_s"] = _rounds(bench.get("stats"))  # raw rounds for reports.gate
    for key in TEXT_FIELDS:
        value = extra.get(key)
        row[key] = None if value is None else str(value)
    losses = extra.get("losses")
    if isinstance(losses, list) and losses:  # a fine-tuning case's loss per step: its first and last
        extra = {**extra, "loss_first": losses[0], "loss_last": losses[-1]}
    for key in METRICS:
        row[key] = _number(extra.get(key))
    stats = bench.get("stats")
    if row["time_s"] is None and row["status"] == "ok" and row["group"] != "memory" and isinstance(stats, dict):
        row["time_s"] = _number(stats.get("median"))
    telemetry: dict[str, Any] = extra["telemetry"] if isinstance(extra.get("telemetry"), dict) else {}
    for key in TELEMETRY:
        row[key] = _number(telemetry.get(key))
    reasons = telemetry.get("throttle_reasons")
    row["throttle_reasons"] = ", ".join(map(str, reasons)) if isinstance(reasons, list) else None
    problems = _drop_non_finite(row, (*METRICS, *TELEMETRY), f"{run}: benchmark {name!r}")
    if row["status"] not in STATUSES:
        problems.append(f"{run}: benchmark {name!r} has status {row['status']!r}, expected one of {STATUSES}")
    return row, problems


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
    row["synthetic"] = bool(qk.get("synthetic") or data["machine_info"].get("synthetic"))
    for key, name in (("method", "timing_method"), ("gpu", "gpu")):  # compared between runs (flags, reports.gate)
        row[name] = qk[key] if isinstance(qk.get(key), dict) else None
    return row


def load(paths: list[str | Path] | tuple[str | Path, ...]) -> Results:
    """Read one or several results files into one DataFrame (a row per case and run, runs in the given order).

    Raises:
        ReportError: no paths, or a file that is missing, empty, not JSON, not pytest-benchmark's, not qkbench's, or
            with no benchmark case that can be read.
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
        problems += _drop_non_finite(runs[-1], PEAKS, f"{label}: measured peaks")
        if not isinstance(data["machine_info"].get("qkbench"), dict):
            problems.append(f"{label}: no machine_info['qkbench'] in the file; its environment and peaks are unknown")
        if not data["benchmarks"]:
            raise ReportError(f"{path}: the file holds no benchmark cases; nothing to report")
        found = [_case_row(label, index, bench) for index, bench in enumerate(data["benchmarks"])]
        kept = [row for row, _ in found if row is not None]
        if not kept:
            raise ReportError(
                f"{path}: none of its {len(found)} benchmark entries is a qkbench case (an object with extra_info "
                "group and op); nothing to report"
            )
        rows += kept
        problems += [problem for _, met in found for problem in met]
    columns = ["run", "name", *IDENTITY, "method", "status", "error", *METRICS, *TELEMETRY, "throttle_reasons",
               *TEXT_FIELDS, "rounds_s"]  # fmt: skip
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
    from reports.predicted import PREDICTED_FIELDS

    frame = pd.DataFrame(data)
    for key in (*AUDIT_FIELDS, "status", "error"):
        if key not in frame.columns:
            frame[key] = None
    extra = [key for key in PREDICTED_FIELDS if key in frame.columns]  # the static model's fields, when present
    return frame[[*AUDIT_FIELDS, "status", "error", *extra]]
