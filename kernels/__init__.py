"""qkbench Triton kernels: dequantize, fused dequant-matmul, fused LoRA/QLoRA, fused optimizer updates.

`kernels.device` is imported first: without a GPU it switches Triton to its CPU interpreter before any
kernel is defined.

    y = kernels.matmul(x, quant.quantize(w, "nf4", double_quant=True))    # fused dequant-matmul
    layer = kernels.LoRALinear.from_linear(linear, rank=16, alpha=32, quant="nf4")    # QLoRA layer
    opt = kernels.paged_adamw(layer.parameters(), state_bits=8, budget_bytes=2**30)    # fused 8-bit AdamW
"""

from kernels import device  # noqa: F401  (must precede every module that defines a @triton.jit kernel)
from kernels.adamw import paged_adamw
from kernels.dequant import dequantize
from kernels.lora import LoRALinear, lora_linear
from kernels.matmul import LoRAEpilogue, matmul

__all__ = ["LoRAEpilogue", "LoRALinear", "dequantize", "lora_linear", "matmul", "paged_adamw"]
