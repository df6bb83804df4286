"""Fused dequant-matmul y = x W^T (+ bias) (+ s (x A^T) B^T) with W stored in NF4/FP4 (± double quant), int8 or dense.

Two paths, chosen by M in `plan()`: gemv (M <= 16, no LoRA; split-K, W never dequantized into global memory) and
gemm (tensor-core tiles, W dequantized in registers, optional LoRA epilogue). The math of both and the W tile
formulas are in fwd.py's docstring.

naive.py     LoRAEpilogue and the plain-torch references (matmul_ref, lora_matmul_ref)
configs.py   the named configs per path and plan(M, N, K, w) -> Plan(path, config)
fwd.py       the kernels (_w_tile, _gemv_kernel, _gemm_kernel), audit_cases() and audit_key()
launcher.py  matmul(x, w, *, bias, lora, return_xa)
"""

from kernels.matmul.configs import CONFIGS, GEMV_MAX_M, LORA_MAX_FUSED_R, MatmulConfig, Plan, plan
from kernels.matmul.fwd import _w_tile, audit_cases, audit_key  # noqa: F401  (_w_tile: shared with kernels.lora.bwd)
from kernels.matmul.launcher import _storage, matmul  # noqa: F401  (_storage: shared with kernels.lora.bwd)
from kernels.matmul.naive import LoRAEpilogue, lora_matmul_ref, matmul_ref

__all__ = [
    "CONFIGS",
    "GEMV_MAX_M",
    "LORA_MAX_FUSED_R",
    "LoRAEpilogue",
    "MatmulConfig",
    "Plan",
    "audit_cases",
    "audit_key",
    "lora_matmul_ref",
    "matmul",
    "matmul_ref",
    "plan",
]
