"""Fused dequant-matmul y = x W^T (+ bias) (+ s (x A^T) B^T) with W stored in NF4/FP4 (± double quant), int8 or dense.

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
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from kernels.device import INTERPRET
from quant import QuantizedTensor

__all__ = [
    "CONFIGS",
    "LORA_MAX_FUSED_R",
    "LoRAEpilogue",
    "MatmulConfig",
    "Plan",
    "audit_cases",
    "lora_matmul_ref",
    "matmul",
    "plan",
]

_INDEX_LIMIT = 2**31
_FLOAT = (torch.float32, torch.float16, torch.bfloat16)
_TL = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
GEMV_MAX_M = 16
LORA_MAX_FUSED_R = 64  # xa (BLOCK_M, R_PAD) fp32 lives in registers beside the output tile
_TARGET_PROGRAMS = 264  # about two waves on an H100 (132 SMs): split K until N tiles x splits reach this


@dataclass(frozen=True)
class LoRAEpilogue:
    """The LoRA term of the fused epilogue: a (R, K), b (N, R) in x's dtype, scale s."""

    a: torch.Tensor
    b: torch.Tensor
    scale: float


@dataclass(frozen=True)
class MatmulConfig:
    """Tile sizes and launch settings of one path."""

    block_m: int
    block_n: int
    block_k: int
    num_warps: int
    num_stages: int

    @property
    def name(self) -> str:
        c = self
        return f"BM{c.block_m}-BN{c.block_n}-BK{c.block_k}-w{c.num_warps}-s{c.num_stages}"


# The named configs per path (all audited). Under the interpreter the launcher uses the first of each path.
# gemm: "small" for modest M or N, "large" for big M and N, "lora-wide" when the LoRA rank pads past 16 (the
# (BLOCK_M, R_PAD) xa accumulator needs the registers of 8 warps and a narrower N tile). Every config here compiles
# for sm_80 and sm_90 without spills (python -m kernels.audit).
CONFIGS: dict[str, dict[str, MatmulConfig]] = {
    "gemv": {"narrow": MatmulConfig(16, 64, 64, 4, 3), "wide": MatmulConfig(16, 128, 64, 8, 3)},
    "gemm": {
        "small": MatmulConfig(64, 64, 32, 4, 3),
        "large": MatmulConfig(128, 64, 32, 8, 2),
        "lora-wide": MatmulConfig(64, 32, 32, 8, 2),
    },
}


@dataclass(frozen=True)
class Plan:
    """What `matmul` runs for a shape: the path, the config name (with the split-K factor) and the config."""

    path: str
    config: str
    tiles: MatmulConfig
    split_k: int = 1


def plan(m: int, n: int, k: int, w: QuantizedTensor | torch.Tensor, rank: int = 0) -> Plan:
    """The path and config `matmul` uses for x (M, K) @ W^T (N, K), with a LoRA epilogue of `rank` (0: none).

    A fixed rule, no timing; under the interpreter the first config of each path, so CPU tests stay fast.
    """
    # a 4-bit W with K not a multiple of its blocksize gathers a scale per element: the narrow gemv tile only
    unaligned = isinstance(w, QuantizedTensor) and w.fmt in ("nf4", "fp4") and k % w.blocksize != 0
    if m <= GEMV_MAX_M and not rank:
        name = "narrow" if INTERPRET or n <= 4096 or unaligned else "wide"
        cfg = CONFIGS["gemv"][name]
        n_tiles, k_tiles = triton.cdiv(n, cfg.block_n), triton.cdiv(k, cfg.block_k)
        split = 1
        while n_tiles * split * 2 <= _TARGET_PROGRAMS and split * 2 <= k_tiles and split < 16:
            split *= 2
        return Plan("gemv", f"{name}-{cfg.name}-split{split}", cfg, split)
    big = not INTERPRET and m > 128 and n > 1024
    name = "lora-wide" if rank > 16 else "large" if big else "small"
    cfg = CONFIGS["gemm"][name]
    return Plan("gemm", f"{name}-{cfg.name}", cfg)


# ---------------------------------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------------------------------


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
# References and launcher
# ---------------------------------------------------------------------------------------------------


def matmul_ref(
    x: torch.Tensor, w: QuantizedTensor | torch.Tensor, bias: torch.Tensor | None = None, upcast: bool = False
) -> torch.Tensor:
    """F.linear(x, W, bias) with W dequantized by quant/ (the spec). x (..., K); w (N, K); returns (..., N) in
    x's dtype, or fp32 with upcast (the ground truth)."""
    dtype = torch.float32 if upcast else x.dtype
    dense = w.dequantize(dtype) if isinstance(w, QuantizedTensor) else w.to(dtype)
    return F.linear(x.to(dtype), dense, None if bias is None else bias.to(dtype))


