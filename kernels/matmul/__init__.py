"""Fused dequant-matmul y = x W^T (+ bias) (+ s (x A^T) B^T) with W stored in NF4/FP4 (± double quant), int8 or dense.

Two paths, chosen by M (rows of x) in `plan()`:
- gemv (M <= 16, memory-bound, no LoRA): one 16-row tile of x against a (BLOCK_N, BLOCK_K) tile of W per step,
  each W element read by exactly one program; split-K over a third grid axis when N alone gives too few
  programs, the fp32 partial sums reduced afterwards. W is never dequantized into global memory.
- gemm (otherwise, and whenever a LoRA epilogue is asked for): (BLOCK_M, BLOCK_N) output tiles, W tiles
  dequantized in registers and fed to tl.dot (tensor cores), the K loop software-pipelined (num_stages).
  With LoRA, the K loop also accumulates xa (BLOCK_M, R_PAD) += x A^T, and the epilogue adds s xa B^T: one
  pass over x. Programs with pid_n == 0 write xa when asked.
Accumulation is fp32; tl.dot operands are in x's dtype (fp32 operands run as tf32 on a GPU).

W tile, element (n, k), i = n K + k (int32 offsets: W < 2^31 elements; any K, a 4-bit row may start mid-byte):
    4-bit: w = code[nibble(i)] * absmax[i // BLOCKSIZE], absmax = code2[q[b]] * absmax2[b // 256] + offset
           with double quantization;  int8: w = q[n, k] * absmax[n] / 127;  dense: w as stored.

naive.py     LoRAEpilogue and the plain-torch references (matmul_ref, lora_matmul_ref)
configs.py   the named configs per path and plan(M, N, K, w) -> Plan(path, config)
fwd.py       the kernels (_w_tile, _gemv_kernel, _gemm_kernel) and audit_cases()
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
