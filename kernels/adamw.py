"""Fused AdamW updates: one pass per tensor for fp32 states and for blockwise 8-bit states.

The math and the state formats are `quant.optim.states` (the reference, re-exported here as `adamw_fp32_ref`
and `adamw_8bit_ref`); each kernel computes the same fp32 operations in the same order:

    m = m * beta1 + g * (1 - beta1);  v = v * beta2 + g * g * (1 - beta2)
    p = p * (1 - lr * wd) - (lr / (1 - beta1**t)) * (m / (sqrt(v) / sqrt(1 - beta2**t) + eps))

8-bit: dequantize (code[c] * absmax) -> update -> requantize in registers. The requantization needs each
block's new absmax, so a program owns whole blocks: a (BLOCKS, 256) tile, one row per quantization block.
The nearest code is a branch-free binary search over the sorted 256-value map, comparing with the fp32
midpoints (code[i] + code[i+1]) / 2 as quant.blockwise does (a tie goes to the lower value). Division and
sqrt are the correctly rounded forms and FMA contraction is off (`enable_fp_fusion=False`), so on a GPU the
kernel rounds as the reference does.

`paged_adamw(params, fused=None, ...)` builds `quant.optim.PagedAdamW` with `TritonAdamWUpdate` when fused
(default: the parameters are on a CUDA device and the kernels are compiled for it, i.e. not the interpreter)
and with the torch reference otherwise; quant/ itself never imports kernels/.
"""

from __future__ import annotations

from typing import Any

import torch
import triton
import triton.language as tl

from kernels.device import DEVICE
from quant.optim import AdamWHyper, Blockwise8State, PagedAdamW
from quant.optim.states import OPTIM_BLOCKSIZE, adamw_8bit_ref, adamw_fp32_ref

__all__ = [
    "TritonAdamWUpdate",
    "adamw_8bit",
    "adamw_8bit_ref",
    "adamw_fp32",
    "adamw_fp32_ref",
    "audit_cases",
    "paged_adamw",
]

FP32_BLOCK = 1024  # elements a program updates with fp32 states
BLOCKS_CHOICES = (1, 4)  # quantization blocks a program owns with 8-bit states (256 or 1024 elements)
_TORCH_TO_TL = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


# ---------------------------------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------------------------------


@triton.jit
def _adamw_fp32_kernel(
    # parameter, gradient (N,) in the parameter dtype; m, v (N,) fp32; all updated in place but g
    p_ptr, g_ptr, m_ptr, v_ptr,
    # size
    N,
    # hyper-parameters, fp32 (quant.optim.states.AdamWHyper)
    beta1, one_minus_beta1, beta2, one_minus_beta2, eps, step_size, sqrt_correction2, decay,
    BLOCK: tl.constexpr,
):  # fmt: skip
    """AdamW on fp32 states: elementwise, BLOCK elements a program."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    p = tl.load(p_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    m = tl.load(m_ptr + offs, mask=mask, other=0.0)
    v = tl.load(v_ptr + offs, mask=mask, other=0.0)
    m = m * beta1 + g * one_minus_beta1
    v = v * beta2 + g * g * one_minus_beta2
    denom = tl.math.div_rn(tl.sqrt_rn(v), sqrt_correction2) + eps
    p = p * decay
    p = p - step_size * tl.math.div_rn(m, denom)
    tl.store(m_ptr + offs, m, mask=mask)
    tl.store(v_ptr + offs, v, mask=mask)
    tl.store(p_ptr + offs, p.to(p_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _nearest_code(x, code_ptr):
    """Index of the nearest of 256 sorted fp32 values to x: #{i < 255 : (code[i] + code[i+1]) / 2 < x}."""
    idx = tl.zeros(x.shape, dtype=tl.int32)
    for k in tl.static_range(8):
        half = 128 >> k
        j = idx + (half - 1)  # <= 254: the steps above sum to at most 255 - (2 * half - 1)
        mid = (tl.load(code_ptr + j) + tl.load(code_ptr + j + 1)) * 0.5
        idx = tl.where(mid < x, idx + half, idx)
    return idx


