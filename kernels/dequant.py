"""Dequantize NF4/FP4 (double-quant absmax decoded in the kernel) and row-wise/per-tensor int8 to fp16/bf16/fp32.

Element i of the flat (row-major) tensor, by quant/'s rules:
    4-bit: byte i // 2 holds code c in its high nibble when i is even; w_i = code[c] * absmax[i // BLOCKSIZE],
           with double quantization absmax[b] = code2[q[b]] * absmax2[b // 256] + offset.
    int8:  w_i = (q_i * absmax[row]) * (1/127) (row = i // cols; a per-tensor scale has stride 0), only
           multiplies, as bitsandbytes' int8_vectorwise_dequant.
The product is fp32 and cast once, as `QuantizedTensor.dequantize` does, and the launch turns FMA contraction
off (`enable_fp_fusion=False`): the double-quant scale is a product then a sum, each rounded, as in quant/ and
bitsandbytes, so the GPU output equals theirs bit for bit.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from quant import QuantizedTensor
from quant.int8 import INV_127

__all__ = ["audit_cases", "audit_key", "dequantize", "dequantize_ref"]

_INDEX_LIMIT = 2**31  # int32 element offsets in the kernel
_OUT_DTYPES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
BLOCK = 1024  # elements per program (power of two; 4 warps, 8 elements a thread)
_INV_127 = tl.constexpr(INV_127)  # an fp32 operand in the kernel, as bitsandbytes' scalar


def dequantize_ref(qt: QuantizedTensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Reference: quant/'s own dequantize. qt any format; returns qt.shape in `dtype` (default qt.dtype)."""
    return qt.dequantize(dtype)


@triton.jit
def _dequantize_kernel(
    # pointers: codes (4-bit packed u8 or int8), scales, 4-bit codebook, double-quant state, output
    data_ptr, absmax_ptr, code_ptr, dq_data_ptr, dq_absmax_ptr, dq_code_ptr, out_ptr,
    # scalars: the double-quant mean offset; sizes: element count, int8 row length
    dq_offset, n_elements, cols, stride_sn,
    # meta
    IS_4BIT: tl.constexpr, DOUBLE_QUANT: tl.constexpr, BLOCKSIZE: tl.constexpr, DQ_BLOCKSIZE: tl.constexpr,
    BLOCK: tl.constexpr,
):  # fmt: skip
    """out[i] = value(i) * scale(i) for BLOCK elements; grid (cdiv(n, BLOCK),)."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n_elements
    if IS_4BIT:
        byte = tl.load(data_ptr + (offs >> 1), mask=mask, other=0).to(tl.int32)
        nibble = tl.where((offs & 1) == 0, byte >> 4, byte & 15)
        value = tl.load(code_ptr + nibble, mask=mask, other=0.0)
        block = offs // BLOCKSIZE
        if DOUBLE_QUANT:
            q = tl.load(dq_data_ptr + block, mask=mask, other=0).to(tl.int32)
            scale = tl.load(dq_code_ptr + q, mask=mask, other=0.0)
            scale = scale * tl.load(dq_absmax_ptr + block // DQ_BLOCKSIZE, mask=mask, other=0.0) + dq_offset
        else:
            scale = tl.load(absmax_ptr + block, mask=mask, other=0.0)
    else:
        value = tl.load(data_ptr + offs, mask=mask, other=0).to(tl.float32)
        value = value * tl.load(absmax_ptr + (offs // cols) * stride_sn, mask=mask, other=0.0)
        scale = _INV_127
    tl.store(out_ptr + offs, (value * scale).to(out_ptr.dtype.element_ty), mask=mask)


def dequantize(qt: QuantizedTensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Dequantize on the device: qt nf4|fp4 (± double quant) | int8 (row-wise or per-tensor, outlier columns
    restored) | fp16|bf16 (a cast). Returns qt.shape in `dtype` (fp16|bf16|fp32; default qt.dtype).

    Raises:
        TypeError: qt is not a QuantizedTensor.
        ValueError: `dtype` is not fp16, bf16 or fp32, or qt has >= 2^31 elements.
    """
    # (1) check constraints
    if not isinstance(qt, QuantizedTensor):
        raise TypeError(f"qt: {type(qt).__name__}; expected a quant.QuantizedTensor")
    dtype = dtype or qt.dtype
    if dtype not in _OUT_DTYPES:
        raise ValueError(f"dtype: {dtype}; expected torch.float16, torch.bfloat16 or torch.float32")
    if qt.numel >= _INDEX_LIMIT:
        raise ValueError(f"qt: {qt.numel} elements; the kernel indexes in int32 (< 2^31)")
    if qt.fmt in ("fp16", "bf16"):
        return qt.data.to(dtype)
    # (2) allocate output
    out = torch.empty(qt.shape, dtype=dtype, device=qt.device)
    n = qt.numel
    if n == 0:
        return out
    # (3) launch
    dummy_f = torch.empty(1, dtype=torch.float32, device=qt.device)
    dummy_u8 = torch.empty(1, dtype=torch.uint8, device=qt.device)
    is_4bit = qt.fmt in ("nf4", "fp4")
    dq = qt.state2
    absmax = qt.absmax if qt.absmax is not None else dummy_f
    cols = qt.shape[-1] if len(qt.shape) else 1
    _dequantize_kernel[(triton.cdiv(n, BLOCK),)](
        qt.data, absmax, qt.code if is_4bit else dummy_f,
        dq.data if dq else dummy_u8, dq.absmax if dq else dummy_f, dq.code if dq else dummy_f, out,
        dq.offset if dq else 0.0, n, max(cols, 1), 1 if absmax.dim() else 0,
        IS_4BIT=is_4bit, DOUBLE_QUANT=dq is not None, BLOCKSIZE=max(qt.blocksize, 1),
        DQ_BLOCKSIZE=dq.blocksize if dq else 256, BLOCK=BLOCK, enable_fp_fusion=False,
    )  # fmt: skip
    if qt.fmt == "int8" and qt.outlier_cols is not None and qt.outlier_cols.numel():
        assert qt.outliers is not None
        out.view(-1, cols)[:, qt.outlier_cols] = qt.outliers.to(dtype)
    return out


