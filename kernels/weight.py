"""The weight operand: how a stored W (quant.QuantizedTensor or a dense tensor) enters every kernel that reads it.

Written once here and used by kernels.dequant, kernels.matmul (gemv, gemm) and kernels.lora's backward:
- `weight_operand(w)`: the kernel arguments of W's storage (pointers, the double-quant offset, strides) and the
  format constexprs (IS_4BIT, IS_INT8, DOUBLE_QUANT, BLOCKSIZE, DQ_BLOCKSIZE);
- the scale rule: a 4-bit block's scale is absmax[b], or with double quantization
  code2[q[b]] * absmax2[b // DQ_BLOCKSIZE] + offset (`_block_scale`); an int8 element is (q * absmax[row]) * (1/127),
  only multiplies, as bitsandbytes' int8_vectorwise_dequant (`_int8_value`); a kernel that sums q x over a row
  before scaling applies the same two factors in the same order to the sum (`_int8_rescale`);
- the decode: byte b holds element 2j in its high nibble and 2j+1 in its low one; a nibble's value is code[c] from
  the 16-entry codebook, loaded once per program into registers and gathered on chip (`_codebook`,
  `_decode_pairs`), never a per-element global load;
- LLM.int8()'s outlier columns (kept in fp16 beside zeroed codes) are added back by `outlier_fixup` (torch).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import triton
import triton.language as tl

from quant import QuantizedTensor
from quant.int8 import INV_127

__all__ = [
    "DTYPE_NAMES",
    "WeightOperand",
    "outlier_fixup",
    "outlier_fixup_dx",
    "precision_of",
    "row_aligned",
    "weight_operand",
]

_INV_127 = tl.constexpr(INV_127)
# The floating dtypes the kernels take for activations, dense weights and outputs, by the names Triton and the
# audit use for them.
DTYPE_NAMES: dict[torch.dtype, str] = {
    torch.float32: "fp32",
    torch.float16: "fp16",
    torch.bfloat16: "bf16",
}  # an fp32 operand in the kernels, as bitsandbytes' scalar


@dataclass(frozen=True)
class WeightOperand:
    """W's kernel arguments. args: w_ptr, absmax_ptr, code_ptr, dq_data_ptr, dq_absmax_ptr, dq_code_ptr,
    dq_offset, stride_wn (storage elements between rows: bytes for 4-bit, 0 where a 4-bit row may start
    mid-byte), stride_sn (int8 scale stride: 1 row-wise, 0 per-tensor); consts: the format constexprs."""

    args: dict[str, Any]
    consts: dict[str, Any]
    precision: str  # "nf4dq", "nf4", "fp4dq", "fp4", "int8", "bf16", "fp16", "fp32"


def row_aligned(w: QuantizedTensor | torch.Tensor) -> bool:
    """Every row of W (N, K) starts on a byte and a quantization block: always, except a 4-bit W whose K is odd
    or not a multiple of its blocksize (a row may then start mid-byte or mid-block)."""
    if isinstance(w, QuantizedTensor) and w.fmt in ("nf4", "fp4"):
        k = w.shape[-1]
        return k % w.blocksize == 0 and k % 2 == 0
    return True


def precision_of(w: QuantizedTensor | torch.Tensor) -> str:
    """The audit's and suites' name of W's precision, e.g. "nf4dq" or "bf16"."""
    if isinstance(w, QuantizedTensor):
        return w.fmt + ("dq" if w.state2 is not None else "")
    return DTYPE_NAMES[w.dtype]