@triton.jit
def _requantize(x, mask, code_ptr):
    """(codes (BLOCKS, BLOCKSIZE) uint8, absmax (BLOCKS,) fp32) of an fp32 tile, one block a row."""
    x = tl.where(mask, x, 0.0)
    absmax = tl.max(tl.abs(x), axis=1)
    safe = tl.where(absmax == 0.0, 1.0, absmax)  # an all-zero block codes 0.0
    normed = tl.math.div_rn(x, safe[:, None])
    return _nearest_code(normed, code_ptr).to(tl.uint8), absmax


@triton.jit
def _adamw_8bit_kernel(
    # parameter, gradient (N,) in the parameter dtype; p updated in place
    p_ptr, g_ptr,
    # first moment: codes (N,) uint8, absmax (n_blocks,) fp32, signed map (256,) fp32; then the second moment
    m_ptr, m_absmax_ptr, m_code_ptr, v_ptr, v_absmax_ptr, v_code_ptr,
    # size
    N,
    # hyper-parameters, fp32 (quant.optim.states.AdamWHyper)
    beta1, one_minus_beta1, beta2, one_minus_beta2, eps, step_size, sqrt_correction2, decay,
    BLOCKSIZE: tl.constexpr, BLOCKS: tl.constexpr,
):  # fmt: skip
    """AdamW on blockwise 8-bit states: a program owns BLOCKS whole quantization blocks (BLOCKS, BLOCKSIZE)."""
    rows = tl.program_id(0).to(tl.int64) * BLOCKS + tl.arange(0, BLOCKS)  # quantization block indices
    offs = rows[:, None] * BLOCKSIZE + tl.arange(0, BLOCKSIZE)[None, :]  # (BLOCKS, BLOCKSIZE)
    mask = offs < N
    row_mask = rows * BLOCKSIZE < N
    p = tl.load(p_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    # dequantize: code[c] * absmax[block]
    m_codes = tl.load(m_ptr + offs, mask=mask, other=0).to(tl.int32)
    v_codes = tl.load(v_ptr + offs, mask=mask, other=0).to(tl.int32)
    m = tl.load(m_code_ptr + m_codes) * tl.load(m_absmax_ptr + rows, mask=row_mask, other=0.0)[:, None]
    v = tl.load(v_code_ptr + v_codes) * tl.load(v_absmax_ptr + rows, mask=row_mask, other=0.0)[:, None]
    # update in fp32
    m = m * beta1 + g * one_minus_beta1
    v = v * beta2 + g * g * one_minus_beta2
    denom = tl.math.div_rn(tl.sqrt_rn(v), sqrt_correction2) + eps
    p = p * decay
    p = p - step_size * tl.math.div_rn(m, denom)
    tl.store(p_ptr + offs, p.to(p_ptr.dtype.element_ty), mask=mask)
    # requantize with each block's new absmax
    m_codes_new, m_absmax = _requantize(m, mask, m_code_ptr)
    v_codes_new, v_absmax = _requantize(v, mask, v_code_ptr)
    tl.store(m_ptr + offs, m_codes_new, mask=mask)
    tl.store(v_ptr + offs, v_codes_new, mask=mask)
    tl.store(m_absmax_ptr + rows, m_absmax, mask=row_mask)
    tl.store(v_absmax_ptr + rows, v_absmax, mask=row_mask)


# ---------------------------------------------------------------------------------------------------
# Launchers
# ---------------------------------------------------------------------------------------------------


def _scalars(hp: AdamWHyper) -> tuple[float, ...]:
    return (
        hp.beta1,
        hp.one_minus_beta1,
        hp.beta2,
        hp.one_minus_beta2,
        hp.eps,
        hp.step_size,
        hp.sqrt_correction2,
        hp.decay,
    )


def _check_param(p: torch.Tensor, grad: torch.Tensor) -> None:
    if p.dtype not in _TORCH_TO_TL:
        raise ValueError(f"p: dtype {p.dtype}; expected fp32|fp16|bf16")
    if grad.shape != p.shape or grad.device != p.device:
        raise ValueError(f"grad: shape {tuple(grad.shape)} on {grad.device}; expected {tuple(p.shape)} on {p.device}")
    if not (p.is_contiguous() and grad.is_contiguous()):
        raise ValueError("p, grad: non-contiguous; expected contiguous tensors")


def adamw_fp32(
    p: torch.Tensor, grad: torch.Tensor, exp_avg: torch.Tensor, exp_avg_sq: torch.Tensor, hp: AdamWHyper
) -> None:
    """Fused AdamW with fp32 states, in place (as `adamw_fp32_ref`).

    p, grad: any shape, fp32|fp16|bf16, contiguous; exp_avg, exp_avg_sq: p's shape, fp32, contiguous.

    Raises:
        ValueError: mismatched shapes, dtypes or devices, or non-contiguous tensors.
    """
    _check_param(p, grad)
    for name, s in (("exp_avg", exp_avg), ("exp_avg_sq", exp_avg_sq)):
        if s.shape != p.shape or s.dtype != torch.float32 or not s.is_contiguous() or s.device != p.device:
            raise ValueError(f"{name}: {tuple(s.shape)} {s.dtype}; expected {tuple(p.shape)} fp32, contiguous")
    n = p.numel()
    if n == 0:
        return
    grid = (triton.cdiv(n, FP32_BLOCK),)
    _adamw_fp32_kernel[grid](
        p, grad, exp_avg, exp_avg_sq, n, *_scalars(hp), BLOCK=FP32_BLOCK, num_warps=4, enable_fp_fusion=False
    )


def pick_blocks(n: int, blocksize: int = OPTIM_BLOCKSIZE) -> int:
    """Quantization blocks a program owns: 1 for small tensors (more programs), 4 past 256 blocks."""
    return 1 if triton.cdiv(n, blocksize) <= 256 else 4


def adamw_8bit(
    p: torch.Tensor,
    grad: torch.Tensor,
    m: Blockwise8State,
    v: Blockwise8State,
    hp: AdamWHyper,
    blocks_per_program: int | None = None,
) -> None:
    """Fused AdamW with blockwise 8-bit states, in place (as `adamw_8bit_ref`).

    p, grad: any shape, fp32|fp16|bf16, contiguous; m, v: codes p's shape uint8, absmax (ceil(n/256),) fp32,
    code (256,) fp32 sorted ascending (quant.codebooks.dynamic_map); blocksize 256 (or another power of 2).
    blocks_per_program: 1 or 4 (default `pick_blocks`).

    Raises:
        ValueError: mismatched shapes, dtypes or devices, a blocksize that is not a power of 2, or a bad
            blocks_per_program.
    """
    _check_param(p, grad)
    n = p.numel()
    for name, s in (("m", m), ("v", v)):
        bs = s.blocksize
        if bs < 16 or bs & (bs - 1) or bs != m.blocksize:
            raise ValueError(f"{name}.blocksize: {bs}; expected one power of 2 >= 16 for both moments")
        if s.codes.shape != p.shape or s.codes.dtype != torch.uint8 or not s.codes.is_contiguous():
            raise ValueError(f"{name}.codes: {tuple(s.codes.shape)} {s.codes.dtype}; expected {tuple(p.shape)} uint8")
        if s.absmax.shape != (triton.cdiv(n, bs),) or s.absmax.dtype != torch.float32:
            raise ValueError(f"{name}.absmax: {tuple(s.absmax.shape)} {s.absmax.dtype}; expected ceil(n/{bs}) fp32")
        if s.code.shape != (256,) or s.code.dtype != torch.float32:
            raise ValueError(f"{name}.code: {tuple(s.code.shape)} {s.code.dtype}; expected (256,) fp32")
        if not s.codes.device == s.absmax.device == s.code.device == p.device:
            devices = f"{s.codes.device}, {s.absmax.device}, {s.code.device}"
            raise ValueError(f"{name}: codes, absmax, code on {devices}; expected all on {p.device}")
    blocks = pick_blocks(n, m.blocksize) if blocks_per_program is None else blocks_per_program
    if blocks not in BLOCKS_CHOICES:
        raise ValueError(f"blocks_per_program: {blocks_per_program!r}; expected one of {BLOCKS_CHOICES}")
    if n == 0:
        return
    grid = (triton.cdiv(n, m.blocksize * blocks),)
    _adamw_8bit_kernel[grid](
        p, grad, m.codes, m.absmax, m.code, v.codes, v.absmax, v.code, n, *_scalars(hp),
        BLOCKSIZE=m.blocksize, BLOCKS=blocks, num_warps=2 if blocks == 1 else 4, enable_fp_fusion=False,
    )  # fmt: skip


class TritonAdamWUpdate:
    """The fused `quant.optim.AdamWUpdate`: the launchers above."""

    def fp32(
        self, p: torch.Tensor, grad: torch.Tensor, exp_avg: torch.Tensor, exp_avg_sq: torch.Tensor, hp: AdamWHyper
    ) -> None:
        _contiguous_call(adamw_fp32, p, grad, exp_avg, exp_avg_sq, hp)

    def blockwise8(
        self, p: torch.Tensor, grad: torch.Tensor, m: Blockwise8State, v: Blockwise8State, hp: AdamWHyper
    ) -> None:
        _contiguous_call(adamw_8bit, p, grad, m, v, hp)


def _contiguous_call(launcher: Any, p: torch.Tensor, grad: torch.Tensor, *args: Any) -> None:
    """Run a launcher on a contiguous p (copied back if p is a strided view) and a contiguous grad."""
    work = p if p.is_contiguous() else p.contiguous()
    launcher(work, grad.contiguous(), *args)
    if work is not p:
        p.copy_(work)


def paged_adamw(params: Any, *, fused: bool | None = None, **kwargs: Any) -> PagedAdamW:
    """`quant.optim.PagedAdamW(params, **kwargs)` with the fused Triton update when `fused`, else with the torch
    reference. The default (`fused=None`) follows the parameters: fused when they are on a CUDA device and the
    kernels are compiled for CUDA (kernels.device.DEVICE is CUDA: a GPU, no forced interpreter); parameters
    on the CPU keep the torch reference, also on a GPU machine. kwargs: lr, betas, eps, weight_decay,
    state_bits, budget_bytes, min_8bit_size.

    Raises:
        ValueError: as PagedAdamW, or an `update` keyword (this factory picks it).
    """
    if "update" in kwargs:
        raise ValueError("update: set by paged_adamw from `fused`; construct quant.optim.PagedAdamW to pass one")
    opt = PagedAdamW(params, **kwargs)  # params may be a one-shot iterator: PagedAdamW reads it once
    if fused is None:
        fused = _fused_by_default(opt.pager.device)  # the device all the parameters are on (PagedAdamW checks)
    if fused:
        opt.update = TritonAdamWUpdate()
    return opt


def _fused_by_default(device: torch.device) -> bool:
    """Whether `paged_adamw` picks the fused update for parameters on `device`: a CUDA device, with the kernels
    compiled for CUDA (not the interpreter, whose default stays the torch reference)."""
    return device.type == "cuda" and DEVICE.type == "cuda"


def audit_cases() -> list[object]:
    """AuditCases for kernels.audit: each kernel x parameter dtype x config the launchers may pick."""
    from kernels.audit import AuditCase

    scalars = dict.fromkeys(
        ("beta1", "one_minus_beta1", "beta2", "one_minus_beta2", "eps", "step_size", "sqrt_correction2", "decay"),
        "fp32",
    )
    state_ptrs = (("_ptr", "*u8"), ("_absmax_ptr", "*fp32"), ("_code_ptr", "*fp32"))
    cases: list[object] = []
    for dtype in _TORCH_TO_TL.values():
        ptr = f"*{dtype}"
        signature = {"p_ptr": ptr, "g_ptr": ptr, "m_ptr": "*fp32", "v_ptr": "*fp32", "N": "i32", **scalars}
        cases.append(
            AuditCase(
                _adamw_fp32_kernel,
                f"{dtype}-B{FP32_BLOCK}-w4",
                {**signature, "BLOCK": "constexpr"},
                {"BLOCK": FP32_BLOCK},
                num_warps=4,
                options={"enable_fp_fusion": False},  # as launched
            )
        )
        for blocks in BLOCKS_CHOICES:
            signature = {
                "p_ptr": ptr,
                "g_ptr": ptr,
                **{f"{s}{suffix}": t for s in ("m", "v") for suffix, t in state_ptrs},
                "N": "i32",
                **scalars,
                "BLOCKSIZE": "constexpr",
                "BLOCKS": "constexpr",
            }
            warps = 2 if blocks == 1 else 4
            cases.append(
                AuditCase(
                    _adamw_8bit_kernel,
                    f"{dtype}-BS{OPTIM_BLOCKSIZE}-BLOCKS{blocks}-w{warps}",
                    signature,
                    {"BLOCKSIZE": OPTIM_BLOCKSIZE, "BLOCKS": blocks},
                    num_warps=warps,
                    options={"enable_fp_fusion": False},  # as launched
                )
            )
    return cases
