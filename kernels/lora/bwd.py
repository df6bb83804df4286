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

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from kernels.launch import Launch, Workload
from kernels.weight import DTYPE_NAMES, _codebook, _w_tile, outlier_fixup_dx, weight_operand  # W, defined once
from quant import QuantizedTensor

__all__ = ["BwdConfig", "lora_da", "lora_db", "lora_dx", "lora_dyb", "pick_config"]

_INDEX_LIMIT = 2**31  # element offsets are int32 in the kernels (fewer registers than int64 in dx's dequant)


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
    if t.dtype not in DTYPE_NAMES:
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
    out, launch = _dyb_launch(dy, b, config or pick_config(m, r, dy.dtype))
    launch.run()
    return out


def _dyb_launch(dy: torch.Tensor, b: torch.Tensor, cfg: BwdConfig) -> tuple[torch.Tensor, Launch]:
    m, n = dy.shape
    r = b.shape[-1]
    out = torch.empty((m, r), device=dy.device, dtype=torch.float32)
    grid = (triton.cdiv(m, cfg.block_m), triton.cdiv(r, cfg.block_r))
    args = dict(dy_ptr=dy, b_ptr=b, dyb_ptr=out, M=m, N=n, R=r, stride_dym=dy.stride(0), stride_bn=b.stride(0),
                stride_om=out.stride(0), BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_R=cfg.block_r)  # fmt: skip
    launch = Launch(_lora_dyb_kernel, grid, args, cfg.num_warps_dyb, cfg.num_stages, name=_name(dy, cfg, "dyb"),
                    trips=triton.cdiv(n, cfg.block_n), elements=cfg.block_m * n)  # fmt: skip
    return out, launch


def _name(t: torch.Tensor, cfg: BwdConfig, tag: str) -> str:
    return f"{tag}-{DTYPE_NAMES[t.dtype]}-{cfg.name}"


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
    dx, launch = _dx_launch(dy, w, dyb, a, scale, keep_mask, keep_scale, cfg)
    launch.run()
    return outlier_fixup_dx(dx, dy, w)


def _dx_launch(
    dy: torch.Tensor, w: QuantizedTensor | torch.Tensor, dyb: torch.Tensor, a: torch.Tensor, scale: float,
    keep_mask: torch.Tensor | None, keep_scale: float, cfg: BwdConfig,
) -> tuple[torch.Tensor, Launch]:  # fmt: skip
    m, n = dy.shape
    r, k = a.shape
    dx = torch.empty((m, k), device=dy.device, dtype=dy.dtype)
    op = weight_operand(w)
    # one 4-bit scale per W row of a tile when its K range [k0, k0 + BLOCK_K) sits inside one quantization block
    bs = op.consts["BLOCKSIZE"]
    row_scale = bool(op.consts["IS_4BIT"]) and k % bs == 0 and cfg.block_k <= bs
    mask_arg = dx if keep_mask is None else keep_mask.view(torch.uint8)
    grid = (triton.cdiv(m, cfg.block_m), triton.cdiv(k, cfg.block_k))
    args = dict(
        dy_ptr=dy, **{key: v for key, v in op.args.items() if key not in ("dq_offset", "stride_wn", "stride_sn")},
        dyb_ptr=dyb, a_ptr=a, mask_ptr=mask_arg, dx_ptr=dx, scale=float(scale), keep_scale=float(keep_scale),
        dq_offset=float(op.args["dq_offset"]), M=m, N=n, K=k, R=r, stride_dym=dy.stride(0),
        stride_wn=op.args["stride_wn"] if not op.consts["IS_4BIT"] else 0, stride_sn=op.args["stride_sn"],
        stride_dybm=dyb.stride(0), stride_ar=a.stride(0), stride_maskm=mask_arg.stride(0), stride_dxm=dx.stride(0),
        **op.consts, HAS_DROPOUT=keep_mask is not None, ROW_SCALE=row_scale,
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, BLOCK_R=cfg.block_r,
    )  # fmt: skip
    name = _name(dy, cfg, f"dx-{op.precision}")
    launch = Launch(_lora_dx_kernel, grid, args, cfg.num_warps, cfg.num_stages, name=name,
                    trips=triton.cdiv(n, cfg.block_n), elements=n * cfg.block_k)  # fmt: skip
    return dx, launch


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
    da, launch = _da_launch(dyb, x, scale, keep_mask, keep_scale, config or pick_config(m, r, x.dtype))
    launch.run()
    return da


