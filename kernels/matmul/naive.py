"""Plain-torch references for kernels.matmul: F.linear with W dequantized by quant/ (the spec), and the LoRA
epilogue's y = x W^T + bias + s (x A^T) B^T with xa = x A^T."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from quant import QuantizedTensor

__all__ = ["LoRAEpilogue", "lora_matmul_ref", "matmul_ref"]


@dataclass(frozen=True)
class LoRAEpilogue:
    """The LoRA term of the fused epilogue: a (R, K), b (N, R) in x's dtype, scale s."""

    a: torch.Tensor
    b: torch.Tensor
    scale: float


def matmul_ref(
    x: torch.Tensor, w: QuantizedTensor | torch.Tensor, bias: torch.Tensor | None = None, upcast: bool = False
) -> torch.Tensor:
    """F.linear(x, W, bias) with W dequantized by quant/ (the spec). x (..., K); w (N, K); returns (..., N) in
    x's dtype, or fp32 with upcast (the ground truth)."""
    dtype = torch.float32 if upcast else x.dtype
    dense = w.dequantize(dtype) if isinstance(w, QuantizedTensor) else w.to(dtype)
    return F.linear(x.to(dtype), dense, None if bias is None else bias.to(dtype))


def lora_matmul_ref(
    x: torch.Tensor,
    w: QuantizedTensor | torch.Tensor,
    lora: LoRAEpilogue,
    bias: torch.Tensor | None = None,
    upcast: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(y, xa): xa = x A^T (..., R), y = x W^T + bias + s xa B^T (..., N), in x's dtype (fp32 with upcast)."""
    dtype = torch.float32 if upcast else x.dtype
    xa = F.linear(x.to(dtype), lora.a.to(dtype))
    return matmul_ref(x, w, bias, upcast) + lora.scale * F.linear(xa, lora.b.to(dtype)), xa
