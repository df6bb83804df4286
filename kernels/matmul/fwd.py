"""Triton kernels of y = x W^T (+ bias) (+ s (x A^T) B^T), W in NF4/FP4 (± double quant), int8 or dense.

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
"""

from __future__ import annotations

import inspect

import torch
import triton
import triton.language as tl

from kernels.matmul.configs import CONFIGS, LORA_MAX_FUSED_R, Plan
from quant import QuantizedTensor

__all__ = ["audit_cases", "audit_key"]


@triton.jit
def _w_tile(
    # W storage: dense values, 4-bit packed codes or int8 codes; scales; codebook; double-quant state
    w_ptr, absmax_ptr, code_ptr, dq_data_ptr, dq_absmax_ptr, dq_code_ptr, dq_offset,
    # the tile's indices, its first column and bounds, W's row length and strides
    offs_n, offs_k, k0, N, K, stride_wn, stride_sn,
    IS_4BIT: tl.constexpr, IS_INT8: tl.constexpr, DOUBLE_QUANT: tl.constexpr,
    BLOCKSIZE: tl.constexpr, DQ_BLOCKSIZE: tl.constexpr, ROW_SCALE: tl.constexpr,
):  # fmt: skip
    """The (BLOCK_N, BLOCK_K) tile of W, dequantized in registers (fp32; dense W as stored)."""
    n = offs_n[:, None]
    k = offs_k[None, :]
    mask = (n < N) & (k < K)
    if IS_4BIT:
        i = n * K + k
        byte = tl.load(w_ptr + (i >> 1), mask=mask, other=0).to(tl.int32)
        nibble = tl.where((i & 1) == 0, byte >> 4, byte & 15)
        value = tl.load(code_ptr + nibble, mask=mask, other=0.0)
        if ROW_SCALE:  # the tile's K range lies in one quantization block per row: one scale a row
            block = (offs_n * K + k0) // BLOCKSIZE
            smask = offs_n < N
        else:  # a block boundary may cross the tile (K not a multiple of BLOCKSIZE, or BLOCK_K > BLOCKSIZE)
            block = i // BLOCKSIZE
            smask = mask
        if DOUBLE_QUANT:
            q = tl.load(dq_data_ptr + block, mask=smask, other=0).to(tl.int32)
            scale = tl.load(dq_code_ptr + q, mask=smask, other=0.0)
            scale = scale * tl.load(dq_absmax_ptr + block // DQ_BLOCKSIZE, mask=smask, other=0.0) + dq_offset
        else:
            scale = tl.load(absmax_ptr + block, mask=smask, other=0.0)
        if ROW_SCALE:
            scale = scale[:, None]
        w = value * scale
    elif IS_INT8:
        q = tl.load(w_ptr + n * stride_wn + k, mask=mask, other=0).to(tl.float32)
        row_scale = tl.load(absmax_ptr + offs_n * stride_sn, mask=offs_n < N, other=0.0)
        w = q * (row_scale * (1.0 / 127.0))[:, None]
    else:
        w = tl.load(w_ptr + n * stride_wn + k, mask=mask, other=0.0)
    return w


@triton.jit
def _gemv_kernel(
    # pointers: x (M, K); W storage (see _w_tile); out partial sums (SPLIT_K, M, N) fp32
    x_ptr, w_ptr, absmax_ptr, code_ptr, dq_data_ptr, dq_absmax_ptr, dq_code_ptr, out_ptr,
    # scalars
    dq_offset,
    # sizes
    M, N, K,
    # strides
    stride_xm, stride_xk, stride_wn, stride_sn, stride_os, stride_om,
    # meta
    IS_4BIT: tl.constexpr, IS_INT8: tl.constexpr, DOUBLE_QUANT: tl.constexpr,
    BLOCKSIZE: tl.constexpr, DQ_BLOCKSIZE: tl.constexpr, ROW_SCALE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, SPLIT_K: tl.constexpr,
):  # fmt: skip
    """out[s, m, n] = Σ_{k in split s} x[m, k] W[n, k]; grid (cdiv(N, BLOCK_N), SPLIT_K). All M <= BLOCK_M rows
    share each W tile, so W is read once; K tiles are dealt round-robin to the SPLIT_K programs of a column."""
    pid_n = tl.program_id(0)
    pid_s = tl.program_id(1)
    offs_m = tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(pid_s * BLOCK_K, K, BLOCK_K * SPLIT_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        x = tl.load(
            x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :] * stride_xk,
            mask=(offs_m[:, None] < M) & (offs_k[None, :] < K), other=0.0,
        )  # fmt: skip
        w = _w_tile(
            w_ptr, absmax_ptr, code_ptr, dq_data_ptr, dq_absmax_ptr, dq_code_ptr, dq_offset,
            offs_n, offs_k, k0, N, K, stride_wn, stride_sn,
            IS_4BIT, IS_INT8, DOUBLE_QUANT, BLOCKSIZE, DQ_BLOCKSIZE, ROW_SCALE,
        )  # fmt: skip
        acc = tl.dot(x, tl.trans(w.to(x.dtype)), acc)
    out_mask = (offs_m[:, None] < M) & (offs_n[None, :] < N)
    tl.store(out_ptr + pid_s * stride_os + offs_m[:, None] * stride_om + offs_n[None, :], acc, mask=out_mask)


@triton.jit
def _gemm_kernel(
    # pointers: x (M, K); W storage (see _w_tile); bias (N,); A (R, K), B (N, R); y (M, N); xa (M, R)
    x_ptr, w_ptr, absmax_ptr, code_ptr, dq_data_ptr, dq_absmax_ptr, dq_code_ptr, bias_ptr, a_ptr, b_ptr, y_ptr,
    xa_ptr,
    # scalars: double-quant offset, LoRA scale
    dq_offset, lora_scale,
    # sizes
    M, N, K, R,
    # strides
    stride_xm, stride_xk, stride_wn, stride_sn, stride_ar, stride_ak, stride_bn, stride_br, stride_ym, stride_xam,
    # meta
    IS_4BIT: tl.constexpr, IS_INT8: tl.constexpr, DOUBLE_QUANT: tl.constexpr,
    BLOCKSIZE: tl.constexpr, DQ_BLOCKSIZE: tl.constexpr, ROW_SCALE: tl.constexpr,
    HAS_BIAS: tl.constexpr, HAS_LORA: tl.constexpr, RETURN_XA: tl.constexpr, R_PAD: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    """y = x W^T + bias + s (x A^T) B^T for a (BLOCK_M, BLOCK_N) tile; grid (cdiv(M, BLOCK_M), cdiv(N, BLOCK_N)).

    x is read once per tile row: the same x tile feeds x W^T and, with HAS_LORA, xa = x A^T (R padded to R_PAD,
    masked). The epilogue adds s xa B^T with xa rounded to x's dtype (as an unfused x A^T would be)."""
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_r = tl.arange(0, R_PAD)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    xa = tl.zeros((BLOCK_M, R_PAD), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        x = tl.load(
            x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :] * stride_xk,
            mask=(offs_m[:, None] < M) & (offs_k[None, :] < K), other=0.0,
        )  # fmt: skip
        w = _w_tile(
            w_ptr, absmax_ptr, code_ptr, dq_data_ptr, dq_absmax_ptr, dq_code_ptr, dq_offset,
            offs_n, offs_k, k0, N, K, stride_wn, stride_sn,
            IS_4BIT, IS_INT8, DOUBLE_QUANT, BLOCKSIZE, DQ_BLOCKSIZE, ROW_SCALE,
        )  # fmt: skip
        acc = tl.dot(x, tl.trans(w.to(x.dtype)), acc)
        if HAS_LORA:
            a = tl.load(
                a_ptr + offs_r[:, None] * stride_ar + offs_k[None, :] * stride_ak,
                mask=(offs_r[:, None] < R) & (offs_k[None, :] < K), other=0.0,
            )  # fmt: skip
            xa = tl.dot(x, tl.trans(a.to(x.dtype)), xa)
    mask_m = offs_m < M
    if HAS_LORA:
        xa_low = xa.to(y_ptr.dtype.element_ty)
        b = tl.load(
            b_ptr + offs_n[:, None] * stride_bn + offs_r[None, :] * stride_br,
            mask=(offs_n[:, None] < N) & (offs_r[None, :] < R), other=0.0,
        )  # fmt: skip
        acc += lora_scale * tl.dot(xa_low, tl.trans(b.to(xa_low.dtype)))
        if RETURN_XA and pid_n == 0:
            xa_mask = mask_m[:, None] & (offs_r[None, :] < R)
            tl.store(xa_ptr + offs_m[:, None] * stride_xam + offs_r[None, :], xa_low, mask=xa_mask)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_n, mask=offs_n < N, other=0.0).to(tl.float32)[None, :]
    y_mask = mask_m[:, None] & (offs_n[None, :] < N)
    tl.store(y_ptr + offs_m[:, None] * stride_ym + offs_n[None, :], acc.to(y_ptr.dtype.element_ty), mask=y_mask)


# ---------------------------------------------------------------------------------------------------
# Static audit: every (kernel, config) the launcher may pick, per W format, for 16-bit and fp32 activations
# ---------------------------------------------------------------------------------------------------

_AUDIT_FORMATS = {  # name -> (W pointer type, format constexprs); bf16 dense stands for every dense dtype
    "dense": ("*bf16", {"IS_4BIT": False, "IS_INT8": False, "DOUBLE_QUANT": False}),
    "nf4": ("*u8", {"IS_4BIT": True, "IS_INT8": False, "DOUBLE_QUANT": False}),
    "nf4dq": ("*u8", {"IS_4BIT": True, "IS_INT8": False, "DOUBLE_QUANT": True}),
    "int8": ("*i8", {"IS_4BIT": False, "IS_INT8": True, "DOUBLE_QUANT": False}),
}


def _signature(kernel: object, types: dict[str, str]) -> dict[str, str]:
    """Argument order; named pointer/float types, i32 for sizes and strides, constexpr for the meta."""
    params = inspect.signature(kernel.fn).parameters  # type: ignore[attr-defined]
    return {
        name: "constexpr" if "constexpr" in str(p.annotation) else types.get(name, "i32") for name, p in params.items()
    }


def audit_cases() -> list[object]:
    """AuditCases for kernels.audit: gemv and gemm x each config x each W format x (bf16, fp32) activations;
    gemm with the full epilogue (bias, LoRA at R_PAD 16 and 64, return_xa), the superset of its code paths."""
    from kernels.audit import AuditCase

    cases: list[object] = []
    for act in ("bf16", "fp32"):
        for fmt, (w_type, flags) in _AUDIT_FORMATS.items():
            base = {"x_ptr": f"*{act}", "w_ptr": w_type, "absmax_ptr": "*fp32", "code_ptr": "*fp32",
                    "dq_data_ptr": "*u8", "dq_absmax_ptr": "*fp32", "dq_code_ptr": "*fp32",
                    "dq_offset": "fp32"}  # fmt: skip
            for row_scale in (True, False) if fmt == "nf4dq" else (flags["IS_4BIT"],):
                consts = {**flags, "BLOCKSIZE": 64, "DQ_BLOCKSIZE": 256, "ROW_SCALE": row_scale}
                tag = f"{act}-{fmt}{'' if row_scale or not flags['IS_4BIT'] else '-unaligned'}"
                for name, cfg in CONFIGS["gemv"].items():
                    if name == "wide" and not row_scale and flags["IS_4BIT"]:
                        continue  # plan() keeps an unaligned 4-bit W on the narrow tile
                    sig = _signature(_gemv_kernel, {**base, "out_ptr": "*fp32"})
                    meta = {"BLOCK_M": cfg.block_m, "BLOCK_N": cfg.block_n, "BLOCK_K": cfg.block_k, "SPLIT_K": 4}
                    case = AuditCase(_gemv_kernel, f"{tag}-{name}-{cfg.name}", sig, {**consts, **meta},
                                     cfg.num_warps, cfg.num_stages)  # fmt: skip
                    cases.append(case)
                for name, cfg in CONFIGS["gemm"].items():
                    r_pad = LORA_MAX_FUSED_R if name == "lora-wide" else 16
                    p = f"*{act}"
                    types = {**base, "bias_ptr": p, "a_ptr": p, "b_ptr": p, "y_ptr": p, "xa_ptr": p,
                             "lora_scale": "fp32"}  # fmt: skip
                    meta = {"BLOCK_M": cfg.block_m, "BLOCK_N": cfg.block_n, "BLOCK_K": cfg.block_k,
                            "HAS_BIAS": True, "HAS_LORA": True, "RETURN_XA": True, "R_PAD": r_pad}  # fmt: skip
                    case = AuditCase(_gemm_kernel, f"{tag}-{name}-lora{r_pad}-{cfg.name}",
                                     _signature(_gemm_kernel, types), {**consts, **meta}, cfg.num_warps,
                                     cfg.num_stages)  # fmt: skip
                    cases.append(case)
    return cases


def audit_key(x_dtype: torch.dtype, w: QuantizedTensor | torch.Tensor, p: Plan) -> str:
    """ "<kernel>:<config>" of the audit row that covers what `matmul` runs for `p = plan(...)`: the suites record it
    so the report joins a measurement to its registers, spills and shared memory."""
    act = "fp32" if x_dtype == torch.float32 else "bf16"  # the audit's bf16 stands for both 16-bit dtypes
    if not isinstance(w, QuantizedTensor):
        fmt = "dense"
    elif w.fmt == "int8":
        fmt = "int8"
    else:
        fmt = "nf4dq" if w.state2 is not None else "nf4"  # FP4 runs NF4's code with another codebook
        if w.state2 is not None and w.shape[1] % w.blocksize:
            fmt += "-unaligned"
    name = p.config.split("-")[0] if not p.config.startswith("lora-wide") else "lora-wide"
    if p.path == "gemv":
        return f"_gemv_kernel:{act}-{fmt}-{name}-{p.tiles.name}"
    r_pad = LORA_MAX_FUSED_R if name == "lora-wide" else 16
    return f"_gemm_kernel:{act}-{fmt}-{name}-lora{r_pad}-{p.tiles.name}"
