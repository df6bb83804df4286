"""The gemv kernel: y = x W^T (+ bias) for M <= 16 rows of x, memory-bound, W streamed once.

A program owns BLOCK_N rows of W and the whole of K: it reads its rows from start to end, reduces on chip, adds
the bias and stores y in x's dtype (no split-K partials, no torch launch after it). The plan picks BLOCK_N so that
there are >= 2 waves of programs on 132 SMs; the rows are read in steps of STEP bytes a row, each thread
loading 16 contiguous bytes (a 128-bit load).

4-bit W (rows aligned: K a multiple of the blocksize): a step is a (BLOCK_N, CHUNKS, CHUNK) tile of bytes, a chunk
lying inside one quantization block; both nibbles of a byte come from the one load and are decoded through the
register codebook (weight._decode_pairs); with x's even and odd elements xe, xo:
    y[m, n] = Σ_chunks scale(n, chunk) · Σ_j (code[hi_j] xe_j + code[lo_j] xo_j)
int8 W: y[m, n] = ((Σ_k q[n, k] x[m, k]) · absmax[n]) · (1/127) (weight._int8_rescale); dense W: Σ_k w x.
M == 1 multiplies and adds in fp32 (FMA); 1 < M <= 16 feeds tl.dot with a 16-row x tile (scaled W in x's dtype).
"""

from __future__ import annotations

import triton
import triton.language as tl

from kernels.weight import _block_scale, _codebook, _decode_pairs, _int8_rescale

__all__ = ["_gemv_kernel"]


