"""Fused LoRA/QLoRA backward: Triton kernels and their launchers.

With y = x W^T + s (d(x) A^T) B^T (+ bias), d = the dropout map (identity when p = 0) and g = dy:

    dyb = g B                           (M, R)  fp32, the small shared intermediate
    dx  = g W + s (m ⊙ dyb A)           (M, K)  W dequantized tile by tile on chip; m = keep mask / (1 - p)
    dA  = s dyb^T d(x)                  (R, K)  d(x) = x ⊙ m rebuilt on chip from x and the mask
    dB  = s g^T xa                      (N, R)  xa = d(x) A^T, saved by the forward

Four launches: `lora_dyb` (reduces over N), `lora_dx` (reduces over N, the big one), `lora_da` and
`lora_db` (reduce over M). The rank is tiled by BLOCK_R (16, 32 or 64; R is masked up to it), so one
compiled kernel serves every rank and a rank-256 epilogue never holds a 256-wide tile in registers.
Accumulation is fp32 everywhere; tl.dot operands are in the activation dtype (fp32 operands run as tf32
on a GPU).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import torch
import triton
import triton.language as tl

from kernels.weight import _codebook, _w_tile, outlier_fixup_dx, weight_operand  # W, defined once
from quant import QuantizedTensor

__all__ = ["BwdConfig", "lora_da", "lora_db", "lora_dx", "lora_dyb", "pick_config"]

_INDEX_LIMIT = 2**31  # element offsets are int32 in the kernels (fewer registers than int64 in dx's dequant)
_TORCH_TO_TL = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


@dataclass(frozen=True)
class BwdConfig:
    """Tile sizes of one backward launch: rows (BLOCK_M), the reduced or output dimension (BLOCK_N,
    BLOCK_K) and the rank tile (BLOCK_R)."""

    block_m: int
    block_n: int
    block_k: int
    block_r: int
    num_warps: int = 8
    num_stages: int = 3
    num_warps_dyb: int = 8  # the dy B launch has its own warp count (see CONFIGS)

    @property
    def name(self) -> str:
        c = self
        return f"BM{c.block_m}-BN{c.block_n}-BK{c.block_k}-BR{c.block_r}-w{c.num_warps}-s{c.num_stages}"


# The configs the launchers may pick (all of them are audited): decode-sized M, then training-sized M, by
# rank tile. 16-bit activations run 3 pipeline stages; fp32 runs 2 and a narrower N tile at BLOCK_M = 64
# (its 3-stage or 64-wide tiles spill on sm_80 or overflow its shared memory beside a 4-bit W's gathers).
# 8 warps, except fp32 at BLOCK_M = 16 (4 warps; ptxas spills a few bytes in dx there with 8 and in dy B with 4,
# so dy B keeps 8): each choice is the one the audit passes on sm_80 and sm_90.
_TILES = {3: ((16, 64, 64), (64, 64, 64), (128, 32, 64)), 2: ((16, 64, 64), (64, 32, 64), (128, 32, 64))}
CONFIGS: tuple[BwdConfig, ...] = tuple(
    BwdConfig(bm, bn, bk, br, num_warps=4 if (bm, stages) == (16, 2) else 8, num_stages=stages)
    for stages, tiles in _TILES.items()
    for bm, bn, bk in tiles
    for br in (16, 32, 64)
)


def pick_config(m: int, rank: int, dtype: torch.dtype) -> BwdConfig:
    """A config from CONFIGS by problem size and activation dtype (a fixed rule, no timing: it also runs
    under the interpreter)."""
    block_m = 16 if m <= 16 else 64 if m <= 1024 else 128
    block_r = 16 if rank <= 16 else 32 if rank <= 32 else 64
    stages = 2 if dtype == torch.float32 else 3
    return next(c for c in CONFIGS if (c.block_m, c.block_r, c.num_stages) == (block_m, block_r, stages))


# ---------------------------------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------------------------------


@triton.jit
def _lora_dyb_kernel(
    # pointers: dy (M, N), B (N, R), out dyb (M, R) fp32
    dy_ptr, b_ptr, dyb_ptr,
    # sizes
    M, N, R,
    # strides
    stride_dym, stride_bn, stride_om,
    # meta
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr,
):  # fmt: skip
    """dyb[m, r] = Σ_n dy[m, n] B[n, r]; grid (cdiv(M, BLOCK_M), cdiv(R, BLOCK_R))."""
    pid_m = tl.program_id(0)
    pid_r = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_r = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)
    acc = tl.zeros((BLOCK_M, BLOCK_R), dtype=tl.float32)
    for n0 in range(0, N, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        dy = tl.load(
            dy_ptr + offs_m[:, None] * stride_dym + offs_n[None, :],
            mask=(offs_m[:, None] < M) & (offs_n[None, :] < N), other=0.0,
        )  # fmt: skip
        b = tl.load(
            b_ptr + offs_n[:, None] * stride_bn + offs_r[None, :],
            mask=(offs_n[:, None] < N) & (offs_r[None, :] < R), other=0.0,
        )  # fmt: skip
        acc = tl.dot(dy, b.to(dy.dtype), acc)
    out_mask = (offs_m[:, None] < M) & (offs_r[None, :] < R)
    tl.store(dyb_ptr + offs_m[:, None] * stride_om + offs_r[None, :], acc, mask=out_mask)


@triton.jit
def _lora_dx_kernel(
    # pointers: dy (M, N); W storage (kernels.matmul._w_tile); dyb (M, R) fp32; A (R, K); keep mask (M, K) u8; dx
    dy_ptr, w_ptr, absmax_ptr, code_ptr, dq_data_ptr, dq_absmax_ptr, dq_code_ptr, dyb_ptr, a_ptr, mask_ptr, dx_ptr,
    # scalars: LoRA scale s, 1 / (1 - p), the double-quant offset
    scale, keep_scale, dq_offset,
    # sizes
    M, N, K, R,
    # strides
    stride_dym, stride_wn, stride_sn, stride_dybm, stride_ar, stride_maskm, stride_dxm,
    # meta
    IS_4BIT: tl.constexpr, IS_INT8: tl.constexpr, DOUBLE_QUANT: tl.constexpr, HAS_DROPOUT: tl.constexpr,
    BLOCKSIZE: tl.constexpr, DQ_BLOCKSIZE: tl.constexpr, ROW_SCALE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_R: tl.constexpr,
):  # fmt: skip
    """dx = dy W + s (m ⊙ (dyb A)); grid (cdiv(M, BLOCK_M), cdiv(K, BLOCK_K)).

    The low-rank term comes first (a loop over R in BLOCK_R slices; dyb is small), then the main loop over
    N accumulates dy W onto it with W dequantized tile by tile.
    """
    pid_m = tl.program_id(0)
    pid_k = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_k = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    mask_m = offs_m < M
    mask_k = offs_k < K
    out_mask = mask_m[:, None] & mask_k[None, :]
    # low-rank term first, so that a single (BLOCK_M, BLOCK_K) accumulator is live at any time
    acc = tl.zeros((BLOCK_M, BLOCK_K), dtype=tl.float32)
    for r0 in range(0, R, BLOCK_R):
        offs_r = r0 + tl.arange(0, BLOCK_R)
        mask_r = offs_r < R
        dyb = tl.load(
            dyb_ptr + offs_m[:, None] * stride_dybm + offs_r[None, :], mask=mask_m[:, None] & mask_r[None, :], other=0.0
        )
        a = tl.load(
            a_ptr + offs_r[:, None] * stride_ar + offs_k[None, :], mask=mask_r[:, None] & mask_k[None, :], other=0.0
        )
        acc = tl.dot(dyb.to(a.dtype), a, acc)  # (BLOCK_M, BLOCK_R) @ (BLOCK_R, BLOCK_K)
    acc *= scale
    if HAS_DROPOUT:
        keep = tl.load(mask_ptr + offs_m[:, None] * stride_maskm + offs_k[None, :], mask=out_mask, other=0)
        acc = tl.where(keep != 0, acc * keep_scale, 0.0)
    code = _codebook(code_ptr, IS_4BIT)
    for n0 in range(0, N, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        mask_n = offs_n < N
        dy = tl.load(
            dy_ptr + offs_m[:, None] * stride_dym + offs_n[None, :], mask=mask_m[:, None] & mask_n[None, :], other=0.0
        )
        w = _w_tile(
            w_ptr, absmax_ptr, code, dq_data_ptr, dq_absmax_ptr, dq_code_ptr, dq_offset,
            offs_n, offs_k, pid_k * BLOCK_K, N, K, stride_wn, stride_sn,
            IS_4BIT, IS_INT8, DOUBLE_QUANT, BLOCKSIZE, DQ_BLOCKSIZE, ROW_SCALE,
        )  # fmt: skip
        acc = tl.dot(dy, w.to(dy.dtype), acc)  # (BLOCK_M, BLOCK_N) @ (BLOCK_N, BLOCK_K)
    tl.store(dx_ptr + offs_m[:, None] * stride_dxm + offs_k[None, :], acc.to(dx_ptr.dtype.element_ty), mask=out_mask)


@triton.jit
def _lora_da_kernel(
    # pointers: dyb (M, R) fp32, x (M, K), keep mask (M, K) u8, out dA (R, K)
    dyb_ptr, x_ptr, mask_ptr, da_ptr,
    # scalars
    scale, keep_scale,
    # sizes
    M, K, R,
    # strides
    stride_dybm, stride_xm, stride_maskm, stride_dar,
    # meta
    HAS_DROPOUT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_R: tl.constexpr,
):  # fmt: skip
    """dA[r, k] = s Σ_m dyb[m, r] d(x)[m, k]; grid (cdiv(R, BLOCK_R), cdiv(K, BLOCK_K))."""
    pid_r = tl.program_id(0)
    pid_k = tl.program_id(1)
    offs_r = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)
    offs_k = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK_R, BLOCK_K), dtype=tl.float32)
    for m0 in range(0, M, BLOCK_M):
        offs_m = m0 + tl.arange(0, BLOCK_M)
        mask_m = offs_m < M
        xmask = mask_m[:, None] & (offs_k[None, :] < K)
        x = tl.load(x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :], mask=xmask, other=0.0)
        if HAS_DROPOUT:
            keep = tl.load(mask_ptr + offs_m[:, None] * stride_maskm + offs_k[None, :], mask=xmask, other=0)
            x = tl.where(keep != 0, x.to(tl.float32) * keep_scale, 0.0).to(x.dtype)  # d(x), rounded as torch does
        dyb = tl.load(
            dyb_ptr + offs_m[:, None] * stride_dybm + offs_r[None, :],
            mask=mask_m[:, None] & (offs_r[None, :] < R), other=0.0,
        )  # fmt: skip
        acc = tl.dot(tl.trans(dyb.to(x.dtype)), x, acc)  # (BLOCK_R, BLOCK_M) @ (BLOCK_M, BLOCK_K)
    out_mask = (offs_r[:, None] < R) & (offs_k[None, :] < K)
    tl.store(
        da_ptr + offs_r[:, None] * stride_dar + offs_k[None, :],
        (scale * acc).to(da_ptr.dtype.element_ty),
        mask=out_mask,
    )


@triton.jit
def _lora_db_kernel(
    # pointers: dy (M, N), xa (M, R), out dB (N, R)
    dy_ptr, xa_ptr, db_ptr,
    # scalars
    scale,
    # sizes
    M, N, R,
    # strides
    stride_dym, stride_xam, stride_dbn,
    # meta
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr,
):  # fmt: skip
    """dB[n, r] = s Σ_m dy[m, n] xa[m, r]; grid (cdiv(N, BLOCK_N), cdiv(R, BLOCK_R))."""
    pid_n = tl.program_id(0)
    pid_r = tl.program_id(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_r = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)
    acc = tl.zeros((BLOCK_N, BLOCK_R), dtype=tl.float32)
    for m0 in range(0, M, BLOCK_M):
        offs_m = m0 + tl.arange(0, BLOCK_M)
        mask_m = offs_m < M
        dy = tl.load(
            dy_ptr + offs_m[:, None] * stride_dym + offs_n[None, :],
            mask=mask_m[:, None] & (offs_n[None, :] < N), other=0.0,
        )  # fmt: skip
        xa = tl.load(
            xa_ptr + offs_m[:, None] * stride_xam + offs_r[None, :],
            mask=mask_m[:, None] & (offs_r[None, :] < R), other=0.0,
        )  # fmt: skip
        acc = tl.dot(tl.trans(dy), xa.to(dy.dtype), acc)  # (BLOCK_N, BLOCK_M) @ (BLOCK_M, BLOCK_R)
    out_mask = (offs_n[:, None] < N) & (offs_r[None, :] < R)
    tl.store(
        db_ptr + offs_n[:, None] * stride_dbn + offs_r[None, :],
        (scale * acc).to(db_ptr.dtype.element_ty),
        mask=out_mask,
    )


# ---------------------------------------------------------------------------------------------------
# Launchers
# ---------------------------------------------------------------------------------------------------


def _check_2d(name: str, t: torch.Tensor, shape: tuple[int, ...], dtype: torch.dtype | None = None) -> None:
    if t.dim() != 2 or tuple(t.shape) != shape:
        raise ValueError(f"{name}: shape {tuple(t.shape)}; expected {shape}")
    if dtype is not None and t.dtype != dtype:
        raise ValueError(f"{name}: dtype {t.dtype}; expected {dtype}")
    if t.stride(-1) != 1:
        raise ValueError(f"{name}: strides {t.stride()}; expected a contiguous last dimension")
    if t.shape[0] * t.stride(0) >= _INDEX_LIMIT:
        raise ValueError(f"{name}: shape {tuple(t.shape)} spans >= 2^31 elements; the kernels index in int32")


def _check_act(name: str, t: torch.Tensor) -> None:
    if t.dtype not in _TORCH_TO_TL:
        raise ValueError(f"{name}: dtype {t.dtype}; expected fp32, fp16 or bf16")


def lora_dyb(dy: torch.Tensor, b: torch.Tensor, *, config: BwdConfig | None = None) -> torch.Tensor:
    """dyb = dy B.

    dy: (M, N) fp32|fp16|bf16; b: (N, R), same dtype. Returns (M, R) fp32 (kept in fp32: it feeds both
    dx and dA, and it is small).

    Raises:
        ValueError: shapes, dtypes or strides that do not match.
    """
    _check_act("dy", dy)
    m, n = dy.shape
    _check_2d("dy", dy, (m, n))
    r = b.shape[-1]
    _check_2d("b", b, (n, r), dy.dtype)
    cfg = config or pick_config(m, r, dy.dtype)
    out = torch.empty((m, r), device=dy.device, dtype=torch.float32)
    grid = (triton.cdiv(m, cfg.block_m), triton.cdiv(r, cfg.block_r))
    _lora_dyb_kernel[grid](
        dy, b, out, m, n, r, dy.stride(0), b.stride(0), out.stride(0),
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_R=cfg.block_r,
        num_warps=cfg.num_warps_dyb, num_stages=cfg.num_stages,
    )  # fmt: skip
    return out


def check_base(w: QuantizedTensor | torch.Tensor, n: int, k: int) -> None:
    """Raise ValueError unless w is a usable (N, K) base: a dense 2-D tensor or a QuantizedTensor in nf4,
    fp4 or int8 (fp16/bf16 casts: pass the tensor itself)."""
    if isinstance(w, QuantizedTensor):
        if w.fmt not in ("nf4", "fp4", "int8"):
            raise ValueError(f"w: QuantizedTensor format {w.fmt!r}; expected 'nf4', 'fp4' or 'int8'")
        if tuple(w.shape) != (n, k):
            raise ValueError(f"w: shape {tuple(w.shape)}; expected {(n, k)}")
        if n * k >= _INDEX_LIMIT:
            raise ValueError(f"w: shape {tuple(w.shape)} has >= 2^31 elements; the kernels index in int32")
        return
    if not isinstance(w, torch.Tensor):
        raise ValueError(f"w: {type(w).__name__}; expected a torch.Tensor or a quant.QuantizedTensor")
    _check_act("w", w)
    _check_2d("w", w, (n, k))


def lora_dx(
    dy: torch.Tensor,
    w: QuantizedTensor | torch.Tensor,
    dyb: torch.Tensor,
    a: torch.Tensor,
    scale: float,
    *,
    keep_mask: torch.Tensor | None = None,
    keep_scale: float = 1.0,
    config: BwdConfig | None = None,
) -> torch.Tensor:
    """dx = dy W + s (m ⊙ (dyb A)), W dequantized on chip.

    dy: (M, N) fp32|fp16|bf16; w: (N, K) dense (any float dtype) or QuantizedTensor nf4|fp4 (± double
    quantization) | int8 (row-wise or per-tensor; LLM.int8() outlier columns are added back by a small
    (M, N) x (N, k) torch product); dyb: (M, R) fp32; a: (R, K), dy's dtype; keep_mask: (M, K) bool, the
    dropout keep mask (None: no dropout), keep_scale = 1 / (1 - p). Returns dx (M, K) in dy's dtype.

    Raises:
        ValueError: shapes, dtypes, strides or a base format that do not match.
    """
    _check_act("dy", dy)
    m, n = dy.shape
    _check_2d("dy", dy, (m, n))
    r, k = a.shape
    check_base(w, n, k)
    _check_2d("dyb", dyb, (m, r), torch.float32)
    _check_2d("a", a, (r, k), dy.dtype)
    if keep_mask is not None:
        _check_2d("keep_mask", keep_mask, (m, k), torch.bool)
    cfg = config or pick_config(m, r, dy.dtype)
    dx = torch.empty((m, k), device=dy.device, dtype=dy.dtype)
    op = weight_operand(w)
    w_ptrs = [op.args[a] for a in ("w_ptr", "absmax_ptr", "code_ptr", "dq_data_ptr", "dq_absmax_ptr", "dq_code_ptr")]
    dq_offset, stride_wn, stride_sn = op.args["dq_offset"], op.args["stride_wn"], op.args["stride_sn"]
    flags = dict(op.consts)
    # one 4-bit scale per W row of a tile when its K range [k0, k0 + BLOCK_K) sits inside one quantization block
    flags["ROW_SCALE"] = bool(flags["IS_4BIT"]) and k % flags["BLOCKSIZE"] == 0 and cfg.block_k <= flags["BLOCKSIZE"]
    mask_arg = dx if keep_mask is None else keep_mask.view(torch.uint8)
    grid = (triton.cdiv(m, cfg.block_m), triton.cdiv(k, cfg.block_k))
    _lora_dx_kernel[grid](
        dy, *w_ptrs, dyb, a, mask_arg, dx, float(scale), float(keep_scale), float(dq_offset),
        m, n, k, r,
        dy.stride(0), stride_wn, stride_sn, dyb.stride(0), a.stride(0), mask_arg.stride(0), dx.stride(0),
        **flags, HAS_DROPOUT=keep_mask is not None,
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, BLOCK_R=cfg.block_r,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )  # fmt: skip
    return outlier_fixup_dx(dx, dy, w)


def lora_da(
    dyb: torch.Tensor,
    x: torch.Tensor,
    scale: float,
    *,
    keep_mask: torch.Tensor | None = None,
    keep_scale: float = 1.0,
    config: BwdConfig | None = None,
) -> torch.Tensor:
    """dA = s dyb^T d(x), d(x) = x ⊙ keep_mask * keep_scale (or x without dropout) rebuilt on chip.

    dyb: (M, R) fp32; x: (M, K) fp32|fp16|bf16; keep_mask: (M, K) bool or None. Returns (R, K) in x's dtype.

    Raises:
        ValueError: shapes, dtypes or strides that do not match.
    """
    _check_act("x", x)
    m, k = x.shape
    _check_2d("x", x, (m, k))
    r = dyb.shape[-1]
    _check_2d("dyb", dyb, (m, r), torch.float32)
    if keep_mask is not None:
        _check_2d("keep_mask", keep_mask, (m, k), torch.bool)
    cfg = config or pick_config(m, r, x.dtype)
    da = torch.empty((r, k), device=x.device, dtype=x.dtype)
    mask_arg = x if keep_mask is None else keep_mask.view(torch.uint8)
    grid = (triton.cdiv(r, cfg.block_r), triton.cdiv(k, cfg.block_k))
    _lora_da_kernel[grid](
        dyb, x, mask_arg, da, float(scale), float(keep_scale), m, k, r,
        dyb.stride(0), x.stride(0), mask_arg.stride(0), da.stride(0),
        HAS_DROPOUT=keep_mask is not None, BLOCK_M=cfg.block_m, BLOCK_K=cfg.block_k, BLOCK_R=cfg.block_r,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )  # fmt: skip
    return da


def lora_db(dy: torch.Tensor, xa: torch.Tensor, scale: float, *, config: BwdConfig | None = None) -> torch.Tensor:
    """dB = s dy^T xa.

    dy: (M, N) fp32|fp16|bf16; xa: (M, R), dy's dtype. Returns (N, R) in dy's dtype.

    Raises:
        ValueError: shapes, dtypes or strides that do not match.
    """
    _check_act("dy", dy)
    m, n = dy.shape
    _check_2d("dy", dy, (m, n))
    r = xa.shape[-1]
    _check_2d("xa", xa, (m, r), dy.dtype)
    cfg = config or pick_config(m, r, dy.dtype)
    db = torch.empty((n, r), device=dy.device, dtype=dy.dtype)
    grid = (triton.cdiv(n, cfg.block_n), triton.cdiv(r, cfg.block_r))
    _lora_db_kernel[grid](
        dy, xa, db, float(scale), m, n, r, dy.stride(0), xa.stride(0), db.stride(0),
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_R=cfg.block_r,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )  # fmt: skip
    return db


# ---------------------------------------------------------------------------------------------------
# Static audit: every (kernel, config) the launchers may pick, for the activation dtypes and base formats
# ---------------------------------------------------------------------------------------------------

# name -> (W storage pointer type, format constexprs); a dense W is audited in the activation dtype; 4-bit in both scale
# layouts the launcher may pick (per element: K not a multiple of the block size; per row: it is)
_F = {"IS_4BIT": False, "IS_INT8": False, "DOUBLE_QUANT": False, "ROW_SCALE": False}
_BASES: dict[str, tuple[str, dict[str, object]]] = {
    "dense": ("", _F),  # W's pointer type is the activation's
    "nf4": ("*u8", {**_F, "IS_4BIT": True}),
    "nf4-rowscale": ("*u8", {**_F, "IS_4BIT": True, "ROW_SCALE": True}),
    "nf4dq": ("*u8", {**_F, "IS_4BIT": True, "DOUBLE_QUANT": True}),
    "nf4dq-rowscale": ("*u8", {**_F, "IS_4BIT": True, "DOUBLE_QUANT": True, "ROW_SCALE": True}),
    "int8": ("*i8", {**_F, "IS_INT8": True}),
}


def _signature(kernel: object, types: dict[str, str]) -> dict[str, str]:
    """Signature in argument order: the named pointer types, i32 for sizes and strides, constexprs last."""
    sig = {}
    for name, param in inspect.signature(kernel.fn).parameters.items():  # type: ignore[attr-defined]
        sig[name] = "constexpr" if "constexpr" in str(param.annotation) else types.get(name, "i32")
    return sig


def audit_cases() -> list[object]:
    """AuditCases for kernels.audit: each kernel x each config in CONFIGS (with the activation dtype its
    stage count is picked for: bf16 stands for fp16 too), and for dx each base format, dropout on (the
    superset of its code paths)."""
    from kernels.audit import AuditCase

    cases: list[object] = []
    for cfg in CONFIGS:
        act = "bf16" if cfg.num_stages == 3 else "fp32"  # the dtype pick_config pairs with these stages
        meta = {"BLOCK_M": cfg.block_m, "BLOCK_N": cfg.block_n, "BLOCK_K": cfg.block_k, "BLOCK_R": cfg.block_r}
        p = f"*{act}"
        scal = {"scale": "fp32", "keep_scale": "fp32", "dq_offset": "fp32"}
        kernels: list[tuple[Any, dict[str, str], tuple[str, ...], dict[str, object], str]] = [
            (
                _lora_dyb_kernel,
                {"dy_ptr": p, "b_ptr": p, "dyb_ptr": "*fp32"},
                ("BLOCK_M", "BLOCK_N", "BLOCK_R"),
                {},
                "",
            ),
            (
                _lora_db_kernel,
                {"dy_ptr": p, "xa_ptr": p, "db_ptr": p, **scal},
                ("BLOCK_M", "BLOCK_N", "BLOCK_R"),
                {},
                "",
            ),
            (
                _lora_da_kernel,
                {"dyb_ptr": "*fp32", "x_ptr": p, "mask_ptr": "*u8", "da_ptr": p, **scal},
                ("BLOCK_M", "BLOCK_K", "BLOCK_R"),
                {"HAS_DROPOUT": True},
                "",
            ),
        ]
        for base, (w_type, flags) in _BASES.items():
            ptrs = {
                "dy_ptr": p, "w_ptr": w_type or p, "absmax_ptr": "*fp32", "code_ptr": "*fp32",
                "dq_data_ptr": "*u8", "dq_absmax_ptr": "*fp32", "dq_code_ptr": "*fp32", "dyb_ptr": "*fp32", "a_ptr": p,
                "mask_ptr": "*u8", "dx_ptr": p, **scal,
            }  # fmt: skip
            consts = {**flags, "HAS_DROPOUT": True, "BLOCKSIZE": 64, "DQ_BLOCKSIZE": 256}
            kernels.append((_lora_dx_kernel, ptrs, tuple(meta), consts, f"{base}-"))
        for kernel, types, used, consts, tag in kernels:
            sig = _signature(kernel, types)
            constexprs = {**{k: meta[k] for k in used}, **consts}
            warps = cfg.num_warps_dyb if kernel is _lora_dyb_kernel else cfg.num_warps
            name = f"{act}-{tag}{cfg.name}".replace(f"-w{cfg.num_warps}-", f"-w{warps}-")
            cases.append(AuditCase(kernel, name, sig, constexprs, num_warps=warps, num_stages=cfg.num_stages))
    return cases
