"""kernels.audit end to end on small kernels defined here: the JIT's specializations compiled ahead of time for
sm_80 and sm_90 (no GPU), one binary per distinct specialization, the disk cache, the rows and the gate.

This module is also what the audit's workers import (`audit_workloads()` below), so the kernels here are
compiled exactly as a kernel module's would be."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import triton
import triton.language as tl
from audit_kernels import _dot_kernel  # tests/kernels/audit_kernels.py (pytest puts this folder on sys.path)

from kernels import audit as audit_mod
from kernels import perf
from kernels.audit import Binary, WorkloadPlan, compile_all, main, run
from kernels.launch import Launch, Workload
from kernels.predict import launch_totals

LEGACY = "legacy_audit_cases"


@triton.jit
def _copy_kernel(x_ptr, y_ptr, n, iters, BLOCK: tl.constexpr):
    """y = x over blocks [pid * iters, (pid + 1) * iters) of BLOCK elements."""
    for i in range(iters):
        offs = (tl.program_id(0) * iters + i) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        tl.store(y_ptr + offs, tl.load(x_ptr + offs, mask=mask), mask=mask)


def _meta(*shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.empty(*shape, dtype=dtype, device="meta")


def _copy(n: int, programs: int, iters: int) -> Workload:
    block = 1024
    launch = Launch(_copy_kernel, (programs,), {"x_ptr": _meta(n), "y_ptr": _meta(n), "n": n, "iters": iters,
                    "BLOCK": block}, num_warps=4, name="B1024-w4", trips=iters, elements=iters * block)  # fmt: skip
    return Workload("copy", f"test.{n}", "fp32", n, 0, 0, 8 * n, 0, (launch,))


def audit_workloads() -> list[Workload]:
    """Copies of 2^22 and 2^24 elements specialize alike (n and iters divisible by 16): one binary per target;
    n = 2^22 - 8 is only 8-divisible: a second. A bf16 tile matmul, and the same shape through cuBLAS only."""
    bf16 = torch.bfloat16
    s = 512
    dot = Launch(_dot_kernel, (8, 8), {"a_ptr": _meta(s, s, dtype=bf16), "b_ptr": _meta(s, s, dtype=bf16),
                 "c_ptr": _meta(s, s, dtype=bf16), "K": s, "stride_am": s, "stride_bk": s, "stride_cm": s, "BM": 64,
                 "BN": 64, "BK": 32}, num_warps=4, num_stages=2, name="BM64-BN64-BK32", trips=s // 32,
                 elements=s * 64)  # fmt: skip
    matmul = ("matmul", "test.dot", "bf16", s, s, s, 3 * s * s * 2, 2 * s**3)
    return [
        _copy(1 << 22, 256, 16),
        _copy(1 << 24, 256, 64),
        _copy((1 << 22) - 8, 256, 16),
        Workload(*matmul, (dot,)),  # type: ignore[arg-type]
        Workload(*matmul, (), (f"matmul:bf16:{s}:{s}:{s}",)),  # type: ignore[arg-type]
    ]


@pytest.fixture(scope="module")
def audited(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, dict[str, Binary], Path]:
    """One audit of this module and the legacy one (2 workers, both targets), cached in a fresh directory."""
    cache = tmp_path_factory.mktemp("audit-cache")
    the_plan, binaries = run((__name__, LEGACY, "kernels.no_such_kernel"), (80, 90), jobs=2, cache=cache)
    return the_plan, binaries, cache


def test_one_binary_per_distinct_specialization_and_target(audited: Any) -> None:
    the_plan, binaries, _ = audited
    copies = [w for w in the_plan.workloads if w.op == "copy"]
    assert copies[0].launches[0].keys == copies[1].launches[0].keys != copies[2].launches[0].keys
    # copies: 2 binaries, dot: 1, the legacy case: 1; each for sm_80 and sm_90
    assert len(the_plan.items) == len(binaries) == 8
    assert the_plan.notes == ["kernels.no_such_kernel: not present, skipped"]
    for b in binaries.values():
        assert b.status == "ok", b
        assert b.registers and b.registers <= 255 and b.spill_bytes == 0 and b.sass is not None


def test_sass_facts_of_the_compiled_kernels(audited: Any) -> None:
    the_plan, binaries, _ = audited
    copy90 = binaries[the_plan.workloads[0].launches[0].keys[90]]
    assert copy90.sass.loads["LDG.128"] / copy90.sass.unroll == 2  # 1024 fp32 over 128 threads: two 16-byte loads
    assert copy90.sass.global_gathers == 0 and copy90.sass.mma_total == 0
    dot = the_plan.workloads[3].launches[0]
    dot90, dot80 = binaries[dot.keys[90]], binaries[dot.keys[80]]
    assert dot90.wgmma and dot90.sass.hgmma_a_shared == 2 and not dot90.sass.mma_sync  # BK 32 = two k16 steps
    assert dot80.mma and dot80.sass.mma_sync and not dot80.wgmma


def test_a_second_run_compiles_nothing(audited: Any) -> None:
    the_plan, binaries, cache = audited

    class NoPool:
        def imap_unordered(self, fn: Any, batches: list[Any]) -> list[Any]:
            assert batches == [], "a cached binary was compiled again"
            return []

    assert compile_all(NoPool(), the_plan, cache, jobs=2) == binaries


def test_an_unreadable_cache_entry_is_compiled_again(audited: Any, tmp_path: Path) -> None:
    the_plan, binaries, cache = audited
    copy = tmp_path / "cache"
    copy.mkdir()
    for path in cache.glob("*.json"):
        (copy / path.name).write_text(path.read_text())
    key = the_plan.workloads[3].launches[0].keys[90]
    (copy / f"{key}.json").write_text('{"kernel": "_dot_kernel"')  # cut short

    class OnePool:
        def imap_unordered(self, fn: Any, batches: list[Any]) -> list[Any]:
            assert [[item[-1] for item in items] for _module, items in batches] == [[key]]
            return [[binaries[key]]]

    assert compile_all(OnePool(), the_plan, copy, jobs=2) == binaries
    assert Binary.from_json(json.loads((copy / f"{key}.json").read_text())) == binaries[key]


def test_rows_follow_the_model(audited: Any) -> None:
    the_plan, binaries, _ = audited
    rows = audit_mod.workload_rows(the_plan.workloads, binaries)
    assert len(rows) == 2 * len(the_plan.workloads)
    copy = next(r for r in rows if r["op"] == "copy" and r["target"] == "sm_90")
    w = the_plan.workloads[0]
    la = w.launches[0]
    b = binaries[la.keys[90]]
    s = b.sass
    loop = s.loop_instructions / s.unroll
    assert copy["instr_per_weight"] == pytest.approx(4 * loop * 16 / (16 * 1024))
    assert la.bytes == 2 * 4 * (1 << 22)  # x and y, once each
    instructions = 256 * 4 * (loop * 16 + s.instructions - s.loop_instructions)
    assert launch_totals(la, b)[0] == pytest.approx(instructions)
    memory, issue = la.bytes / 3.015e12, instructions / 1.04544e12
    imbalance = 2 / (256 / 132)
    assert copy["predicted_us_h100"] == pytest.approx(2 + 1e6 * max(memory, issue) * imbalance)
    assert copy["bound"] == ("memory" if memory > issue else "issue") and copy["frac_of"] == "memory"
    assert copy["memory_frac_h100"] == pytest.approx((2 + 1e6 * w.bytes / 3.015e12) / copy["predicted_us_h100"])
    assert copy["ctas_per_sm"] == perf.ctas_per_sm(b.registers, b.shared_bytes, 4, 90)
    assert copy["waves"] == pytest.approx(256 / (132 * copy["ctas_per_sm"]))
    cublas = next(r for r in rows if r["launches"] == 0 and r["target"] == "sm_90")
    assert cublas["bound"] == "torch" and cublas["cublas_frac_h100"] == pytest.approx(1.0)
    assert all(r["predicted_us_h100"] is None for r in rows if r["target"] == "sm_80")


REQUIRED = {"kernel", "config", "target", "registers", "spill_bytes", "stack_bytes", "shared_bytes", "mma", "wgmma",
            "status", "error", "shape", "M", "N", "K", "precision", "instr_per_weight", "ldg128", "ldg_u8",
            "global_gathers", "ctas_per_sm", "waves", "predicted_us_h100", "predicted_frac_h100", "predicted_us_h200",
            "predicted_frac_h200", "bound"}  # fmt: skip
CASE_KEYS = {"kernel", "config", "target", "registers", "spill_bytes", "stack_bytes", "shared_bytes", "mma", "wgmma",
             "status", "error"}  # fmt: skip


def test_main_writes_rows_prints_tables_and_gates(audited: Any, tmp_path: Path, monkeypatch: Any, capsys: Any) -> None:
    the_plan, binaries, _ = audited
    monkeypatch.setattr(audit_mod, "run", lambda *a, **k: (the_plan, binaries))
    out = tmp_path / "audit.json"
    assert main(["--json", str(out)]) == 0
    data = json.loads(out.read_text())
    cases = [d for d in data if "op" not in d]
    assert [set(d) for d in cases] == [CASE_KEYS, CASE_KEYS]  # the legacy case: today's rows, sm_80 and sm_90
    workloads = [d for d in data if "op" in d]
    assert len(workloads) == 10 and all(set(d) >= REQUIRED for d in workloads)
    printed = capsys.readouterr().out
    assert "_copy_kernel" in printed and "test.4194304" in printed and "H100 µs" in printed
    assert "gate: goal gemv-m1 matched no workload" in printed
    # a goal the copy misses fails the audit; --no-gate reports it and exits 0
    monkeypatch.setattr(perf, "GOALS", (perf.Goal("impossible", ("copy",), ("*",), min_frac=2.0),))
    assert main(["--json", str(out)]) == 1
    assert "missed impossible: copy test.4194304" in capsys.readouterr().out
    assert main(["--json", str(out), "--no-gate"]) == 0
    # so does a binary that spills
    monkeypatch.setattr(perf, "GOALS", ())
    spilled = {k: (Binary(**{**b.__dict__, "status": "spill"}) if b.kernel == "_dot_kernel" else b)
               for k, b in binaries.items()}  # fmt: skip
    monkeypatch.setattr(audit_mod, "run", lambda *a, **k: (the_plan, spilled))
    assert main(["--json", str(out)]) == 1
    assert "gate: binary _dot_kernel BM64-BN64-BK32 sm_80: spill" in capsys.readouterr().out


def test_a_bad_torch_op_names_its_workload() -> None:
    bad = WorkloadPlan("mod", 3, "matmul", "s", "bf16", 1, 2, 3, 12, 12, ("matmul:bf16:1:2",), ())
    rows = audit_mod.workload_rows([bad], {}, (80,))  # no prediction on sm_80: nothing to time
    assert rows[0]["predicted_us_h100"] is None and rows[0]["launches"] == 0
    with pytest.raises(ValueError, match=r"mod workload 3 \(matmul s M=1\): torch op: 'matmul:bf16:1:2'"):
        audit_mod.workload_rows([bad], {}, (90,))
