"""Fused dequant-matmul y = x W^T (+ bias) (+ s (x A^T) B^T) with W stored in NF4/FP4 (± double quant), int8 or dense.

configs.py   plan(M, N, K, w) -> Plan: the path (gemv, gemm, dequant + cuBLAS, torch) and its config, with the rule
gemv.py      the gemv kernel (M <= 16: W streamed once, 128-bit loads, bias and cast in the kernel)
fwd.py       the gemm kernel (tensor cores, W decoded per tile, LoRA epilogue)
launcher.py  matmul(x, w, *, bias, lora, return_xa) and prepare(), the launches of a call
naive.py     LoRAEpilogue and the plain-torch references (matmul_ref, lora_matmul_ref)
audit.py     audit_workloads() for kernels.audit, audit_key() for the suites
How W enters the kernels (storage, scale rule, decode) is kernels/weight.py.
"""

from kernels.matmul.audit import audit_key, audit_workloads
from kernels.matmul.configs import (
    CONFIGS,
    GEMM_MAX_M,
    GEMV_MAX_M,
    LORA_MAX_FUSED_R,
    MIN_PROGRAMS,
    MatmulConfig,
    Plan,
    plan,
)
from kernels.matmul.launcher import MatmulRun, matmul, prepare
from kernels.matmul.naive import LoRAEpilogue, lora_matmul_ref, matmul_ref

__all__ = [
    "CONFIGS",
    "GEMM_MAX_M",
    "GEMV_MAX_M",
    "LORA_MAX_FUSED_R",
    "MIN_PROGRAMS",
    "LoRAEpilogue",
    "MatmulConfig",
    "MatmulRun",
    "Plan",
    "audit_key",
    "audit_workloads",
    "lora_matmul_ref",
    "matmul",
    "matmul_ref",
    "plan",
    "prepare",
]