@triton.jit
def _gemv_kernel(
    # pointers: x (M, K); W storage (kernels.weight); bias (N,); LoRA xa = x A^T (M, R), B (N, R); y (M, N)
    x_ptr, w_ptr, absmax_ptr, code_ptr, dq_data_ptr, dq_absmax_ptr, dq_code_ptr, bias_ptr, xa_ptr, b_ptr, y_ptr,
    # scalars: the double-quant offset, the LoRA scale
    dq_offset, lora_scale,
    # sizes
    M, N, K, R,
    # strides (elements; stride_wn in storage elements: bytes for 4-bit)
    stride_xm, stride_wn, stride_sn, stride_xam, stride_bn, stride_ym,
    # W format (kernels.weight)
    IS_4BIT: tl.constexpr, IS_INT8: tl.constexpr, DOUBLE_QUANT: tl.constexpr,
    BLOCKSIZE: tl.constexpr, DQ_BLOCKSIZE: tl.constexpr,
    # meta: bias; LoRA epilogue and its padded rank; rows of x (1: FMA, 16: tl.dot); W rows a program; storage
    # elements a row per step (4-bit: bytes); 4-bit bytes a scale covers
    HAS_BIAS: tl.constexpr, HAS_LORA: tl.constexpr, R_PAD: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, STEP: tl.constexpr, CHUNK: tl.constexpr,
    # N a multiple of BLOCK_N and a row's storage a multiple of STEP: no bounds masks on W in the loop
    EVEN: tl.constexpr,
):  # fmt: skip
    """y[:M, n0:n0 + BLOCK_N] for program n0 / BLOCK_N; grid (cdiv(N, BLOCK_N),)."""
    pid = tl.program_id(0)
    offs_n = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = offs_n < N
    offs_m = tl.arange(0, BLOCK_M)
    m_mask = offs_m < M
    rows = offs_n.to(tl.int64) * stride_wn  # first storage element of each row
    code = _codebook(code_ptr, IS_4BIT)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc1 = tl.zeros((BLOCK_N,), dtype=tl.float32)  # BLOCK_M == 1: the row sums, in the layout the reductions give
    x_rows = x_ptr + offs_m.to(tl.int64)[:, None] * stride_xm  # (BLOCK_M, 1)
    if IS_4BIT:
        CHUNKS: tl.constexpr = STEP // CHUNK
        offs_g = tl.arange(0, CHUNKS)
        offs_c = tl.arange(0, CHUNK)
        offs_t = tl.arange(0, 2)
        acc3 = tl.zeros((BLOCK_N, CHUNKS, CHUNK), dtype=tl.float32)
        for b0 in range(0, stride_wn, STEP):  # an aligned row holds stride_wn = K / 2 bytes
            cols = b0 + offs_g[:, None] * CHUNK + offs_c[None, :]  # (CHUNKS, CHUNK) byte columns
            c_mask = cols < stride_wn
            w_ptrs = w_ptr + rows[:, None, None] + cols[None, :, :]
            if EVEN:
                byte = tl.load(w_ptrs).to(tl.int32)
            else:
                byte = tl.load(w_ptrs, mask=n_mask[:, None, None] & c_mask[None, :, :], other=0).to(tl.int32)
            hi, lo = _decode_pairs(byte, code)  # (BLOCK_N, CHUNKS, CHUNK) fp32 code values
            block = (offs_n.to(tl.int64)[:, None] * K + 2 * (b0 + offs_g[None, :] * CHUNK)) // BLOCKSIZE
            s_mask = n_mask[:, None] & (b0 + offs_g * CHUNK < stride_wn)[None, :]
            scale = _block_scale(  # (BLOCK_N, CHUNKS)
                block,
                s_mask,
                absmax_ptr,
                dq_data_ptr,
                dq_absmax_ptr,
                dq_code_ptr,
                dq_offset,
                DOUBLE_QUANT,
                DQ_BLOCKSIZE,
            )
            k_idx = 2 * cols[:, :, None] + offs_t[None, None, :]  # (CHUNKS, CHUNK, 2) elements
            if BLOCK_M == 1:
                xp = tl.load(x_ptr + k_idx, mask=c_mask[:, :, None], other=0.0).to(tl.float32)
                xe, xo = tl.split(xp)  # (CHUNKS, CHUNK) even and odd elements
                # elementwise partial sums, reduced once after the loop (no shuffles in it)
                acc3 += (hi * xe[None, :, :] + lo * xo[None, :, :]) * scale[:, :, None]
            else:
                xp = tl.load(x_rows[:, :, None, None] + k_idx[None, :, :, :],
                             mask=m_mask[:, None, None, None] & c_mask[None, :, :, None], other=0.0)  # fmt: skip
                xe, xo = tl.split(xp)  # (BLOCK_M, CHUNKS, CHUNK)
                we = tl.reshape(hi * scale[:, :, None], (BLOCK_N, STEP)).to(xp.dtype)
                wo = tl.reshape(lo * scale[:, :, None], (BLOCK_N, STEP)).to(xp.dtype)
                acc = tl.dot(tl.reshape(xe, (BLOCK_M, STEP)), tl.trans(we), acc)
                acc = tl.dot(tl.reshape(xo, (BLOCK_M, STEP)), tl.trans(wo), acc)
        if BLOCK_M == 1:
            acc1 = tl.sum(tl.sum(acc3, axis=2), axis=1)
    else:
        offs_k = tl.arange(0, STEP)
        for k0 in range(0, K, STEP):
            k = k0 + offs_k
            k_mask = k < K
            if EVEN:
                w = tl.load(w_ptr + rows[:, None] + k[None, :])
            else:
                w = tl.load(w_ptr + rows[:, None] + k[None, :], mask=n_mask[:, None] & k_mask[None, :], other=0)
            if BLOCK_M == 1:
                xv = tl.load(x_ptr + k, mask=k_mask, other=0.0).to(tl.float32)
                acc1 += tl.sum(w.to(tl.float32) * xv[None, :], axis=1)
            else:
                xv = tl.load(x_rows + k[None, :], mask=m_mask[:, None] & k_mask[None, :], other=0.0)
                acc = tl.dot(xv, tl.trans(w.to(xv.dtype)), acc)
    if BLOCK_M == 1:
        acc += acc1[None, :]
    if IS_INT8:
        row_absmax = tl.load(absmax_ptr + offs_n * stride_sn, mask=n_mask, other=0.0)
        acc = _int8_rescale(acc, row_absmax[None, :])
    if HAS_LORA:  # + s xa B^T, xa computed once beforehand (in x's dtype, as an unfused x A^T)
        offs_r = tl.arange(0, R_PAD)
        xa = tl.load(xa_ptr + offs_m.to(tl.int64)[:, None] * stride_xam + offs_r[None, :],
                     mask=m_mask[:, None] & (offs_r < R)[None, :], other=0.0)  # fmt: skip
        b = tl.load(b_ptr + offs_n.to(tl.int64)[:, None] * stride_bn + offs_r[None, :],
                    mask=n_mask[:, None] & (offs_r < R)[None, :], other=0.0)  # fmt: skip
        if BLOCK_M == 1:
            acc += lora_scale * tl.sum(xa.to(tl.float32) * b.to(tl.float32), axis=1)[None, :]
        else:
            acc += lora_scale * tl.dot(xa, tl.trans(b.to(xa.dtype)))
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_n, mask=n_mask, other=0.0).to(tl.float32)[None, :]
    y_mask = m_mask[:, None] & n_mask[None, :]
    tl.store(y_ptr + offs_m.to(tl.int64)[:, None] * stride_ym + offs_n[None, :], acc.to(y_ptr.dtype.element_ty),
             mask=y_mask)  # fmt: skip
