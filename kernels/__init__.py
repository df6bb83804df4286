"""qkbench Triton kernels: dequantize, fused dequant-matmul, fused LoRA/QLoRA, fused optimizer updates.

`kernels.device` is imported first: without a GPU it switches Triton to its CPU interpreter before any
kernel is defined.
"""

from kernels import device  # noqa: F401  (must precede every module that defines a @triton.jit kernel)
from kernels.dequant import dequantize
from kernels.matmul import LoRAEpilogue, matmul

__all__ = ["LoRAEpilogue", "dequantize", "matmul"]