def _da_launch(
    dyb: torch.Tensor, x: torch.Tensor, scale: float, keep_mask: torch.Tensor | None, keep_scale: float,
    cfg: BwdConfig,
) -> tuple[torch.Tensor, Launch]:  # fmt: skip
    m, k = x.shape
    r = dyb.shape[-1]
    da = torch.empty((r, k), device=x.device, dtype=x.dtype)
    mask_arg = x if keep_mask is None else keep_mask.view(torch.uint8)
    grid = (triton.cdiv(r, cfg.block_r), triton.cdiv(k, cfg.block_k))
    args = dict(dyb_ptr=dyb, x_ptr=x, mask_ptr=mask_arg, da_ptr=da, scale=float(scale), keep_scale=float(keep_scale),
                M=m, K=k, R=r, stride_dybm=dyb.stride(0), stride_xm=x.stride(0), stride_maskm=mask_arg.stride(0),
                stride_dar=da.stride(0), HAS_DROPOUT=keep_mask is not None, BLOCK_M=cfg.block_m,
                BLOCK_K=cfg.block_k, BLOCK_R=cfg.block_r)  # fmt: skip
    launch = Launch(_lora_da_kernel, grid, args, cfg.num_warps, cfg.num_stages, name=_name(x, cfg, "da"),
                    trips=triton.cdiv(m, cfg.block_m), elements=m * cfg.block_k)  # fmt: skip
    return da, launch


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
    db, launch = _db_launch(dy, xa, scale, config or pick_config(m, r, dy.dtype))
    launch.run()
    return db


def _db_launch(dy: torch.Tensor, xa: torch.Tensor, scale: float, cfg: BwdConfig) -> tuple[torch.Tensor, Launch]:
    m, n = dy.shape
    r = xa.shape[-1]
    db = torch.empty((n, r), device=dy.device, dtype=dy.dtype)
    grid = (triton.cdiv(n, cfg.block_n), triton.cdiv(r, cfg.block_r))
    args = dict(dy_ptr=dy, xa_ptr=xa, db_ptr=db, scale=float(scale), M=m, N=n, R=r, stride_dym=dy.stride(0),
                stride_xam=xa.stride(0), stride_dbn=db.stride(0), BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n,
                BLOCK_R=cfg.block_r)  # fmt: skip
    launch = Launch(_lora_db_kernel, grid, args, cfg.num_warps, cfg.num_stages, name=_name(dy, cfg, "db"),
                    trips=triton.cdiv(m, cfg.block_m), elements=m * cfg.block_n)  # fmt: skip
    return db, launch


# ---------------------------------------------------------------------------------------------------
# Static audit: the launches of the backward, built by the launchers' own code on meta tensors
# ---------------------------------------------------------------------------------------------------

AUDIT_M: tuple[int, ...] = (16, 256, 4096)  # decode-, fine-tuning- and long-sequence-sized batches of tokens
AUDIT_RANKS: tuple[int, ...] = (16, 64)
AUDIT_BASES: tuple[str, ...] = ("nf4dq", "int8", "bf16")


def audit_workloads() -> list[Workload]:
    """The LoRA backward (dy B, dx, dA, dB) on llama2-7b.q_proj and llama2-70b.down_proj for each M, rank and base,
    bf16 activations; bytes: dy, x, W's storage, A, B, xa read and dx, dA, dB written; flops: 2 M N K for dx plus
    the rank terms 2 M R (2 N + 2 K)."""
    from kernels.matmul.audit import meta_weight

    def meta(*shape: int, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
        return torch.empty(*shape, dtype=dtype, device="meta")

    loads = []
    for shape, n, k in (("llama2-7b.q_proj", 4096, 4096), ("llama2-70b.down_proj", 8192, 28672)):
        for base in AUDIT_BASES:
            w = meta_weight(base, n, k)
            w_bytes = w.nbytes if isinstance(w, QuantizedTensor) else 2 * n * k
            for m in AUDIT_M:
                for r in AUDIT_RANKS:
                    cfg = pick_config(m, r, torch.bfloat16)
                    dy, x, a, b, xa = meta(m, n), meta(m, k), meta(r, k), meta(n, r), meta(m, r)
                    dyb, l_dyb = _dyb_launch(dy, b, cfg)
                    _, l_dx = _dx_launch(dy, w, dyb, a, 2.0, None, 1.0, cfg)
                    _, l_da = _da_launch(dyb, x, 2.0, None, 1.0, cfg)
                    _, l_db = _db_launch(dy, xa, 2.0, cfg)
                    moved = 2 * (m * n + 2 * m * k + 2 * r * (k + n) + m * r) + w_bytes
                    flops = 2 * m * n * k + 2 * m * r * (2 * n + 2 * k)
                    loads.append(Workload(f"lora_bwd_r{r}", shape, base, m, n, k, moved, flops,
                                          (l_dyb, l_dx, l_da, l_db)))  # fmt: skip
    return loads
