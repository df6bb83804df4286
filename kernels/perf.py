"""The static performance model: a predicted time per launch and per workload on an H100 SXM and an H200.

A prediction, not a measurement: it reads counts from the machine code (`kernels.sass`) and datasheet
constants (GPUS, the one table), and the first GPU run calibrates it (the report shows the ratio).

Per launch of `programs` CTAs of `warps` warps (sm_90 binary):
    memory = bytes ÷ (HBM bandwidth × HBM_EFFICIENCY)          bytes: every tensor argument once, in full
    issue  = programs × warps × (main-loop body × trips + the rest once) ÷ (SMs × 4 issue slots × clock)
    mma    = programs × warps × tensor-core flops per warp ÷ (tensor rate × TENSOR_EFFICIENCY [× MMA_SYNC])
    time   = LAUNCH_US + max(memory, issue, mma) × imbalance,  imbalance = ⌈programs ÷ SMs⌉ ÷ (programs ÷ SMs)
(imbalance: the busiest SM runs ⌈programs ÷ SMs⌉ programs while the mean is programs ÷ SMs; 64 programs on 132
SMs leave 68 idle and take 2.06 × the ideal time.) Not modelled: latency (bytes in flight per SM), L2 reuse,
bank conflicts, and the clock falling below boost under tensor-core load.

A workload is its launches plus its torch ops (grammar: `matmul:<dtype>:<M>:<N>:<K>`, cuBLAS at
TENSOR_EFFICIENCY of the tensor rate and HBM_EFFICIENCY of the bandwidth, whichever is slower; `memory:<bytes>`,
a memory-bound torch op moving that many bytes), each paying LAUNCH_US. Its bound is the part that takes the
most of the predicted time: "memory", "issue" or "mma" (launch bodies, by their largest term), "torch", or
"launch" (the fixed costs). Its fraction compares it with the best op of the same work under the same model:
    memory roofline = LAUNCH_US + bytes ÷ (bandwidth × HBM_EFFICIENCY)     where the op is memory-bound
    cuBLAS bf16     = the torch op matmul:bf16:M:N:K                       where it is compute-bound
(compute-bound: 2MNK ÷ (bf16 rate × TENSOR_EFFICIENCY) > bytes ÷ (bandwidth × HBM_EFFICIENCY)). Both sides
pay one launch, so the fraction measures what the design loses, not the fixed cost every kernel pays; 100% of
the memory roofline is HBM_EFFICIENCY × the datasheet bandwidth, which is not the suites' "% of peak".
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fnmatch import fnmatch
from typing import Any

__all__ = [
    "EXEMPTIONS",
    "GOALS",
    "GPU",
    "GPUS",
    "SHARED_LIMIT",
    "SM_LIMITS",
    "Exemption",
    "Goal",
    "LaunchCost",
    "Prediction",
    "SMLimits",
    "ctas_per_sm",
    "gate",
    "launch_cost",
    "predict",
    "torch_op_seconds",
]


@dataclass(frozen=True)
class GPU:
    """Datasheet numbers of one GPU (dense tensor rates, no sparsity)."""

    name: str
    cc: int
    sms: int
    clock_hz: float  # boost clock
    hbm_bytes_per_s: float
    tensor_flops: dict[str, float]  # operand type -> dense FLOP/s (int8: OP/s)
    fp32_flops: float  # CUDA cores, no tensor cores (torch's fp32 matmul)


_HOPPER_TENSOR = {"bf16": 989.5e12, "fp16": 989.5e12, "tf32": 494.5e12, "int8": 1979e12, "fp8": 1979e12}
# THE table. Sources: NVIDIA H100 datasheet (H100 SXM: 3.35 TB/s HBM3; BF16/FP16 1,979 and TF32 989 TFLOPS,
# INT8 3,958 TOPS "with sparsity" = twice the dense rates used here; FP32 67 TFLOPS), NVIDIA H200 datasheet (the
# same compute, 4.8 TB/s HBM3e), the Hopper whitepaper (132 SMs on the SXM5 part; 4 SM sub-partitions, each
# issuing one warp instruction per clock), 1.98 GHz: the SXM part's maximum boost clock, used for instruction
# issue (the datasheet's tensor rates assume about 1.83 GHz; they are used as printed).
GPUS: dict[str, GPU] = {
    "h100": GPU("H100 SXM", 90, 132, 1.98e9, 3.35e12, _HOPPER_TENSOR, 67e12),
    "h200": GPU("H200", 90, 132, 1.98e9, 4.8e12, _HOPPER_TENSOR, 67e12),
}
ISSUE_PER_SM_PER_CLOCK = 4  # warp instructions: one per sub-partition scheduler
HBM_EFFICIENCY = 0.90  # a streaming copy reaches about 90% of the datasheet bandwidth (assumed; calibrate on a GPU)
TENSOR_EFFICIENCY = 0.80  # large dense GEMMs (cuBLAS) reach about 80% of the datasheet rate (assumed; calibrate)
MMA_SYNC = 2 / 3  # mma.sync on Hopper: about 2/3 of the tensor peak (FlashAttention-3, Shah et al. 2024; calibrate)
LAUNCH_US = 2.0  # fixed GPU-side cost of one launch: dispatch, ramp-up, tail (assumed; calibrate on a GPU)


@dataclass(frozen=True)
class SMLimits:
    """Per-SM resources of a compute capability (CUDA C++ Programming Guide, "Technical Specifications per
    Compute Capability"; the occupancy calculator's allocation rules)."""

    registers: int = 65536
    shared_per_sm: int = 228 * 1024
    shared_per_block: int = 227 * 1024  # opt-in maximum for one CTA
    shared_reserved: int = 1024  # the driver reserves 1 KiB per CTA
    warps: int = 64
    ctas: int = 32
    register_unit: int = 256  # registers are allocated per warp in units of 256
    sub_partitions: int = 4  # a warp's registers come from one of the 4 quarter register files


SM_LIMITS: dict[int, SMLimits] = {80: SMLimits(shared_per_sm=164 * 1024, shared_per_block=163 * 1024), 90: SMLimits()}
SHARED_LIMIT: dict[int, int] = {cc: limits.shared_per_block for cc, limits in SM_LIMITS.items()}


def ctas_per_sm(registers: int, shared_bytes: int, warps: int, cc: int = 90) -> int:
    """CTAs of one kernel resident on one SM at once (0: it cannot launch), the least of the register, shared
    memory, warp and CTA limits.

    Raises:
        ValueError: an unknown compute capability, or warps < 1.
    """
    if cc not in SM_LIMITS:
        raise ValueError(f"cc: {cc}; expected one of {sorted(SM_LIMITS)}")
    if warps < 1:
        raise ValueError(f"warps: {warps}; expected >= 1")
    lim = SM_LIMITS[cc]
    if shared_bytes > lim.shared_per_block or registers > 255:
        return 0
    per_warp = math.ceil(max(registers, 1) * 32 / lim.register_unit) * lim.register_unit
    warps_by_registers = (lim.registers // lim.sub_partitions // per_warp) * lim.sub_partitions
    shared = shared_bytes + lim.shared_reserved
    return min(warps_by_registers // warps, lim.shared_per_sm // shared, lim.warps // warps, lim.ctas)


@dataclass(frozen=True)
class LaunchCost:
    """One launch's model terms (seconds) and its time: LAUNCH_US + max(terms) × imbalance."""

    memory: float
    issue: float
    mma: float
    imbalance: float
    seconds: float

    @property
    def bound(self) -> str:
        terms = {"memory": self.memory, "issue": self.issue, "mma": self.mma}
        return max(terms, key=terms.__getitem__)


def launch_cost(
    gpu: GPU,
    programs: int,
    warps: int,
    bytes_moved: float,
    warp_instructions: float,
    mma_flops: float = 0.0,
    mma_dtype: str = "bf16",
    mma_sync: bool = False,
) -> LaunchCost:
    """The model of one launch (module docstring). warp_instructions and mma_flops are totals over all programs.

    Raises:
        ValueError: a negative count, or an unknown tensor-core operand type.
    """
    if min(programs, warps, bytes_moved, warp_instructions, mma_flops) < 0:
        raise ValueError(
            f"launch counts: {(programs, warps, bytes_moved, warp_instructions, mma_flops)}; expected >= 0"
        )
    if mma_flops and mma_dtype not in gpu.tensor_flops:
        raise ValueError(f"mma_dtype: {mma_dtype!r}; expected one of {sorted(gpu.tensor_flops)}")
    if programs == 0:
        return LaunchCost(0.0, 0.0, 0.0, 1.0, 0.0)  # an empty grid launches nothing
    memory = bytes_moved / (gpu.hbm_bytes_per_s * HBM_EFFICIENCY)
    issue = warp_instructions / (gpu.sms * ISSUE_PER_SM_PER_CLOCK * gpu.clock_hz)
    rate = gpu.tensor_flops.get(mma_dtype, 1.0) * TENSOR_EFFICIENCY * (MMA_SYNC if mma_sync else 1.0)
    mma = mma_flops / rate if mma_flops else 0.0
    imbalance = math.ceil(programs / gpu.sms) / (programs / gpu.sms)
    return LaunchCost(memory, issue, mma, imbalance, LAUNCH_US * 1e-6 + max(memory, issue, mma) * imbalance)


_ITEMSIZE = {"bf16": 2, "fp16": 2, "fp32": 4, "int8": 1}


def torch_op_seconds(gpu: GPU, op: str) -> float:
    """Predicted seconds of one torch op, `matmul:<dtype>:<M>:<N>:<K>` (cuBLAS, dtype bf16|fp16|fp32|int8; bytes:
    both operands and the result once, at the dtype's size) or `memory:<bytes>` (module docstring).

    Raises:
        ValueError: `op` does not follow the grammar.
    """
    parts = op.split(":")
    try:
        if parts[0] == "memory" and len(parts) == 2:
            return LAUNCH_US * 1e-6 + int(parts[1]) / (gpu.hbm_bytes_per_s * HBM_EFFICIENCY)
        if parts[0] == "matmul" and len(parts) == 5 and parts[1] in _ITEMSIZE:
            m, n, k = (int(v) for v in parts[2:])
            if min(m, n, k) < 0:
                raise ValueError
            rate = gpu.fp32_flops if parts[1] == "fp32" else gpu.tensor_flops[parts[1]] * TENSOR_EFFICIENCY
            moved = (m * k + n * k + m * n) * _ITEMSIZE[parts[1]]
            return LAUNCH_US * 1e-6 + max(2 * m * n * k / rate, moved / (gpu.hbm_bytes_per_s * HBM_EFFICIENCY))
    except ValueError:
        pass
    raise ValueError(f"torch op: {op!r}; expected 'matmul:<bf16|fp16|fp32|int8>:<M>:<N>:<K>' or 'memory:<bytes>'")


@dataclass(frozen=True)
class Prediction:
    """A workload on one GPU: seconds, bound, and the fraction of its reference (`frac_of`: memory or cublas)."""

    seconds: float
    bound: str
    frac: float
    frac_of: str
    memory_frac: float  # of the memory roofline, whatever the op's class
    cublas_frac: float | None  # of cuBLAS bf16 on (M, N, K); None without a matmul shape


def predict(
    gpu: GPU, launches: list[LaunchCost], torch_ops: tuple[str, ...], bytes_moved: int, flops: int, mnk: tuple[int, ...]
) -> Prediction:
    """Sum a workload's launches and torch ops; its bound and fractions (module docstring).

    mnk: (M, N, K) of the matmul the op stands for (for the cuBLAS reference), or () where there is none.
    """
    parts = {"memory": 0.0, "issue": 0.0, "mma": 0.0, "torch": 0.0, "launch": 0.0}
    for cost in launches:
        if cost.seconds:
            parts[cost.bound] += cost.seconds - LAUNCH_US * 1e-6
            parts["launch"] += LAUNCH_US * 1e-6
    parts["torch"] = sum(torch_op_seconds(gpu, op) for op in torch_ops)
    seconds = sum(parts.values())
    if seconds <= 0:
        raise ValueError(f"workload: no launch and no torch op to time ({len(launches)} launches, {torch_ops})")
    bandwidth = gpu.hbm_bytes_per_s * HBM_EFFICIENCY
    memory_frac = (LAUNCH_US * 1e-6 + bytes_moved / bandwidth) / seconds
    cublas_frac = None
    if len(mnk) == 3 and min(mnk) > 0:
        cublas_frac = torch_op_seconds(gpu, "matmul:bf16:{}:{}:{}".format(*mnk)) / seconds
    compute_bound = flops / (gpu.tensor_flops["bf16"] * TENSOR_EFFICIENCY) > bytes_moved / bandwidth
    use_cublas = compute_bound and cublas_frac is not None
    frac = cublas_frac if use_cublas and cublas_frac is not None else memory_frac
    return Prediction(seconds, max(parts, key=parts.__getitem__), frac, "cublas" if use_cublas else "memory",
                      memory_frac, cublas_frac)  # fmt: skip


@dataclass(frozen=True)
class Goal:
    """A predicted target a workload of the grid must meet on the H100 (issue 13); patterns as in fnmatch."""

    name: str
    ops: tuple[str, ...]
    precisions: tuple[str, ...]
    shapes: tuple[str, ...] = ("*",)
    m_min: int = 0
    m_max: int | None = None
    reference: str = "memory"  # the fraction it is held to: "memory" (roofline) or "cublas" (bf16, same M, N, K)
    min_frac: float = 0.0
    min_waves: float = 0.0
    issue_may_bound: bool = True
    min_programs_per_sm: float = 0.0  # the main launch's programs ÷ 132 SMs (every SM gets that many CTAs)

    def matches(self, row: dict[str, Any]) -> bool:
        m = row["M"]
        return (
            any(fnmatch(row["op"], p) for p in self.ops)
            and any(fnmatch(row["precision"], p) for p in self.precisions)
            and any(fnmatch(row["shape"], p) for p in self.shapes)
            and m >= self.m_min
            and (self.m_max is None or m <= self.m_max)
        )

    def misses(self, row: dict[str, Any]) -> list[str]:
        """Why `row` (a workload row on sm_90) misses this goal; [] when it meets it."""
        if row["predicted_us_h100"] is None:
            return ["no prediction (a launch failed to compile)"]
        frac = row["memory_frac_h100"] if self.reference == "memory" else row["cublas_frac_h100"]
        out = []
        if frac is None or frac < self.min_frac:
            out.append(f"{self.reference} fraction {frac if frac is None else round(frac, 3)} < {self.min_frac}")
        if row["waves"] is not None and row["waves"] < self.min_waves:
            out.append(f"waves {row['waves']:.2f} < {self.min_waves}")
        programs = row.get("programs")
        if self.min_programs_per_sm and programs is not None and programs < self.min_programs_per_sm * GPUS["h100"].sms:
            out.append(f"{programs} programs < {self.min_programs_per_sm:g} per SM")
        if not self.issue_may_bound and row["bound"] == "issue":
            out.append("instruction issue is the bound")
        return out


@dataclass(frozen=True)
class Exemption:
    """A documented exception to a goal: the workloads it covers (fnmatch patterns) and why."""

    goal: str
    op: str
    shape: str
    precision: str
    m: str  # a pattern on str(M), e.g. "1" or "*"
    reason: str

    def covers(self, goal: Goal, row: dict[str, Any]) -> bool:
        return goal.name == self.goal and all(
            fnmatch(str(value), pattern)
            for value, pattern in ((row["op"], self.op), (row["shape"], self.shape),
                                   (row["precision"], self.precision), (row["M"], self.m))
        )  # fmt: skip


# The goals of issue 13, predicted on the H100 SXM; precision names as the Workloads spell them.
GEMV_SHAPES = ("llama2-7b.q_proj", "llama2-70b.down_proj")
GOALS: tuple[Goal, ...] = (
    # ">= 2 waves on 132 SMs": >= 2 programs an SM. (Resident waves, programs ÷ (SMs × CTAs an SM), would ask a
    # one-warp gemv, 32 CTAs an SM, for 8,448 programs; what it needs is every SM busy, twice over.)
    Goal("gemv-m1", ("matmul",), ("nf4*", "fp4*", "int8"), GEMV_SHAPES, 1, 1, "memory", 0.90, 0.0, False, 2.0),
    Goal("large-m", ("matmul",), ("*",), ("*",), 1024, None, "cublas", 0.85),
    Goal("adamw-8bit", ("adamw",), ("*8*",), ("*",), 0, None, "memory", 0.70),
)
EXEMPTIONS: tuple[Exemption, ...] = (
    Exemption(
        "large-m",
        "matmul",
        "*",
        "*",
        "1024",
        "dequantize once + cuBLAS is predicted at 0.67-0.76 of cuBLAS bf16 at M = 1024: the bf16 copy of W costs "
        "2 bytes a weight written and read beside 2 M N K FLOPs that are still few at this M (>= 0.85 from "
        "M = 4096). A tensor-core kernel that decodes W in registers as wgmma's A operand is the open next step; "
        "the first GPU run measures both",
    ),
    Exemption(
        "gemv-m1",
        "matmul",
        "llama2-7b.q_proj",
        "nf4dq",
        "1",
        "predicted at 0.94 of the H100 memory roofline, but instruction issue (0.18 warp instructions a weight: "
        "the per-nibble codebook gather and the double-quant scale) edges past the memory time by a few percent "
        "with 8 rows a program (16 would leave fewer than 2 programs an SM); on llama2-70b.down_proj (16 rows) it "
        "is memory-bound",
    ),
    Exemption(
        "adamw-8bit",
        "adamw",
        "lora-r*",
        "adamw8",
        "*",
        "128 adapter tensors of 32-64 K elements: 128 launches at 2 us each against 20-40 us of memory time (the "
        "kernel itself is predicted at the roofline on one large tensor). One launch over a table of tensors, as "
        "torch's fused AdamW, needs quant.optim's per-tensor update to take a whole group: the open next step",
    ),
)  # each with its reason


def gate(rows: list[dict[str, Any]], goals: tuple[Goal, ...] | None = None,
         exemptions: tuple[Exemption, ...] | None = None) -> tuple[list[str], list[str]]:  # fmt: skip
    """(misses, notes) of the sm_90 workload rows against the goals (default GOALS and EXEMPTIONS); sets each
    checked row's "gate" field to "ok", "miss: ..." or "exempt: <reason>". A goal that matches no workload is a
    note, not a miss."""
    goals = GOALS if goals is None else goals
    exemptions = EXEMPTIONS if exemptions is None else exemptions
    misses, notes = [], []
    for goal in goals:
        matched = [r for r in rows if r["target"] == "sm_90" and goal.matches(r)]
        if not matched:
            notes.append(f"goal {goal.name} matched no workload (nothing to check)")
        for row in matched:
            why = goal.misses(row)
            exempt = next((e for e in exemptions if e.covers(goal, row)), None)
            label = f"{row['op']} {row['shape']} {row['precision']} M={row['M']}"
            if why and exempt is not None:
                row["gate"] = f"exempt: {exempt.reason}"
            elif why:
                row["gate"] = f"miss: {goal.name}: " + "; ".join(why)
                misses.append(f"{goal.name}: {label}: " + "; ".join(why))
            elif not row.get("gate"):
                row["gate"] = "ok"
    return misses, notes
