"""Static audit: compile every kernel config the launchers may pick, ahead of time, for sm_80 and sm_90.

CONTRACT (shared by every kernel module; the compile logic below is filled in by the kernels work):
each module in MODULES defines `audit_cases() -> list[AuditCase]`, one case per (kernel, config) that its
launcher may select. `python -m kernels.audit` compiles each case for each target with
`triton.compile(ASTSource(fn, signature, constexprs), target=GPUTarget("cuda", cc, 32))`, reads registers,
spills, shared memory and tensor-core instructions, prints a table, writes JSON, and exits non-zero on a
compile error or a spill.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

MODULES: tuple[str, ...] = ("kernels.dequant", "kernels.matmul", "kernels.lora", "kernels.adamw")
TARGETS: tuple[int, ...] = (80, 90)


@dataclass(frozen=True)
class AuditCase:
    """One compilable specialization of a kernel.

    kernel: the @triton.jit function; config: a short readable name (e.g. "BM64-BN64-BK32-w4-s3");
    signature: argument name -> Triton type string ("*fp16", "i32", "fp32", "constexpr");
    constexprs: argument name -> value for the constexpr arguments; num_warps / num_stages as launched.
    """

    kernel: Any
    config: str
    signature: dict[str, str]
    constexprs: dict[str, Any] = field(default_factory=dict)
    num_warps: int = 4
    num_stages: int = 3
