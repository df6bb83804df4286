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

__all__ = [
    "DATASHEETS",
    "ELEMENTWISE_OPS",
    "GEMM_OPS",
    "INT8_MMA_IMPLS",
    "Datasheet",
    "ceilings",
    "compute_class",
    "op_class",
    "predictions",
]


@dataclass(frozen=True)
class Datasheet:
    """Vendor peaks of one GPU: HBM bandwidth (GB/s) and dense TFLOP/s (TOP/s for int8) per compute class (fp32:
    the vector units, no tensor cores; bf16 and int8: tensor cores)."""

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


# Roofline classes of the suites' ops (suites/SCHEMA.md `op`): a GEMM (y = x W^T, with or without LoRA, forward or
# backward; at small M the same kernels run as GEMVs, memory-bound by their arithmetic intensity) runs on tensor
# cores; the others are elementwise passes over memory on the vector units.
GEMM_OPS = frozenset({"matmul", "lora_fwd", "lora_fwd_bwd", "train_step"})  # a training step is GEMMs mostly
ELEMENTWISE_OPS = frozenset({"quantize", "dequantize", "adamw_step"})
INT8_MMA_IMPLS = frozenset({"bitsandbytes"})  # their int8 matmuls run on int8 tensor cores (LLM.int8())


def op_class(op: str) -> str:
    """ "gemm" (tensor cores) or "elementwise" (vector units, memory-bound) for one of the suites' ops.

    Raises:
        ValueError: an op in neither GEMM_OPS nor ELEMENTWISE_OPS (a new op must say which it is).
    """
    if op in GEMM_OPS:
        return "gemm"
    if op in ELEMENTWISE_OPS:
        return "elementwise"
    raise ValueError(f"op: {op!r}; expected one of {sorted(GEMM_OPS | ELEMENTWISE_OPS)}")


def compute_class(precision: str, impl: str | None = None, op: str = "matmul") -> str:
    """The ceiling a case's FLOPs are held against: "fp32", "bf16" or "int8" (a peak in the run's and the
    datasheets' units). The one rule, for the suites' measured % of roofline and the reports' predictions.

    - elementwise ops (quantize, dequantize, AdamW steps, and the AdamW precisions whatever the op, 8-bit states
      being updated in fp32 too): "fp32", the vector units' rate (no tensor cores);
    - GEMMs in fp32: "fp32"; int8 GEMMs of INT8_MMA_IMPLS (bitsandbytes' LLM.int8()): "int8" tensor cores;
      impl None means the best implementation of the precision (the datasheet predictions), which for int8 is
      int8 MMA; every other GEMM, the int8 ones of qkbench, dequant+torch and unfused included (W is dequantized to
      bf16 for bf16 tensor cores), and the 16- and 4-bit formats: "bf16".

    Raises:
        ValueError: an unknown op (`op_class`).
    """
    if op_class(op) == "elementwise" or precision == "fp32" or precision.startswith("adamw"):
        return "fp32"
    if precision == "int8" and (impl is None or impl in INT8_MMA_IMPLS):
        return "int8"
    return "bf16"


def ceilings(runs: pd.DataFrame, points: int = 64) -> pd.DataFrame:
    """Roofline lines from each run's measured peaks: a row per (run, ceiling, intensity) with attainable TFLOP/s.

    intensity: FLOP/byte from 1/8 to 4096, log-spaced; attainable = min(peak, intensity * copy bandwidth).
    """
    import numpy as np
    import pandas as pd

    intensity = np.logspace(-3, 12, points, base=2.0)
    measured = runs.dropna(subset=["copy_gbps"])  # reports.load gives every peak column, NaN where not measured
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
    """Predicted lower-bound time of each distinct (op, precision, shape, M, rank) case on each datasheet GPU, its
    FLOPs held against the peak of its `compute_class` (the best implementation of the precision). Cases of an op
    outside GEMM_OPS and ELEMENTWISE_OPS (results from another version of the suites) have no class: left out.

    Returns a row per case with, for each GPU, `<gpu> µs` (the bound, microseconds) and `<gpu> bound` ("memory"
    or "compute").
    """
    import pandas as pd

    keys = ["group", "op", "precision", "shape", "M", "N", "K", "rank"]
    timed = cases[(cases["group"] != "memory") & (cases["flops"] > 0) & (cases["bytes"] > 0)]
    timed = timed[timed["op"].isin(GEMM_OPS | ELEMENTWISE_OPS)]
    # The least traffic among implementations: the bound of the best possible kernel for the case.
    distinct = timed.groupby(keys, dropna=False, observed=True, sort=True).agg(
        flops=("flops", "max"), bytes=("bytes", "min")
    )
    rows = []
    for key, case in distinct.iterrows():
        row = dict(zip(keys, key, strict=True))
        row["flops"], row["bytes"] = case["flops"], case["bytes"]
        klass = compute_class(str(row["precision"]), op=str(row["op"]))
        for sheet in DATASHEETS:
            compute = case["flops"] / (sheet.peak(klass) * 1e12)
            memory = case["bytes"] / (sheet.hbm_gbps * 1e9)
            row[f"{sheet.name} µs"] = 1e6 * max(compute, memory)
            row[f"{sheet.name} bound"] = "compute" if compute >= memory else "memory"
        rows.append(row)
    return pd.DataFrame(rows)
