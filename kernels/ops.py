"""torch.library custom ops over the kernels' public launchers, so that torch.compile traces a model of LoRALinear
without graph breaks (a Triton launcher with Python-side plans is opaque to Dynamo; an op with a fake
implementation is not).

    qkbench::dequantize(W..., out_dtype) -> w                   kernels.dequant.dequantize
    qkbench::matmul(x, W..., bias) -> y                         kernels.matmul.matmul; differentiable in x and bias
    qkbench::lora_fwd(x, a, b, bias, W..., ...) -> (y, xa)      LoRAFunction's forward (the fused kernels)
    qkbench::lora_bwd(dy, x, a, b, xa, W..., ...) -> grads      LoRAFunction's backward; lora_fwd's autograd formula

"W..." is a frozen weight flattened for an op schema (`weight_args`): its tensors in WEIGHT_FIELDS order (None where
the format has none), then fmt ("dense" for a plain tensor), the original dtype, shape, blocksize and the
double-quant offset and blocksize; `weight_from_args` rebuilds the QuantizedTensor (checked as always). The ops run
LoRAFunction's own forward and backward (with a plain context object), so eager and compiled runs share every
kernel and every line of the math. `lora_linear` and `matmul` here are the entry points a traced model calls;
`LoRALinear.forward` switches to them while torch.compile traces.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

import torch

from kernels.dequant import dequantize as _dequantize
from kernels.lora.function import LoRAFunction
from kernels.lora.naive import LoRAAdapter
from kernels.matmul import matmul as _matmul
from quant import QuantizedTensor
from quant.blockwise import DoubleQuantState

__all__ = ["WEIGHT_FIELDS", "lora_linear", "matmul", "weight_args", "weight_from_args"]

WEIGHT_FIELDS = ("data", "absmax", "code", "state2.data", "state2.absmax", "state2.code", "outlier_cols", "outliers")
Tensors = Sequence[torch.Tensor | None]


WeightArgs = tuple[list[torch.Tensor | None], str, torch.dtype, list[int], int, float, int]


def weight_args(w: QuantizedTensor | torch.Tensor) -> WeightArgs:
    """(tensors in WEIGHT_FIELDS order, fmt, dtype, shape, blocksize, dq_offset, dq_blocksize) of a weight."""
    if not isinstance(w, QuantizedTensor):
        return [w, *([None] * 7)], "dense", w.dtype, list(w.shape), 0, 0.0, 0
    s2 = w.state2
    tensors: list[torch.Tensor | None] = [w.data, w.absmax, w.code]
    tensors += [None, None, None] if s2 is None else [s2.data, s2.absmax, s2.code]
    tensors += [w.outlier_cols, w.outliers]
    offset, blocksize2 = (0.0, 0) if s2 is None else (float(s2.offset), s2.blocksize)
    return tensors, w.fmt, w.dtype, list(w.shape), w.blocksize, offset, blocksize2


def weight_from_args(
    tensors: Tensors, fmt: str, dtype: torch.dtype, shape: Sequence[int], blocksize: int, dq_offset: float,
    dq_blocksize: int,
) -> QuantizedTensor | torch.Tensor:  # fmt: skip
    """The weight `weight_args` flattened: a dense tensor, or the QuantizedTensor (QuantizedTensor's checks apply).

    Raises:
        ValueError: tensors that do not fit the format (quant.FieldError names the field).
    """
    data, absmax, code, d2, a2, c2, cols, outliers = tensors
    assert data is not None
    if fmt == "dense":
        return data
    state2 = None if d2 is None else DoubleQuantState(d2, a2, dq_offset, c2, dq_blocksize)  # type: ignore[arg-type]
    return QuantizedTensor(fmt, torch.Size(shape), dtype, data, absmax, blocksize, code, state2, cols, outliers)  # type: ignore[arg-type]


# -- dequantize, matmul ---------------------------------------------------------------------------------------------


@torch.library.custom_op("qkbench::dequantize", mutates_args=())
def _dequantize_op(
    w: Tensors, fmt: str, dtype: torch.dtype, shape: Sequence[int], blocksize: int, dq_offset: float,
    dq_blocksize: int, out_dtype: torch.dtype,
) -> torch.Tensor:  # fmt: skip
    qt = weight_from_args(w, fmt, dtype, shape, blocksize, dq_offset, dq_blocksize)
    if not isinstance(qt, QuantizedTensor):
        return qt.to(out_dtype, copy=True)
    out = _dequantize(qt, out_dtype)
    return out.clone() if out.data_ptr() == qt.data.data_ptr() else out  # a cast format may return its data


@_dequantize_op.register_fake
def _(w, fmt, dtype, shape, blocksize, dq_offset, dq_blocksize, out_dtype):  # type: ignore[no-untyped-def]
    return w[0].new_empty(list(shape), dtype=out_dtype)


@torch.library.custom_op("qkbench::matmul", mutates_args=())
def _matmul_op(
    x: torch.Tensor, w: Tensors, fmt: str, dtype: torch.dtype, shape: Sequence[int], blocksize: int, dq_offset: float,
    dq_blocksize: int, bias: torch.Tensor | None,
) -> torch.Tensor:  # fmt: skip
    weight = weight_from_args(w, fmt, dtype, shape, blocksize, dq_offset, dq_blocksize)
    return _matmul(x, weight, bias=bias)  # type: ignore[return-value]  # a tensor without return_xa


@_matmul_op.register_fake
def _(x, w, fmt, dtype, shape, blocksize, dq_offset, dq_blocksize, bias):  # type: ignore[no-untyped-def]
    return x.new_empty((*x.shape[:-1], shape[0]))


def _matmul_setup(ctx: Any, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
    _, w, *meta, bias = inputs
    ctx.save_for_backward(*[t for t in w if t is not None])
    ctx.present = [t is not None for t in w]
    ctx.meta, ctx.has_bias = meta, bias is not None


def _matmul_backward(ctx: Any, dy: torch.Tensor) -> tuple[Any, ...]:
    """dx = dy W (W dequantized to dy's dtype by the dequantize op), dbias = Σ dy over rows; W gets no gradient."""
    saved = iter(ctx.saved_tensors)
    w = [next(saved) if present else None for present in ctx.present]
    dx = dbias = None
    if ctx.needs_input_grad[0]:
        fmt, dtype, shape, blocksize, offset, blocksize2 = ctx.meta
        dense = torch.ops.qkbench.dequantize(w, fmt, dtype, shape, blocksize, offset, blocksize2, dy.dtype)
        dx = dy @ dense
    if ctx.has_bias and ctx.needs_input_grad[-1]:
        dbias = dy.reshape(-1, dy.shape[-1]).float().sum(0).to(dy.dtype)
    return dx, None, None, None, None, None, None, None, dbias


_matmul_op.register_autograd(_matmul_backward, setup_context=_matmul_setup)


def matmul(x: torch.Tensor, w: QuantizedTensor | torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """kernels.matmul.matmul(x, w, bias=bias) as the qkbench::matmul op: x (..., K), w (N, K) -> (..., N) in x's
    dtype, differentiable in x and bias (W frozen); traceable by torch.compile."""
    return torch.ops.qkbench.matmul(x, *weight_args(w), bias)


# -- the LoRA layer ---------------------------------------------------------------------------------------------------


def _ctx(**fields: Any) -> SimpleNamespace:
    """A stand-in for an autograd context: LoRAFunction's forward saves into it, its backward reads from it."""
    ctx = SimpleNamespace(**fields)
    ctx.save_for_backward = lambda *ts: setattr(ctx, "saved_tensors", ts)
    return ctx


@torch.library.custom_op("qkbench::lora_fwd", mutates_args=())
def _lora_fwd(
    x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None, w: Tensors, fmt: str,
    dtype: torch.dtype, shape: Sequence[int], blocksize: int, dq_offset: float, dq_blocksize: int, scale: float,
    keep_mask: torch.Tensor | None, keep_scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    weight = weight_from_args(w, fmt, dtype, shape, blocksize, dq_offset, dq_blocksize)
    ctx = _ctx()
    y = LoRAFunction.forward(ctx, x, a, b, bias, weight, scale, keep_mask, keep_scale)
    return y, ctx.saved_tensors[3]  # xa = d(x) A^T (M, R)


@_lora_fwd.register_fake
def _(x, a, b, bias, w, fmt, dtype, shape, blocksize, dq_offset, dq_blocksize, scale, keep_mask, keep_scale):  # type: ignore[no-untyped-def]
    return x.new_empty((*x.shape[:-1], b.shape[0])), x.new_empty((x.numel() // x.shape[-1], a.shape[0]))


@torch.library.custom_op("qkbench::lora_bwd", mutates_args=())
def _lora_bwd(
    dy: torch.Tensor, x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, xa: torch.Tensor, bias: torch.Tensor | None,
    w: Tensors, fmt: str, dtype: torch.dtype, shape: Sequence[int], blocksize: int, dq_offset: float,
    dq_blocksize: int, scale: float, keep_mask: torch.Tensor | None, keep_scale: float, needs: Sequence[bool],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    """(dx, dA, dB, dbias) of lora_fwd; one not in `needs` (x, a, b, bias) is an empty tensor."""
    weight = weight_from_args(w, fmt, dtype, shape, blocksize, dq_offset, dq_blocksize)
    k = x.shape[-1]
    mask = None if keep_mask is None else keep_mask.reshape(-1, k).contiguous()
    ctx = _ctx(needs_input_grad=(*needs, False, False, False, False), w=weight, scale=scale, keep_scale=keep_scale,
               lead=x.shape[:-1], saved_tensors=(x.reshape(-1, k).contiguous(), a, b, xa, mask))  # fmt: skip
    grads = LoRAFunction.backward(ctx, dy)[:4]
    return tuple(g if g is not None else x.new_empty(0) for g in grads)  # type: ignore[return-value]


@_lora_bwd.register_fake
def _(dy, x, a, b, xa, bias, w, fmt, dtype, shape, blocksize, dq_offset, dq_blocksize, scale, keep_mask, keep_scale,
      needs):  # type: ignore[no-untyped-def]  # fmt: skip
    likes = zip((x, a, b, bias), needs, strict=True)
    return tuple(t.new_empty(t.shape) if need and t is not None else x.new_empty(0) for t, need in likes)


def _lora_setup(ctx: Any, inputs: tuple[Any, ...], output: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, a, b, bias, w, *meta, scale, keep_mask, keep_scale = inputs
    ctx.mark_non_differentiable(output[1])
    ctx.save_for_backward(x, a, b, output[1], *[t for t in (bias, keep_mask, *w) if t is not None])
    ctx.present = [t is not None for t in (bias, keep_mask, *w)]
    ctx.meta, ctx.scale, ctx.keep_scale = meta, scale, keep_scale


def _lora_backward(ctx: Any, dy: torch.Tensor, _dxa: torch.Tensor | None) -> tuple[Any, ...]:
    x, a, b, xa, *rest = ctx.saved_tensors
    rest_iter = iter(rest)
    bias, keep_mask, *w = [next(rest_iter) if present else None for present in ctx.present]
    needs = [bool(n) for n in ctx.needs_input_grad[:4]]
    grads = torch.ops.qkbench.lora_bwd(
        dy, x, a, b, xa, bias, w, *ctx.meta, ctx.scale, keep_mask, ctx.keep_scale, needs
    )  # fmt: skip
    dx, da, db, dbias = (g if need else None for g, need in zip(grads, needs, strict=True))
    return dx, da, db, dbias, None, None, None, None, None, None, None, None, None, None


_lora_fwd.register_autograd(_lora_backward, setup_context=_lora_setup)


def lora_linear(
    x: torch.Tensor,
    w: QuantizedTensor | torch.Tensor,
    adapter: LoRAAdapter,
    *,
    bias: torch.Tensor | None = None,
    training: bool = True,
    keep_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """kernels.lora.lora_linear as the qkbench::lora_fwd op (same arguments, shapes and dtypes; the checks are the
    launchers' own): y (..., N), differentiable in x, A, B and bias; traceable by torch.compile."""
    p = adapter.dropout
    if not (training and p > 0):
        keep_mask = None
    elif keep_mask is None:
        keep_mask = torch.rand(x.shape, device=x.device) >= p
    y, _ = torch.ops.qkbench.lora_fwd(
        x, adapter.a, adapter.b, bias, *weight_args(w), float(adapter.scale), keep_mask, 1.0 / (1.0 - p)
    )  # fmt: skip
    return y
