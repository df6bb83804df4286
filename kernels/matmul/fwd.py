"""The gemm kernel: y = x W^T (+ bias) (+ s xa B^T) on tensor cores, W decoded in registers a tile at a time.

(BLOCK_M, BLOCK_N) output tiles; each K step decodes a (BLOCK_N, BLOCK_K) tile of W (kernels.weight._w_tile: any
K, a 4-bit row may start mid-byte) and feeds tl.dot in x's dtype (fp32 operands run as tf32 on a GPU); the K loop
is software-pipelined (num_stages). With LoRA the epilogue adds s xa B^T, xa = x A^T computed once beforehand by
its own launch (not once per N tile). Row offsets of x and y are 64-bit: M K and M N may pass 2^31.
"""

from __future__ import annotations

import triton
import triton.language as tl

from kernels.weight import _codebook, _w_tile

__all__ = ["_gemm_kernel"]


@triton.jit
def _gemm_kernel(
    # pointers: x (M, K); W storage (kernels.weight); bias (N,); xa = x A^T (M, R), B (N, R); y (M, N)
    x_ptr, w_ptr, absmax_ptr, code_ptr, dq_data_ptr, dq_absmax_ptr, dq_code_ptr, bias_ptr, xa_ptr, b_ptr, y_ptr,
    # scalars: double-quant offset, LoRA scale
    dq_offset, lora_scale,
    # sizes
    M, N, K, R,
    # strides
    stride_xm, stride_xk, stride_wn, stride_sn, stride_xam, stride_bn, stride_ym,
    # W format (kernels.weight)
    IS_4BIT: tl.constexpr, IS_INT8: tl.constexpr, DOUBLE_QUANT: tl.constexpr,
    BLOCKSIZE: tl.constexpr, DQ_BLOCKSIZE: tl.constexpr, ROW_SCALE: tl.constexpr,
    # meta
    HAS_BIAS: tl.constexpr, HAS_LORA: tl.constexpr, R_PAD: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    """y tile (BLOCK_M, BLOCK_N); grid (cdiv(M, BLOCK_M), cdiv(N, BLOCK_N))."""
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_mask = offs_m < M
    x_rows = x_ptr + offs_m.to(tl.int64)[:, None] * stride_xm
    code = _codebook(code_ptr, IS_4BIT)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        x = tl.load(x_rows + offs_k[None, :] * stride_xk, mask=m_mask[:, None] & (offs_k[None, :] < K), other=0.0)
        w = _w_tile(
            w_ptr, absmax_ptr, code, dq_data_ptr, dq_absmax_ptr, dq_code_ptr, dq_offset,
            offs_n, offs_k, k0, N, K, stride_wn, stride_sn,
            IS_4BIT, IS_INT8, DOUBLE_QUANT, BLOCKSIZE, DQ_BLOCKSIZE, ROW_SCALE,
        )  # fmt: skip
        acc = tl.dot(x, tl.trans(w.to(x.dtype)), acc)
    if HAS_LORA:  # + s xa B^T (xa in x's dtype, as an unfused x A^T)
        offs_r = tl.arange(0, R_PAD)
        xa = tl.load(xa_ptr + offs_m.to(tl.int64)[:, None] * stride_xam + offs_r[None, :],
                     mask=m_mask[:, None] & (offs_r < R)[None, :], other=0.0)  # fmt: skip
        b = tl.load(b_ptr + offs_n.to(tl.int64)[:, None] * stride_bn + offs_r[None, :],
                    mask=(offs_n[:, None] < N) & (offs_r < R)[None, :], other=0.0)  # fmt: skip
        acc += lora_scale * tl.dot(xa, tl.trans(b.to(xa.dtype)))
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_n, mask=offs_n < N, other=0.0).to(tl.float32)[None, :]
    y_mask = m_mask[:, None] & (offs_n[None, :] < N)
    y_rows = y_ptr + offs_m.to(tl.int64)[:, None] * stride_ym
    tl.store(y_rows + offs_n[None, :], acc.to(y_ptr.dtype.element_ty), mask=y_mask)
