"""kernels.perf: the model's arithmetic against cases worked by hand from the datasheet constants, and the gate.

H100 SXM: 3.35e12 B/s × 0.90 = 3.015e12 B/s achievable; 132 SMs × 4 issue × 1.98e9 Hz = 1.04544e12 warp
instructions/s; bf16 989.5e12 (half the datasheet's 1,979 "with sparsity") × 0.80 = 7.916e14 FLOP/s; a launch
costs 2 µs.
"""

from __future__ import annotations

from typing import Any

import pytest

from kernels.perf import GPUS, Exemption, Goal, ctas_per_sm, gate, launch_cost, predict, torch_op_seconds

H100, H200 = GPUS["h100"], GPUS["h200"]
MS = 1e-3
LAUNCH = 2e-6


@pytest.mark.parametrize(
    ("registers", "shared", "warps", "cc", "expected"),
    [
        (32, 0, 4, 90, 16),  # 1024 regs/warp: 16 warps per quarter, 64 warps = 16 CTAs (also the warp limit)
        (88, 0, 4, 90, 5),  # 2816 regs/warp: 16384 // 2816 = 5 warps per quarter, 20 warps = 5 CTAs
        (255, 0, 4, 90, 2),  # 8192 regs/warp: 2 per quarter, 8 warps = 2 CTAs
        (32, 0, 8, 90, 8),  # 64 warps // 8
        (32, 100 * 1024, 4, 90, 2),  # (102400 + 1024 reserved) into 233472 bytes: 2
        (32, 100 * 1024, 4, 80, 1),  # into 167936 bytes on sm_80: 1
        (32, 228 * 1024, 4, 90, 0),  # over the 227 KiB a CTA may have: cannot launch
        (16, 0, 1, 90, 32),  # the 32-CTA limit
    ],
)
def test_ctas_per_sm(registers: int, shared: int, warps: int, cc: int, expected: int) -> None:
    assert ctas_per_sm(registers, shared, warps, cc) == expected


def test_ctas_per_sm_refuses_an_unknown_target() -> None:
    with pytest.raises(ValueError, match="cc: 75"):
        ctas_per_sm(32, 0, 4, 75)
    with pytest.raises(ValueError, match="warps: 0"):
        ctas_per_sm(32, 0, 0, 90)


def test_each_term_of_a_launch() -> None:
    memory = launch_cost(H100, 264, 4, 3.015e9, 0.5 * 1.04544e9)
    assert memory.memory == pytest.approx(MS) and memory.issue == pytest.approx(0.5 * MS) and memory.mma == 0
    assert memory.bound == "memory" and memory.seconds == pytest.approx(LAUNCH + MS)
    issue = launch_cost(H100, 132, 4, 3.015e8, 2 * 1.04544e9)
    assert issue.bound == "issue" and issue.seconds == pytest.approx(LAUNCH + 2 * MS)
    mma = launch_cost(H100, 132, 4, 0, 0, 7.916e11, "bf16")
    assert mma.bound == "mma" and mma.seconds == pytest.approx(LAUNCH + MS)
    sync = launch_cost(H100, 132, 4, 0, 0, 7.916e11, "bf16", mma_sync=True)  # mma.sync at 2/3 the rate
    assert sync.seconds == pytest.approx(LAUNCH + 1.5 * MS)
    int8 = launch_cost(H100, 132, 4, 0, 0, 2 * 7.916e11, "int8")  # twice the bf16 rate
    assert int8.seconds == pytest.approx(LAUNCH + MS)
    h200 = launch_cost(H200, 264, 4, 4.32e9, 0)  # 4.8e12 × 0.9 = 4.32e12 B/s
    assert h200.seconds == pytest.approx(LAUNCH + MS)


def test_wave_quantization() -> None:
    one_more = launch_cost(H100, 133, 4, 3.015e9, 0)  # the busiest SM runs 2 programs, the mean is 133/132
    assert one_more.imbalance == pytest.approx(264 / 133)
    assert one_more.seconds == pytest.approx(LAUNCH + MS * 264 / 133)
    half = launch_cost(H100, 66, 4, 3.015e9, 0)  # 66 SMs busy, 66 idle: twice the ideal
    assert half.seconds == pytest.approx(LAUNCH + 2 * MS)
    assert launch_cost(H100, 0, 4, 3.015e9, 0).seconds == 0  # an empty grid is no launch


def test_launch_cost_refuses_bad_counts() -> None:
    with pytest.raises(ValueError, match="expected >= 0"):
        launch_cost(H100, 1, 4, -1, 0)
    with pytest.raises(ValueError, match="mma_dtype: 'fp64'"):
        launch_cost(H100, 1, 4, 0, 0, 1.0, "fp64")


def test_torch_ops() -> None:
    assert torch_op_seconds(H100, "memory:3015000000") == pytest.approx(LAUNCH + MS)
    # 2·4096³ = 1.374e11 FLOP at 7.916e14 FLOP/s = 173.6 µs > 3·4096²·2 B = 100.7 MB at 3.015e12 B/s = 33.4 µs
    big = torch_op_seconds(H100, "matmul:bf16:4096:4096:4096")
    assert big == pytest.approx(LAUNCH + 2 * 4096**3 / 7.916e14)
    # M = 1: 2·4096² FLOP is nothing; (4096 + 4096² + 4096)·2 B = 33.57 MB at 3.015e12 B/s = 11.1 µs
    small = torch_op_seconds(H100, "matmul:bf16:1:4096:4096")
    assert small == pytest.approx(LAUNCH + (2 * 4096 + 4096**2) * 2 / 3.015e12)
    fp32 = torch_op_seconds(H100, "matmul:fp32:4096:4096:4096")  # CUDA cores: 67e12 FLOP/s, no efficiency
    assert fp32 == pytest.approx(LAUNCH + 2 * 4096**3 / 67e12)