def lora_matmul_ref(
    x: torch.Tensor,
    w: QuantizedTensor | torch.Tensor,
    lora: LoRAEpilogue,
    bias: torch.Tensor | None = None,
    upcast: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(y, xa): xa = x A^T (..., R), y = x W^T + bias + s xa B^T (..., N), in x's dtype (fp32 with upcast)."""
    dtype = torch.float32 if upcast else x.dtype
    xa = F.linear(x.to(dtype), lora.a.to(dtype))
    return matmul_ref(x, w, bias, upcast) + lora.scale * F.linear(xa, lora.b.to(dtype)), xa


def _storage(w: QuantizedTensor | torch.Tensor, device: torch.device) -> tuple[list, dict, float, int, int]:
    """Kernel arguments of W: (pointers, format constexprs, dq offset, stride_wn, stride_sn)."""
    f32 = torch.empty(1, dtype=torch.float32, device=device)
    u8 = torch.empty(1, dtype=torch.uint8, device=device)
    flags = {"IS_4BIT": False, "IS_INT8": False, "DOUBLE_QUANT": False, "BLOCKSIZE": 64, "DQ_BLOCKSIZE": 256}
    if not isinstance(w, QuantizedTensor):
        return [w, f32, f32, u8, f32, f32], flags, 0.0, w.stride(0), 0
    if w.fmt == "int8":
        assert w.absmax is not None
        flags["IS_INT8"] = True
        return [w.data, w.absmax, f32, u8, f32, f32], flags, 0.0, w.data.stride(0), 1 if w.absmax.dim() else 0
    dq = w.state2
    flags.update(IS_4BIT=True, DOUBLE_QUANT=dq is not None, BLOCKSIZE=w.blocksize)
    if dq is None:
        assert w.absmax is not None and w.code is not None
        return [w.data, w.absmax, w.code, u8, f32, f32], flags, 0.0, 0, 0
    flags["DQ_BLOCKSIZE"] = dq.blocksize
    return [w.data, f32, w.code, dq.data, dq.absmax, dq.code], flags, dq.offset, 0, 0


def _check(x: torch.Tensor, w: QuantizedTensor | torch.Tensor, bias: torch.Tensor | None, lora: LoRAEpilogue | None):
    if not isinstance(x, torch.Tensor) or x.dim() < 1:
        raise ValueError(f"x: {type(x).__name__}; expected a tensor (..., K)")
    if x.dtype not in _FLOAT:
        raise ValueError(f"x: dtype {x.dtype}; expected torch.float16, torch.bfloat16 or torch.float32")
    k = x.shape[-1]
    if isinstance(w, QuantizedTensor):
        if w.fmt not in ("nf4", "fp4", "int8"):
            raise ValueError(f"w: QuantizedTensor format {w.fmt!r}; expected 'nf4', 'fp4' or 'int8' (or pass a tensor)")
        if w.fmt == "int8" and w.data.stride(-1) != 1:
            raise ValueError(f"w.data: strides {w.data.stride()}; expected a unit stride along K")
    elif not isinstance(w, torch.Tensor) or w.dtype not in _FLOAT:
        raise ValueError(
            f"w: {getattr(w, 'dtype', type(w).__name__)}; expected an fp16|bf16|fp32 tensor or a QuantizedTensor"
        )
    elif w.stride(-1) != 1:
        raise ValueError(f"w: strides {w.stride()}; expected a unit stride along K")
    if len(w.shape) != 2 or w.shape[1] != k:
        raise ValueError(f"w: shape {tuple(w.shape)}; expected (N, {k}) to match x {tuple(x.shape)}")
    n = w.shape[0]
    if n * k >= _INDEX_LIMIT:
        raise ValueError(f"w: shape {tuple(w.shape)} has >= 2^31 elements; the kernels index in int32")
    if w.device != x.device:
        raise ValueError(f"w: device {w.device}; expected x's device {x.device}")
    if bias is not None and (tuple(bias.shape) != (n,) or bias.dtype not in _FLOAT):
        raise ValueError(f"bias: {bias.dtype} {tuple(bias.shape)}; expected a float tensor ({n},)")
    if lora is not None:
        a, b = lora.a, lora.b
        if a.dim() != 2 or b.dim() != 2 or a.shape[1] != k or b.shape[0] != n or a.shape[0] != b.shape[1]:
            raise ValueError(f"lora: a {tuple(a.shape)}, b {tuple(b.shape)}; expected (R, {k}) and ({n}, R)")
        if a.dtype != x.dtype or b.dtype != x.dtype:
            raise ValueError(f"lora: a {a.dtype}, b {b.dtype}; expected x's dtype {x.dtype}")
        if a.shape[0] < 1:
            raise ValueError(f"lora: rank {a.shape[0]}; expected R >= 1")


def matmul(
    x: torch.Tensor,
    w: QuantizedTensor | torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    lora: LoRAEpilogue | None = None,
    return_xa: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """y = x W^T (+ bias) (+ lora.scale (x A^T) B^T), W dequantized on chip; `plan()` names the path and config.

    x: (..., K) fp16|bf16|fp32, any strides; w: (N, K) QuantizedTensor nf4|fp4 (± double quant) | int8 (row-wise
    or per-tensor; LLM.int8() outlier columns are added back in torch), or a dense fp16|bf16|fp32 tensor;
    bias: (N,) or None; lora: LoRAEpilogue(a (R, K), b (N, R) in x's dtype, scale); R <= LORA_MAX_FUSED_R runs
    in the fused epilogue, a larger rank as three launches (x A^T, x W^T + bias, then + s xa B^T).
    Returns y (..., N) in x's dtype; with lora and return_xa, (y, xa) with xa = x A^T (..., R) in x's dtype.

    Raises:
        ValueError: a dtype, shape, device or format that does not match (the message names the argument).
    """
    # (1) check constraints
    _check(x, w, bias, lora)
    if return_xa and lora is None:
        raise ValueError("return_xa: True needs lora (xa = x A^T)")
    lead, k, n = x.shape[:-1], x.shape[-1], w.shape[0]
    if lora is not None and lora.a.shape[0] > LORA_MAX_FUSED_R:
        xa = matmul(x, lora.a)
        y = matmul(x, w, bias=bias)
        y = y.add_(matmul(xa, lora.b), alpha=lora.scale)  # type: ignore[arg-type]
        return (y, xa) if return_xa else y  # type: ignore[return-value]
    x2 = x.reshape(-1, k)
    m = x2.shape[0]
    p = plan(m, n, k, w, rank=lora.a.shape[0] if lora is not None else 0)
    cfg = p.tiles
    # (2) allocate output
    y = torch.empty((m, n), dtype=x.dtype, device=x.device)
    r = lora.a.shape[0] if lora is not None else 0
    xa = torch.empty((m, r), dtype=x.dtype, device=x.device) if return_xa else y
    if m == 0 or n == 0:
        return (y.view(*lead, n), xa.view(*lead, r)) if return_xa else y.view(*lead, n)
    # (3) launch
    ptrs, flags, dq_offset, stride_wn, stride_sn = _storage(w, x.device)
    flags["ROW_SCALE"] = flags["IS_4BIT"] and k % flags["BLOCKSIZE"] == 0 and cfg.block_k <= flags["BLOCKSIZE"]
    if p.path == "gemv":
        part = torch.empty((p.split_k, m, n), dtype=torch.float32, device=x.device)
        _gemv_kernel[(triton.cdiv(n, cfg.block_n), p.split_k)](
            x2, *ptrs, part, dq_offset, m, n, k,
            x2.stride(0), x2.stride(1), stride_wn, stride_sn, part.stride(0), part.stride(1),
            **flags, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, SPLIT_K=p.split_k,
            num_warps=cfg.num_warps, num_stages=cfg.num_stages,
        )  # fmt: skip
        acc = part.sum(0) if p.split_k > 1 else part[0]
        if bias is not None:
            acc += bias.float()
        y.copy_(acc)
    else:
        a = lora.a if lora is not None else y
        b = lora.b if lora is not None else y
        grid = (triton.cdiv(m, cfg.block_m), triton.cdiv(n, cfg.block_n))
        _gemm_kernel[grid](
            x2, *ptrs, bias if bias is not None else y, a, b, y, xa,
            dq_offset, float(lora.scale) if lora is not None else 0.0, m, n, k, max(r, 1),
            x2.stride(0), x2.stride(1), stride_wn, stride_sn, a.stride(0), a.stride(-1), b.stride(0), b.stride(-1),
            y.stride(0), xa.stride(0),
            **flags, HAS_BIAS=bias is not None, HAS_LORA=lora is not None, RETURN_XA=return_xa,
            R_PAD=max(16, triton.next_power_of_2(r)), BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k,
            num_warps=cfg.num_warps, num_stages=cfg.num_stages,
        )  # fmt: skip
    if isinstance(w, QuantizedTensor) and w.outlier_cols is not None and w.outlier_cols.numel():
        assert w.outliers is not None and w.absmax is not None
        cols = w.outlier_cols  # LLM.int8(): those columns of W are kept in fp16 beside the (zeroed) codes
        codes = w.data[:, cols].float() * (w.absmax.float().view(-1, 1) / 127.0)
        y += (x2[:, cols].float() @ (w.outliers.float() - codes).T).to(y.dtype)
    y = y.view(*lead, n)
    return (y, xa.view(*lead, r)) if return_xa else y


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
