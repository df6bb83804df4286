"""Dequantize NF4/FP4 (double-quant absmax decoded in the kernel) and row-wise/per-tensor int8 to fp16/bf16/fp32.

By quant/'s rules, through kernels.weight (the one definition of the scale and the decode):
    4-bit: byte j holds elements 2j (high nibble) and 2j+1 (low nibble), both decoded from the one load through the
           register codebook: w = code[c] * scale(block), block = element // BLOCKSIZE;
    int8:  w = (q * absmax[row]) * (1/127), only multiplies, as bitsandbytes' int8_vectorwise_dequant.
The product is fp32 and cast once, as `QuantizedTensor.dequantize` does, and the launch turns FMA contraction
off (`enable_fp_fusion=False`): the double-quant scale is a product then a sum, each rounded, as in quant/ and
bitsandbytes, so the GPU output equals theirs bit for bit. Offsets are 64-bit.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.launch import Launch, Workload, audit_shapes
from kernels.weight import DTYPE_NAMES, _block_scale, _codebook, _decode_pairs, _int8_value, weight_operand
from quant import QuantizedTensor

__all__ = ["audit_key", "audit_workloads", "dequantize", "dequantize_ref", "prepare_dequantize"]

BLOCK = 1024  # bytes (4-bit: 2048 elements) or int8 elements a program; 4 warps


def dequantize_ref(qt: QuantizedTensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Reference: quant/'s own dequantize. qt any format; returns qt.shape in `dtype` (default qt.dtype)."""
    return qt.dequantize(dtype)


