"""Roofline model: datasheet peaks of reference GPUs, ceilings for the roofline figure, predicted times.

A case's time is bounded below by max(flops / peak FLOP/s, bytes / peak bandwidth) (Williams et al., 2009).
The measured ceilings come from the peaks each run measured itself (machine_info['qkbench']['peaks']); the
predictions for GPUs that did not run use vendor datasheet peaks (dense, no sparsity), which real kernels do
not reach (copy bandwidth is ~90% of HBM, GEMMs ~70-80% of tensor peak), so they are optimistic bounds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["DATASHEETS", "SHARED_BYTES_PER_BLOCK", "Datasheet", "ceilings", "compute_class", "predictions"]


@dataclass(frozen=True)
class Datasheet:
    """Vendor peaks of one GPU: HBM bandwidth (GB/s) and dense TFLOP/s (TOP/s for int8) per compute class."""

    name: str
    hbm_gbps: float
    fp32_tflops: float
    bf16_tflops: float
    int8_tops: float
    source: str

    def peak(self, klass: str) -> float:
        """Dense peak of a compute class ("fp32", "bf16" or "int8"), in TFLOP/s."""
        return {"fp32": self.fp32_tflops, "bf16": self.bf16_tflops, "int8": self.int8_tops}[klass]


DATASHEETS = (
    Datasheet("A100 SXM4 80GB", 2039.0, 19.5, 312.0, 624.0, "NVIDIA A100 datasheet (2021): HBM2e, dense tensor"),
    Datasheet("H100 SXM5 80GB", 3350.0, 67.0, 989.4, 1978.9, "NVIDIA H100 datasheet (2023): HBM3, dense tensor"),
)

# The most shared memory one block may use (opt-in), by target: A100 163 KiB, H100 227 KiB (CUDA C++ Programming
# Guide, "Technical Specifications per Compute Capability"). A config above it cannot launch there.
SHARED_BYTES_PER_BLOCK = {"sm_80": 163 * 1024, "sm_90": 227 * 1024}


def compute_class(precision: str) -> str:
    """The arithmetic a precision's matmul runs in: 4-bit formats dequantize to bf16, int8 uses int8 MMA."""
    if precision == "fp32" or precision.startswith("adamw") or precision.startswith("paged"):
        return "fp32"
    if precision == "int8":
        return "int8"
    return "bf16"


def ceilings(runs: pd.DataFrame, points: int = 64) -> pd.DataFrame:
    """Roofline lines from each run's measured peaks: a row per (run, ceiling, intensity) with attainable TFLOP/s.

    intensity: FLOP/byte from 1/8 to 4096, log-spaced; attainable = min(peak, intensity * copy bandwidth).
    """
    import numpy as np
    import pandas as pd

    intensity = np.logspace(-3, 12, points, base=2.0)
    measured = runs.dropna(subset=["copy_gbps"])
    if "int8_tops" not in measured.columns:  # results from before the suites measured it
        measured = measured.assign(int8_tops=float("nan"))
    rows = []
    # Runs with the same peaks share one set of lines, labelled with all their names.
    peaks = ["copy_gbps", "bf16_tflops", "fp32_tflops", "int8_tops"]
    for (bandwidth, bf16, fp32, int8), same in measured.groupby(peaks, dropna=False):
        names = ", ".join(map(str, same["run"]))
        for klass, peak in (("bf16", bf16), ("fp32", fp32), ("int8", int8)):
            if peak != peak:  # not measured (NaN)
                continue
            attainable = np.minimum(peak, intensity * bandwidth / 1e3)
            label = f"{klass} {peak:g} TFLOP/s, {bandwidth:g} GB/s ({names})"
            rows += [
                {"run": names, "ceiling": label, "intensity": x, "tflops": y}
                for x, y in zip(intensity, attainable, strict=True)
            ]
    return pd.DataFrame(rows, columns=["run", "ceiling", "intensity", "tflops"])


def predictions(cases: pd.DataFrame) -> pd.DataFrame:
    """Predicted lower-bound time of each distinct (op, precision, shape, M, rank) case on each datasheet GPU.

    Returns a row per case with, for each GPU, `<gpu> µs` (the bound, microseconds) and `<gpu> bound` ("memory"
    or "compute").
    """
    import pandas as pd

    keys = ["group", "op", "precision", "shape", "M", "N", "K", "rank"]
    timed = cases[(cases["group"] != "memory") & (cases["flops"] > 0) & (cases["bytes"] > 0)]
    # The least traffic among implementations: the bound of the best possible kernel for the case.
    distinct = timed.groupby(keys, dropna=False, observed=True, sort=True).agg(
        flops=("flops", "max"), bytes=("bytes", "min")
    )
    rows = []
    for key, case in distinct.iterrows():
        row = dict(zip(keys, key, strict=True))
        row["flops"], row["bytes"] = case["flops"], case["bytes"]
        klass = compute_class(str(row["precision"]))
        for sheet in DATASHEETS:
            compute = case["flops"] / (sheet.peak(klass) * 1e12)
            memory = case["bytes"] / (sheet.hbm_gbps * 1e9)
            row[f"{sheet.name} µs"] = 1e6 * max(compute, memory)
            row[f"{sheet.name} bound"] = "compute" if compute >= memory else "memory"
        rows.append(row)
    return pd.DataFrame(rows)
