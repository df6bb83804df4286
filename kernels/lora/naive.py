"""Plain-torch LoRA layer: the reference the fused kernels are tested against.

y = x W^T + s · (d(x) A^T) B^T + bias, W frozen (a dense tensor, or a quant.QuantizedTensor dequantized
with quant/'s rules), d = inverted dropout on the adapter path only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from quant import QuantizedTensor

__all__ = ["LoRAAdapter", "dense_base", "lora_ref"]


@dataclass(frozen=True)
class LoRAAdapter:
    """The low-rank update of one layer: a (R, K), b (N, R), scale s (alpha / r, or alpha / sqrt(r) with
    rsLoRA), and the adapter-path dropout probability (0 <= dropout < 1; applied only in training)."""

    a: torch.Tensor
    b: torch.Tensor
    scale: float
    dropout: float = 0.0

    @property
    def rank(self) -> int:
        return self.a.shape[0]


def dense_base(w: QuantizedTensor | torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The effective (N, K) base weight as a dense tensor of `dtype` (a QuantizedTensor is dequantized)."""
    if isinstance(w, QuantizedTensor):
        return w.dequantize(dtype)
    return w.to(dtype)


def lora_ref(
    x: torch.Tensor,
    w: QuantizedTensor | torch.Tensor,
    adapter: LoRAAdapter,
    *,
    bias: torch.Tensor | None = None,
    keep_mask: torch.Tensor | None = None,
    upcast: bool = False,
) -> torch.Tensor:
    """Reference LoRA forward, differentiable by autograd in x, A, B (and bias); W gets no gradient.

    x: (..., K) fp32|fp16|bf16|fp64; w: (N, K) dense or QuantizedTensor; adapter.a (R, K), adapter.b (N, R);
    bias: (N,) or None; keep_mask: x-shaped bool, the dropout keep mask (None with adapter.dropout > 0
    draws one, as F.dropout does); upcast: compute in fp32 (the ground truth for low-precision inputs).
    Returns (..., N) in x's dtype (fp32 with upcast).
    """
    dtype = torch.float32 if upcast and x.dtype != torch.float64 else x.dtype
    x = x.to(dtype)
    a, b = adapter.a.to(dtype), adapter.b.to(dtype)
    weight = dense_base(w, dtype).detach()
    bias = None if bias is None else bias.to(dtype)
    p = adapter.dropout
    if keep_mask is not None:
        xd = x * keep_mask.to(dtype) * (1.0 / (1.0 - p))
    elif p > 0:
        xd = F.dropout(x, p, training=True)
    else:
        xd = x
    return F.linear(x, weight, bias) + adapter.scale * F.linear(F.linear(xd, a), b)