def weight_operand(w: QuantizedTensor | torch.Tensor) -> WeightOperand:
    """The kernel arguments of W (N, K): a QuantizedTensor nf4|fp4 (± double quant) | int8, or a dense tensor with
    a unit stride along K. Unused pointers are 1-element dummies on W's device (meta tensors stay meta)."""
    device = w.device
    f32 = torch.empty(1, dtype=torch.float32, device=device)
    u8 = torch.empty(1, dtype=torch.uint8, device=device)
    consts = {"IS_4BIT": False, "IS_INT8": False, "DOUBLE_QUANT": False, "BLOCKSIZE": 64, "DQ_BLOCKSIZE": 256}
    args: dict[str, Any] = {"w_ptr": w, "absmax_ptr": f32, "code_ptr": f32, "dq_data_ptr": u8, "dq_absmax_ptr": f32,
                            "dq_code_ptr": f32, "dq_offset": 0.0, "stride_wn": 0, "stride_sn": 0}  # fmt: skip
    if not isinstance(w, QuantizedTensor):
        args["stride_wn"] = w.stride(0)
        return WeightOperand(args, consts, precision_of(w))
    args["w_ptr"] = w.data
    if w.fmt == "int8":
        assert w.absmax is not None
        consts["IS_INT8"] = True
        args.update(absmax_ptr=w.absmax, stride_wn=w.data.stride(0), stride_sn=1 if w.absmax.dim() else 0)
        return WeightOperand(args, consts, precision_of(w))
    assert w.code is not None
    k = w.shape[-1]
    consts.update(IS_4BIT=True, BLOCKSIZE=w.blocksize)
    args.update(code_ptr=w.code, stride_wn=k // 2 if row_aligned(w) else 0)  # 0: a row may start mid-byte
    dq = w.state2
    if dq is None:
        assert w.absmax is not None
        args["absmax_ptr"] = w.absmax
    else:
        consts.update(DOUBLE_QUANT=True, DQ_BLOCKSIZE=dq.blocksize)
        args.update(dq_data_ptr=dq.data, dq_absmax_ptr=dq.absmax, dq_code_ptr=dq.code, dq_offset=dq.offset)
    return WeightOperand(args, consts, precision_of(w))


def outlier_fixup(y: torch.Tensor, x2: torch.Tensor, w: QuantizedTensor | torch.Tensor) -> torch.Tensor:
    """y (M, N) += x2[:, cols] (outliers - decoded zeroed codes)^T for LLM.int8()'s fp16 outlier columns of W."""
    delta = _outlier_delta(w) if isinstance(w, QuantizedTensor) else None
    if delta is not None:
        cols, d = delta
        y += (x2[:, cols].float() @ d.T).to(y.dtype)
    return y


def _outlier_delta(w: QuantizedTensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(cols, outliers - decoded zeroed codes (N, k) fp32) of LLM.int8()'s fp16 outlier columns, or None."""
    if w.outlier_cols is None or not w.outlier_cols.numel():
        return None
    assert w.outliers is not None and w.absmax is not None
    cols = w.outlier_cols
    codes = (w.data[:, cols].float() * w.absmax.float().view(-1, 1)) * INV_127  # the int8 rule, as the kernels
    return cols, w.outliers.float() - codes


def outlier_fixup_dx(dx: torch.Tensor, dy: torch.Tensor, w: QuantizedTensor | torch.Tensor) -> torch.Tensor:
    """dx (M, K)[:, cols] += dy (outliers - decoded codes): the backward of `outlier_fixup`."""
    delta = _outlier_delta(w) if isinstance(w, QuantizedTensor) else None
    if delta is not None:
        cols, d = delta
        dx[:, cols] += (dy.float() @ d).to(dx.dtype)
    return dx


@triton.jit
def _codebook(code_ptr, IS_4BIT: tl.constexpr):
    """The 16 fp32 code values in registers (zeros for formats without a codebook)."""
    return tl.load(code_ptr + tl.arange(0, 16)) if IS_4BIT else tl.zeros((16,), dtype=tl.float32)


@triton.jit
def _lookup(code, nibble):
    """code[nibble] for any shape of nibble (int32 in 0..15), gathered on chip from the register codebook."""
    flat = tl.reshape(nibble, (nibble.numel,))
    return tl.reshape(tl.gather(code, flat, 0), nibble.shape)


@triton.jit
def _decode_pairs(byte, code):
    """(code[byte >> 4], code[byte & 15]): the values of elements 2j and 2j+1 stored in byte j (int32 0..255),
    in one gather (one trip of the codebook through shared memory, not two)."""
    return tl.split(_lookup(code, tl.join(byte >> 4, byte & 15)))


@triton.jit
def _block_scale(
    block, mask, absmax_ptr, dq_data_ptr, dq_absmax_ptr, dq_code_ptr, dq_offset,
    DOUBLE_QUANT: tl.constexpr, DQ_BLOCKSIZE: tl.constexpr,
):  # fmt: skip
    """fp32 scale of 4-bit quantization blocks `block` (any shape): absmax[b], or code2[q[b]] absmax2[b // 256] +
    offset with double quantization (a product then a sum: launched without FMA contraction it rounds twice,
    as quant/ and bitsandbytes do)."""
    if DOUBLE_QUANT:
        q = tl.load(dq_data_ptr + block, mask=mask, other=0).to(tl.int32)
        scale = tl.load(dq_code_ptr + q, mask=mask, other=0.0)
        scale = scale * tl.load(dq_absmax_ptr + block // DQ_BLOCKSIZE, mask=mask, other=0.0) + dq_offset
    else:
        scale = tl.load(absmax_ptr + block, mask=mask, other=0.0)
    return scale


@triton.jit
def _int8_value(q, row_absmax):
    """An int8 element decoded: (q * absmax[row]) * (1/127) in fp32."""
    return (q.to(tl.float32) * row_absmax) * _INV_127


@triton.jit
def _int8_rescale(acc, row_absmax):
    """A row sum of q x scaled as one element would be: (acc * absmax[row]) * (1/127)."""
    return (acc * row_absmax) * _INV_127


@triton.jit
def _w_tile(
    # W storage (weight_operand's args)
    w_ptr, absmax_ptr, code, dq_data_ptr, dq_absmax_ptr, dq_code_ptr, dq_offset,
    # the tile's indices (BLOCK_N,) and (BLOCK_K,), its first column, bounds, W's row length and strides
    offs_n, offs_k, k0, N, K, stride_wn, stride_sn,
    IS_4BIT: tl.constexpr, IS_INT8: tl.constexpr, DOUBLE_QUANT: tl.constexpr,
    BLOCKSIZE: tl.constexpr, DQ_BLOCKSIZE: tl.constexpr, ROW_SCALE: tl.constexpr,
):  # fmt: skip
    """The (BLOCK_N, BLOCK_K) tile of W decoded in registers (fp32; dense W as stored), element by element: any K,
    a 4-bit row may start mid-byte and a block may cross the tile. `code` is `_codebook(code_ptr, IS_4BIT)`.
    ROW_SCALE: the tile's columns [k0, k0 + BLOCK_K) lie in one quantization block of every row (K a multiple of
    BLOCKSIZE >= BLOCK_K), so one scale a row is loaded instead of one an element."""
    n = offs_n[:, None].to(tl.int64)
    k = offs_k[None, :]
    mask = (offs_n[:, None] < N) & (k < K)
    if IS_4BIT:
        i = n * K + k
        byte = tl.load(w_ptr + (i >> 1), mask=mask, other=0).to(tl.int32)
        nibble = tl.where((i & 1) == 0, byte >> 4, byte & 15)
        if ROW_SCALE:
            block = (offs_n.to(tl.int64) * K + k0) // BLOCKSIZE
            smask = offs_n < N
        else:
            block = i // BLOCKSIZE
            smask = mask
        scale = _block_scale(
            block, smask, absmax_ptr, dq_data_ptr, dq_absmax_ptr, dq_code_ptr, dq_offset, DOUBLE_QUANT, DQ_BLOCKSIZE
        )
        if ROW_SCALE:
            scale = scale[:, None]
        w = _lookup(code, nibble) * scale
    elif IS_INT8:
        q = tl.load(w_ptr + n * stride_wn + k, mask=mask, other=0)
        row_absmax = tl.load(absmax_ptr + offs_n * stride_sn, mask=offs_n < N, other=0.0)
        w = _int8_value(q, row_absmax[:, None])
    else:
        w = tl.load(w_ptr + n * stride_wn + k, mask=mask, other=0.0)
    return w
