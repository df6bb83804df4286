"""int8 absmax quantization: row-wise (vector-wise, LLM.int8()) and per-tensor, with outlier decomposition.

LLM.int8() (Dettmers et al. 2022): each row gets its own scale, s_r = max_j |x_rj| / 127, and
q_rj = round(x_rj * 127 / max_j |x_rj|); back, x_rj ~ (q_rj * max_j |x_rj|) * (1/127). With a threshold
τ > 0 the mixed-precision decomposition keeps every column that holds a value with |x| >= τ in fp16; those
columns are zeroed in the int8 codes, and the row scales are taken with the outlier values themselves set to
zero (as bitsandbytes' `int8_vectorwise_quant` does). Inputs are trusted: `quant.quantize` checks them.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

__all__ = [
    "dequantize_rowwise",
    "int8_matmul_ref",
    "outlier_columns",
    "quantize_rowwise",
    "quantize_tensorwise",
]


def outlier_columns(x: torch.Tensor, threshold: float) -> torch.Tensor:
    """Indices (int64, sorted) of the columns of a 2-D x holding any |x| >= threshold; none when threshold <= 0."""
    if threshold <= 0 or x.numel() == 0:
        return torch.empty(0, dtype=torch.int64, device=x.device)
    return torch.nonzero((x.abs() >= threshold).any(dim=0)).view(-1)


def quantize_rowwise(x: torch.Tensor, threshold: float = 0.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Row-wise int8 quantization of a 2-D tensor (rows, cols), fp16|bf16|fp32.

    Returns (codes (rows, cols) int8 with outlier columns zeroed, row absmax (rows,) fp32,
    outlier column indices (k,) int64).
    """
    cols = outlier_columns(x, threshold)
    inliers = x
    if cols.numel():
        inliers = x.masked_fill(x.abs() >= threshold, 0)
    codes, absmax = _rowwise(inliers)
    if cols.numel() and x.shape[0] > 1:
        codes[:, cols] = 0
    return codes, absmax, cols


_CPU_CHUNK = 1 << 18  # elements of x a step on the CPU: the fp32 temporaries of a chunk of rows stay in L2


def _row_chunks(x: torch.Tensor) -> Iterator[slice]:
    """Slices of whole rows of a 2-D x: on the CPU about _CPU_CHUNK elements each, elsewhere all rows at once."""
    rows, cols = x.shape
    step = max(1, _CPU_CHUNK // max(cols, 1)) if x.is_cpu else max(rows, 1)
    return (slice(r, r + step) for r in range(0, rows, step))


def _rowwise(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes int8, row absmax fp32) of a 2-D x, a chunk of rows at a time (`_row_chunks`)."""
    codes = torch.empty(x.shape, dtype=torch.int8, device=x.device)
    absmax = torch.zeros(x.shape[0], device=x.device)
    if x.shape[1] == 0:
        return codes, absmax
    for rows in _row_chunks(x):
        part = x[rows]
        absmax[rows] = part.abs().amax(dim=1).float()
        # the product is fp32 (x is promoted), as in bitsandbytes; a zero row gives 0 * inf = nan -> code 0
        codes[rows] = (part * (127.0 / absmax[rows].unsqueeze(-1))).round_().nan_to_num_(0.0)
    return codes, absmax


def quantize_tensorwise(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-tensor int8: one scale for the whole tensor. Returns (codes, absmax () fp32)."""
    absmax = x.abs().amax().float() if x.numel() else torch.zeros((), device=x.device)
    codes = torch.round(x * (127.0 / absmax)).nan_to_num_(0.0).to(torch.int8)
    return codes.contiguous(), absmax  # elementwise ops keep a permuted x's strides; kernels read codes flat


INV_127 = 7.874015718698502e-3  # 1 / 127: bitsandbytes' int8_vectorwise_dequant multiplies by it (as fp32)


def dequantize_rowwise(codes: torch.Tensor, absmax: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(codes * absmax) * (1/127) in fp32, each product rounded, then rounded once to `dtype`: bitsandbytes'
    `int8_vectorwise_dequant` exactly, and only multiplies, so every device (and the Triton kernel) rounds alike.
    codes: 2-D; `absmax` is (rows,) for row-wise or () for per-tensor. A chunk of rows at a time (`_row_chunks`)."""
    scale = absmax.float()
    out = torch.empty(codes.shape, dtype=dtype, device=codes.device)
    for rows in _row_chunks(codes):
        part_scale = scale[rows].unsqueeze(-1) if scale.dim() else scale
        out[rows] = codes[rows].float().mul_(part_scale).mul_(INV_127)
    return out


def int8_matmul_ref(
    x: torch.Tensor, w_codes: torch.Tensor, w_absmax: torch.Tensor, threshold: float = 6.0
) -> torch.Tensor:
    """LLM.int8() matmul reference: y = x W^T with W row-wise int8 (N, K), x (M, K) fp16|bf16|fp32.

    x's outlier columns (|x| >= threshold) multiply the dequantized W columns in x's dtype; the rest is
    an exact int8 x int8 -> int32 product, rescaled by s_x[m] * s_w[n] / 127^2. Output dtype = x's.
    """
    x_codes, x_absmax, cols = quantize_rowwise(x, threshold)
    acc = x_codes.to(torch.int32) @ w_codes.to(torch.int32).T  # exact; small sizes only (a reference)
    y = acc.float() * (x_absmax.unsqueeze(1) * w_absmax.float().unsqueeze(0) / (127.0 * 127.0))
    if cols.numel():
        w_out = dequantize_rowwise(w_codes[:, cols], w_absmax)
        y += x[:, cols].float() @ w_out.T
    return y.to(x.dtype)
