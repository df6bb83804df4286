"""A module with the old audit interface only (`audit_cases()`), for tests/kernels/test_audit.py: the audit must
keep compiling and reporting such modules as it did until every kernel module exposes `audit_workloads()`."""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _scale_kernel(x_ptr, y_ptr, n, BLOCK: tl.constexpr):
    """y = 2 x over one block per program."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    tl.store(y_ptr + offs, 2 * tl.load(x_ptr + offs, mask=mask), mask=mask)


def audit_cases() -> list[object]:
    from kernels.audit import AuditCase

    signature = {"x_ptr": "*fp32", "y_ptr": "*fp32", "n": "i32", "BLOCK": "constexpr"}
    return [AuditCase(_scale_kernel, "B512-w4", signature, {"BLOCK": 512}, num_warps=4, num_stages=1)]
