"""`LoRAFunction`: the fused LoRA/QLoRA layer as an autograd Function (forward in kernels.matmul, backward
in kernels.lora.bwd), and `lora_linear`, its entry point."""

from __future__ import annotations

from typing import Any

import torch

from kernels.lora.bwd import check_base, lora_da, lora_db, lora_dx, lora_dyb
from kernels.lora.naive import LoRAAdapter
from kernels.matmul import LoRAEpilogue, matmul
from quant import QuantizedTensor

__all__ = ["LoRAFunction", "lora_linear"]


class LoRAFunction(torch.autograd.Function):
    """y = x W^T + s (d(x) A^T) B^T + bias with W frozen; gradients for x, A, B (and bias).

    Forward. Without dropout, kernels.matmul computes xa = x A^T once (a small launch of its own), then one
    launch computes x W^T (W dequantized on chip) and adds bias + s xa B^T in its epilogue; xa (M, R) is kept
    for the backward. (Past kernels.matmul.LORA_MAX_FUSED_R, torch adds s xa B^T after the launch.)
    With dropout p > 0 the adapter sees d(x) = x ⊙ m / (1 - p), m ~ Bernoulli(1 - p), so the fused epilogue
    (which reads x itself) cannot be used: xa = d(x) A^T is one more GEMM over a masked copy of x, and
    s xa B^T is a second small GEMM added to the base product. Cost: an extra elementwise pass writing
    d(x), one more read of it, and one read-modify-write of y.

    Backward (g = dL/dy, flattened to (M, N); M = rows of x):
        y  = x W^T + s (d(x) A^T) B^T + bias
        dx = g W + s d'(g B A)          d' multiplies by m / (1 - p) (the Jacobian of d; identity without dropout)
        dA = s (g B)^T d(x)             from y = s d(x) A^T B^T: dL/dA = s B^T g^T d(x) = s (g B)^T d(x)
        dB = s g^T (d(x) A^T) = s g^T xa
        dbias = Σ_m g;  W: no gradient (frozen)
    g B (M, R) is computed once (fp32) and shared by dx and dA.

    Saved versus recomputed, for memory. Saved: x (the layer input, which autograd usually holds anyway),
    A and B (parameters, no copies), xa (M, R) from the forward (R ≪ K: recomputing it would be another full
    pass over x and M K R FLOPs) and, with dropout, the keep mask as bool (M K bytes; d(x) itself, a second
    activation-sized copy in x's dtype, is rebuilt on chip from x and the mask in the dA kernel). Never
    saved nor materialized: the dense W (the dx kernel dequantizes W tiles in registers; the base stays as
    stored, e.g. 4.127 bits per weight for NF4 with double quantization) and y.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        x: torch.Tensor,
        a: torch.Tensor,
        b: torch.Tensor,
        bias: torch.Tensor | None,
        w: QuantizedTensor | torch.Tensor,
        scale: float,
        keep_mask: torch.Tensor | None,
        keep_scale: float,
    ) -> torch.Tensor:
        lead, k, n = x.shape[:-1], x.shape[-1], b.shape[0]
        x2 = x.reshape(-1, k).contiguous()
        if keep_mask is None:
            y, xa = matmul(x2, w, bias=bias, lora=LoRAEpilogue(a=a, b=b, scale=scale), return_xa=True)
        else:
            keep_mask = keep_mask.reshape(-1, k).contiguous()
            xd = x2 * keep_mask * keep_scale
            xa = matmul(xd, a)  # (M, R)
            y = matmul(x2, w, bias=bias).add_(matmul(xa, b), alpha=scale)
        ctx.save_for_backward(x2, a, b, xa, keep_mask)
        ctx.w, ctx.scale, ctx.keep_scale, ctx.lead = w, scale, keep_scale, lead
        return y.view(*lead, n)

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        x2, a, b, xa, keep_mask = ctx.saved_tensors
        need_x, need_a, need_b, need_bias = ctx.needs_input_grad[:4]
        dy2 = dy.reshape(-1, b.shape[0]).to(x2.dtype).contiguous()
        dx = da = db = dbias = None
        if need_x or need_a:
            dyb = lora_dyb(dy2, b)
            if need_x:
                dx = lora_dx(dy2, ctx.w, dyb, a, ctx.scale, keep_mask=keep_mask, keep_scale=ctx.keep_scale)
                dx = dx.view(*ctx.lead, x2.shape[1])
            if need_a:
                da = lora_da(dyb, x2, ctx.scale, keep_mask=keep_mask, keep_scale=ctx.keep_scale)
        if need_b:
            db = lora_db(dy2, xa, ctx.scale)
        if need_bias:
            dbias = dy2.float().sum(0).to(dy2.dtype)
        return dx, da, db, dbias, None, None, None, None


def lora_linear(
    x: torch.Tensor,
    w: QuantizedTensor | torch.Tensor,
    adapter: LoRAAdapter,
    *,
    bias: torch.Tensor | None = None,
    training: bool = True,
    keep_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Fused LoRA/QLoRA linear layer: y = x W^T + s (d(x) A^T) B^T + bias, differentiable in x, A, B, bias.

    x: (..., K) fp32|fp16|bf16; w: (N, K) dense tensor, or QuantizedTensor nf4|fp4 (± double quant) | int8;
    adapter: a (R, K) and b (N, R) in x's dtype, scale, dropout p in [0, 1); bias: (N,) in x's dtype or
    None; training: apply the adapter dropout (p > 0 only); keep_mask: x-shaped bool, a given dropout keep
    mask (drawn when None). Returns (..., N) in x's dtype.

    Raises:
        ValueError: a shape, dtype, dropout probability or base format that does not match.
    """
    if not isinstance(x, torch.Tensor) or x.dim() < 1:
        raise ValueError(f"x: {type(x).__name__}; expected a tensor (..., K)")
    a, b = adapter.a, adapter.b
    if a.dim() != 2 or b.dim() != 2 or a.shape[0] != b.shape[1] or a.shape[0] < 1:
        raise ValueError(f"adapter: a {tuple(a.shape)} and b {tuple(b.shape)}; expected (R, K) and (N, R), R >= 1")
    k, n = a.shape[1], b.shape[0]
    if x.shape[-1] != k:
        raise ValueError(f"x: shape {tuple(x.shape)}; expected (..., {k}) to match adapter.a {tuple(a.shape)}")
    if x.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"x: dtype {x.dtype}; expected fp32, fp16 or bf16")
    for name, t in (("adapter.a", a), ("adapter.b", b), ("bias", bias)):
        if t is not None and t.dtype != x.dtype:
            raise ValueError(f"{name}: dtype {t.dtype}; expected x's dtype {x.dtype}")
    if bias is not None and tuple(bias.shape) != (n,):
        raise ValueError(f"bias: shape {tuple(bias.shape)}; expected ({n},)")
    check_base(w, n, k)
    p = adapter.dropout
    if not 0.0 <= p < 1.0:
        raise ValueError(f"adapter.dropout: {p!r}; expected 0 <= p < 1")
    if not (training and p > 0):
        keep_mask = None
    elif keep_mask is None:
        keep_mask = torch.rand(x.shape, device=x.device) >= p
    elif keep_mask.shape != x.shape or keep_mask.dtype != torch.bool:
        raise ValueError(f"keep_mask: {keep_mask.dtype} {tuple(keep_mask.shape)}; expected bool {tuple(x.shape)}")
    keep_scale = 1.0 / (1.0 - p)
    return LoRAFunction.apply(x, a, b, bias, w, float(adapter.scale), keep_mask, keep_scale)