@pytest.mark.parametrize(
    "op", ["matmul:bf16:1:2", "conv:bf16:1:2:3", "matmul:bf8:1:2:3", "memory:x", "matmul:bf16:-1:2:3"]
)
def test_torch_op_grammar_is_enforced(op: str) -> None:
    with pytest.raises(ValueError, match="torch op"):
        torch_op_seconds(H100, op)


def test_memory_bound_workload_fraction_and_bound() -> None:
    one = launch_cost(H100, 264, 4, 3.015e9, 0)
    alone = predict(H100, [one], (), 3_015_000_000, 0, (1, 4096, 4096))
    assert alone.seconds == pytest.approx(LAUNCH + MS) and alone.bound == "memory"
    assert alone.frac_of == "memory" and alone.frac == pytest.approx(1.0)
    # a second, empty-bodied launch and a torch op of 1 ms: the roofline 1.002 ms over 1.002 + 0.002 + 1.002 ms
    tiny = launch_cost(H100, 1, 4, 0, 0)
    more = predict(H100, [one, tiny], ("memory:3015000000",), 3_015_000_000, 0, ())
    assert more.seconds == pytest.approx(3 * LAUNCH + 2 * MS)
    assert more.frac == pytest.approx((LAUNCH + MS) / (3 * LAUNCH + 2 * MS)) and more.cublas_frac is None
    assert more.bound == "torch"  # 1.002 ms with its launch, over the kernel body's 1 ms


def test_compute_bound_workload_is_held_to_cublas() -> None:
    m = n = k = 4096
    flops = 2 * m * n * k
    ours = launch_cost(H100, 256, 8, 3 * 4096 * 4096 * 2, 0, 1.25 * flops)  # 25% more tensor work than needed
    p = predict(H100, [ours], (), 3 * 4096 * 4096 * 2, flops, (m, n, k))
    cublas = LAUNCH + flops / 7.916e14
    assert p.frac_of == "cublas" and p.bound == "mma"
    mma = 1.25 * flops / 7.916e14 * (2 / (256 / 132))  # 256 programs: busiest SM runs 2, the mean is 1.94
    assert p.seconds == pytest.approx(LAUNCH + mma) and p.frac == pytest.approx(cublas / (LAUNCH + mma))


def test_predict_needs_something_to_time() -> None:
    with pytest.raises(ValueError, match="no launch and no torch op"):
        predict(H100, [], (), 1, 0, ())


def _row(**changes: Any) -> dict[str, Any]:
    row = {"target": "sm_90", "op": "matmul", "shape": "llama2-7b.q_proj", "precision": "nf4", "M": 1,
           "predicted_us_h100": 5.0, "memory_frac_h100": 0.95, "cublas_frac_h100": 3.0, "waves": 2.5,
           "bound": "memory", "gate": ""}  # fmt: skip
    return {**row, **changes}


GEMV = Goal("gemv", ("matmul",), ("nf4*",), ("llama2-7b.q_proj",), 1, 1, "memory", 0.90, 2.0, False)


def test_gate_passes_a_workload_that_meets_its_goal() -> None:
    rows = [_row(), _row(M=4, memory_frac_h100=0.1), _row(target="sm_80", memory_frac_h100=None)]
    assert gate(rows, (GEMV,), ()) == ([], [])
    assert [r["gate"] for r in rows] == ["ok", "", ""]  # M = 4 and sm_80 are not the goal's


@pytest.mark.parametrize(
    ("changes", "why"),
    [
        ({"memory_frac_h100": 0.89}, "memory fraction 0.89 < 0.9"),
        ({"waves": 1.5}, "waves 1.50 < 2.0"),
        ({"bound": "issue"}, "instruction issue is the bound"),
        ({"predicted_us_h100": None}, "no prediction"),
    ],
)
def test_gate_names_each_miss(changes: dict[str, Any], why: str) -> None:
    rows = [_row(**changes)]
    misses, _ = gate(rows, (GEMV,), ())
    assert len(misses) == 1 and why in misses[0] and "llama2-7b.q_proj nf4 M=1" in misses[0]
    assert rows[0]["gate"].startswith("miss: gemv")


def test_an_exemption_with_its_reason_waives_a_miss_and_a_goal_without_workloads_is_a_note() -> None:
    exempt = Exemption("gemv", "matmul", "llama2-7b.*", "nf4", "1", "launch cost dominates a 2.8 µs op")
    rows = [_row(memory_frac_h100=0.5)]
    misses, notes = gate(rows, (GEMV, Goal("adamw", ("adamw",), ("*8*",))), (exempt,))
    assert misses == [] and rows[0]["gate"] == "exempt: launch cost dominates a 2.8 µs op"
    assert notes == ["goal adamw matched no workload (nothing to check)"]
    other = Exemption("gemv", "matmul", "llama2-70b.*", "nf4", "1", "another shape")
    assert gate([_row(memory_frac_h100=0.5)], (GEMV,), (other,))[0] != []


def test_large_m_goal_reads_the_cublas_fraction() -> None:
    goal = Goal("large-m", ("matmul",), ("*",), ("*",), 1024, None, "cublas", 0.85)
    rows = [_row(M=1024, cublas_frac_h100=0.84, memory_frac_h100=5.0), _row(M=4096, cublas_frac_h100=0.9)]
    misses, _ = gate(rows, (goal,), ())
    assert len(misses) == 1 and "cublas fraction 0.84 < 0.85" in misses[0] and "M=1024" in misses[0]