def audit_cases() -> list[object]:
    """AuditCases for kernels.audit: 4-bit with and without double quantization, int8; each output dtype."""
    from kernels.audit import AuditCase

    cases: list[object] = []
    variants = {"nf4": ("*u8", True, False), "nf4dq": ("*u8", True, True), "int8": ("*i8", False, False)}
    for name, (data_type, is_4bit, dq) in variants.items():
        for out in ("fp16", "bf16", "fp32"):
            sig = {
                "data_ptr": data_type, "absmax_ptr": "*fp32", "code_ptr": "*fp32", "dq_data_ptr": "*u8",
                "dq_absmax_ptr": "*fp32", "dq_code_ptr": "*fp32", "out_ptr": f"*{out}", "dq_offset": "fp32",
                "n_elements": "i32", "cols": "i32", "stride_sn": "i32",
                **{name: "constexpr" for name in ("IS_4BIT", "DOUBLE_QUANT", "BLOCKSIZE", "DQ_BLOCKSIZE", "BLOCK")},
            }  # fmt: skip
            consts = {"IS_4BIT": is_4bit, "DOUBLE_QUANT": dq, "BLOCKSIZE": 64, "DQ_BLOCKSIZE": 256, "BLOCK": BLOCK}
            options = {"enable_fp_fusion": False}  # as launched
            cases.append(AuditCase(_dequantize_kernel, f"{name}-{out}-B{BLOCK}-w4", sig, consts, 4, 1, options))
    return cases


def audit_key(qt: QuantizedTensor, dtype: torch.dtype) -> str:
    """ "<kernel>:<config>" of the audit row that covers `dequantize(qt, dtype)` (FP4 runs NF4's code)."""
    name = "int8" if qt.fmt == "int8" else "nf4dq" if qt.state2 is not None else "nf4"
    return f"_dequantize_kernel:{name}-{_OUT_DTYPES[dtype]}-B{BLOCK}-w4"
