"""kernels.audit: ahead-of-time compilation for real targets works here (no GPU), and the report's format."""

from __future__ import annotations

import json
from pathlib import Path

from kernels import audit as audit_mod
from kernels.audit import AuditRow, audit, collect, main, table

KEYS = {"kernel", "config", "target", "registers", "spill_bytes", "stack_bytes", "shared_bytes", "mma", "wgmma",
        "status", "error"}  # fmt: skip


def test_one_case_per_kernel_compiles_for_sm80_without_spills() -> None:
    cases, _ = collect(("kernels.dequant", "kernels.matmul"))
    first = {}
    for module, index, case in cases:
        first.setdefault(case.kernel.__name__, (module, index, case))
    assert set(first) == {"_dequantize_kernel", "_gemv_kernel", "_gemm_kernel"}
    rows = audit(list(first.values()), targets=(80,), jobs=2)
    for row in rows:
        assert row.status == "ok", row
        assert row.registers and row.registers <= 255 and row.spill_bytes == 0 and row.target == "sm_80"
    by_kernel = {r.kernel: r for r in rows}
    assert by_kernel["_gemm_kernel"].mma and by_kernel["_gemv_kernel"].mma  # tensor cores on sm_80
    assert by_kernel["_dequantize_kernel"].mma == 0


def test_missing_modules_are_skipped_with_a_note() -> None:
    cases, notes = collect(("kernels.no_such_kernel",))
    assert cases == [] and notes == ["kernels.no_such_kernel: not present, skipped"]


def test_table_and_json(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    rows = [
        AuditRow("_k", "BM16", "sm_80", 40, 0, 0, 1024, 8, 0),
        AuditRow("_k", "BM16", "sm_90", status="error", error="boom"),
    ]
    text = table(rows)
    assert "regs" in text.splitlines()[0] and "error: boom" in text
    monkeypatch.setattr(audit_mod, "audit", lambda cases, jobs=0: rows)
    out = tmp_path / "audit.json"
    assert main(["--json", str(out), "--module", "kernels.dequant"]) == 1  # an error row fails the audit
    data = json.loads(out.read_text())
    assert [set(d) for d in data] == [KEYS, KEYS] and data[0]["registers"] == 40
    monkeypatch.setattr(audit_mod, "audit", lambda cases, jobs=0: rows[:1])
    assert main(["--json", str(out), "--module", "kernels.dequant"]) == 0