@triton.jit
def _dequantize_kernel(
    # pointers: W storage (kernels.weight), output (n,)
    w_ptr, absmax_ptr, code_ptr, dq_data_ptr, dq_absmax_ptr, dq_code_ptr, out_ptr,
    # scalars: the double-quant offset; sizes: element count, int8 row length, int8 scale stride
    dq_offset, n_elements, cols, stride_sn,
    # W format (kernels.weight) and meta
    IS_4BIT: tl.constexpr, DOUBLE_QUANT: tl.constexpr, BLOCKSIZE: tl.constexpr, DQ_BLOCKSIZE: tl.constexpr,
    BLOCK: tl.constexpr,
):  # fmt: skip
    """4-bit: 2 BLOCK elements from BLOCK bytes; int8: BLOCK elements; grid (cdiv(bytes or n, BLOCK),)."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    if IS_4BIT:
        byte_mask = 2 * offs < n_elements
        byte = tl.load(w_ptr + offs, mask=byte_mask, other=0).to(tl.int32)
        hi, lo = _decode_pairs(byte, _codebook(code_ptr, IS_4BIT))
        scale = _block_scale(
            (2 * offs) // BLOCKSIZE,
            byte_mask,
            absmax_ptr,
            dq_data_ptr,
            dq_absmax_ptr,
            dq_code_ptr,
            dq_offset,
            DOUBLE_QUANT,
            DQ_BLOCKSIZE,
        )  # fmt: skip  (elements 2j and 2j+1 share a block: BLOCKSIZE is even)
        values = tl.reshape(tl.join(hi * scale, lo * scale), (2 * BLOCK,))
        elems = 2 * tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, 2 * BLOCK)
        tl.store(out_ptr + elems, values.to(out_ptr.dtype.element_ty), mask=elems < n_elements)
    else:
        mask = offs < n_elements
        q = tl.load(w_ptr + offs, mask=mask, other=0)
        row_absmax = tl.load(absmax_ptr + (offs // cols) * stride_sn, mask=mask, other=0.0)
        tl.store(out_ptr + offs, _int8_value(q, row_absmax).to(out_ptr.dtype.element_ty), mask=mask)


def prepare_dequantize(qt: QuantizedTensor, dtype: torch.dtype, out: torch.Tensor | None = None):  # type: ignore[no-untyped-def]
    """(out, Launch) of dequantizing a 4-bit or int8 `qt` into `dtype` (inputs checked by the caller); LLM.int8()
    outlier columns are not restored here (see `dequantize`)."""
    out = torch.empty(qt.shape, dtype=dtype, device=qt.device) if out is None else out
    op = weight_operand(qt)
    is_4bit = op.consts["IS_4BIT"]
    n = qt.numel
    units = triton.cdiv(n, 2) if is_4bit else n
    args = {k: v for k, v in op.args.items() if k not in ("stride_wn", "stride_sn")}
    cols = qt.shape[-1] if len(qt.shape) else 1
    args.update(out_ptr=out, n_elements=n, cols=max(cols, 1), stride_sn=op.args["stride_sn"],
                IS_4BIT=is_4bit, DOUBLE_QUANT=op.consts["DOUBLE_QUANT"], BLOCKSIZE=op.consts["BLOCKSIZE"],
                DQ_BLOCKSIZE=op.consts["DQ_BLOCKSIZE"], BLOCK=BLOCK)  # fmt: skip
    name = _config_name(qt, dtype)
    launch = Launch(_dequantize_kernel, (triton.cdiv(units, BLOCK),), args, 4, 1, {"enable_fp_fusion": False},
                    name=name, trips=1, elements=BLOCK * (2 if is_4bit else 1))  # fmt: skip
    return out, launch


def dequantize(qt: QuantizedTensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Dequantize on the device: qt nf4|fp4 (± double quant) | int8 (row-wise or per-tensor, outlier columns
    restored) | fp16|bf16 (a cast). Returns qt.shape in `dtype` (fp16|bf16|fp32; default qt.dtype).

    Raises:
        TypeError: qt is not a QuantizedTensor.
        ValueError: `dtype` is not fp16, bf16 or fp32.
    """
    # (1) check constraints
    if not isinstance(qt, QuantizedTensor):
        raise TypeError(f"qt: {type(qt).__name__}; expected a quant.QuantizedTensor")
    dtype = dtype or qt.dtype
    if dtype not in DTYPE_NAMES:
        raise ValueError(f"dtype: {dtype}; expected torch.float16, torch.bfloat16 or torch.float32")
    if qt.fmt in ("fp16", "bf16"):
        return qt.data.to(dtype)
    # (2) allocate output, (3) launch
    out, launch = prepare_dequantize(qt, dtype)
    if qt.numel:
        launch.run()
    if qt.fmt == "int8" and qt.outlier_cols is not None and qt.outlier_cols.numel():
        assert qt.outliers is not None
        out.view(-1, qt.shape[-1])[:, qt.outlier_cols] = qt.outliers.to(dtype)
    return out


def _config_name(qt: QuantizedTensor, dtype: torch.dtype) -> str:
    kind = "int8" if qt.fmt == "int8" else "4bit-dq" if qt.state2 is not None else "4bit"  # FP4 runs NF4's code
    return f"{kind}-{DTYPE_NAMES[dtype]}-B{BLOCK}-w4"


def audit_key(qt: QuantizedTensor, dtype: torch.dtype) -> str:
    """ "<kernel>:<config>" of the audit rows that cover `dequantize(qt, dtype)`."""
    return f"_dequantize_kernel:{_config_name(qt, dtype)}"


def audit_workloads() -> list[Workload]:
    """Dequantize each audit shape's W to bf16 in each precision: bytes = storage read + 2 bytes an element written."""
    from kernels.matmul.audit import meta_weight  # the audit's weights on meta tensors, built once

    loads = []
    for shape, n, k in audit_shapes():
        for precision in ("nf4dq", "nf4", "int8"):
            w = meta_weight(precision, n, k)
            _, launch = prepare_dequantize(w, torch.bfloat16)
            moved = w.nbytes + 2 * n * k
            loads.append(Workload("dequantize", shape, precision, 0, n, k, moved, 2 * n * k, (launch,)))
    return loads
