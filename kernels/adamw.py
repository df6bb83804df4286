"""Fused AdamW updates: one pass per tensor for fp32 states and for blockwise 8-bit states.

The math and the state formats are `quant.optim.states` (the reference, re-exported here as `adamw_fp32_ref`
and `adamw_8bit_ref`); each kernel computes the same fp32 operations in the same order, FMA contraction off:

    m = m * beta1 + g * (1 - beta1);  v = v * beta2 + g * g * (1 - beta2)
    p = p * (1 - lr * wd) - (lr / (1 - beta1**t)) * (m / (sqrt(v) / sqrt(1 - beta2**t) + eps))

8-bit: dequantize (code[c] * absmax) -> update -> requantize in registers, a program (one warp) owning whole
quantization blocks, a (BLOCKS, 256) tile, because the requantization needs each block's new absmax. Equal to
the reference bit for bit (tests/kernels/test_adamw.py), with no search loop and no per-element divide where a
per-block or per-launch reciprocal gives the same bits:
- nearest code: `_code_index`, quant's CPU bit-pattern table laid out for a GPU (`CodeSearch`): one 4-byte
  entry a bin of 2**shift fp32 patterns, so an index is one gather and a few integer operations;
- x / absmax (per block) and sqrt(v) / sqrt(1 - beta2**t) (per launch): `_div_by`, a multiply by the correctly
  rounded reciprocal and two FMA corrections, the correctly rounded quotient (Markstein);
- m / denom (a divisor per element) stays the correctly rounded divide, and sqrt the correctly rounded sqrt.
On a GPU torch's reference differs a little (it divides by a Python scalar as a multiply by its reciprocal), so
the GPU tests allow an ulp and a code.

`paged_adamw(params, fused=None, ...)` builds `quant.optim.PagedAdamW` with `TritonAdamWUpdate` when fused
(default: the parameters are on a CUDA device and the kernels are compiled for it, i.e. not the interpreter)
and with the torch reference otherwise; quant/ itself never imports kernels/.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import triton
import triton.language as tl

from kernels.device import DEVICE
from kernels.launch import Launch, Workload
from kernels.weight import DTYPE_NAMES
from quant.codebooks import SIGNED_DYNAMIC, UNSIGNED_DYNAMIC, on_device, sorted_with_order
from quant.optim import AdamWHyper, Blockwise8State, PagedAdamW
from quant.optim.states import OPTIM_BLOCKSIZE, adamw_8bit_ref, adamw_fp32_ref, state_bytes

__all__ = [
    "CodeSearch",
    "TritonAdamWUpdate",
    "adamw_8bit",
    "adamw_8bit_ref",
    "adamw_fp32",
    "adamw_fp32_ref",
    "audit_workloads",
    "code_search",
    "paged_adamw",
    "plan_8bit",
    "plan_fp32",
]

FP32_BLOCK = 1024  # elements a program updates with fp32 states
BLOCKS_CHOICES = (1, 2)  # quantization blocks a program (one warp) owns with 8-bit states
ADAMW_FLOPS = 12  # per parameter (suites.metrics.ADAMW_OPS): m 3, v 4, bias-corrected step 4, decay 1


# ---------------------------------------------------------------------------------------------------
# The nearest-code table
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CodeSearch:
    """The nearest-code table of one sorted 256-value map, as `_code_index` reads it.

    A bin is a run of 2**shift fp32 patterns in monotone-key order (key = bits, a negative value's magnitude
    bits flipped), narrow enough to hold at most one decision threshold; the table has an entry for every bin
    of the 2**32 patterns (NaN and values past +-1 included, so no index is ever clamped), except that the
    threshold-free bins dlo .. dhi around 0 share one. entry = base << (shift + 1) | (2**(shift+1) - 1 - t_low):
    base is the sorted index of the bin's first pattern, t_low the key bits of the bin's threshold below the
    bin (2**shift when it has none), so (entry + (key & (2**shift - 1))) >> (shift + 1) = base + (key > t's
    key) = #{thresholds < x}. table: (bins,) int32 on the map's device.
    """

    table: torch.Tensor
    shift: int
    dlo: int
    dhi: int
    signed: bool  # some thresholds are negative

    def to(self, device: torch.device | str) -> CodeSearch:
        return CodeSearch(self.table.to(device), self.shift, self.dlo, self.dhi, self.signed)

    def args(self, prefix: str) -> dict[str, Any]:
        """The kernel arguments of this table: `{prefix}_table_ptr`, ..., `{PREFIX}_SIGNED`."""
        names = ("table_ptr", "shift", "dlo", "dhi")
        args = dict(zip((f"{prefix}_{k}" for k in names), (self.table, self.shift, self.dlo, self.dhi), strict=True))
        return {**args, f"{prefix.upper()}_SIGNED": self.signed}


def _keys(x: np.ndarray) -> np.ndarray:
    """Monotone int64 keys of fp32 values (as quant.blockwise's table): bits, a negative's magnitude flipped."""
    bits = x.astype(np.float32).view(np.int32).astype(np.int64)
    return np.where(bits < 0, bits ^ 0x7FFFFFFF, bits)


_SMALLEST_THRESHOLD = 2.0**-32  # the normalization is exact only for quotients above 2**-40 (see _div_by)


def code_search(code: torch.Tensor) -> CodeSearch:
    """The `CodeSearch` of a sorted map (quant.codebooks' dynamic maps, or any such), on code's device.

    code: (256,) fp32, strictly increasing, its midpoints within [-1, 1], none nearer to 0 than 2**-32, and
    none in the bin of 1.0 (then NaN codes as in quant's CPU table). Reads the values on the host: build it
    once per map and reuse it.

    Raises:
        ValueError: a code that is not such a map.
    """
    if code.shape != (256,) or code.dtype != torch.float32:
        raise ValueError(f"code: {tuple(code.shape)} {code.dtype}; expected (256,) fp32")
    values = code.detach().cpu()
    if not bool((values[1:] > values[:-1]).all()):
        raise ValueError("code: not strictly increasing; expected a sorted map of 256 distinct values")
    thresholds = sorted_with_order(values)[0].numpy()  # the fp32 midpoints quant.blockwise compares with
    if np.abs(thresholds).max() > 1.0 or np.abs(thresholds).min() < _SMALLEST_THRESHOLD:
        raise ValueError(f"code: midpoints in [{thresholds.min()}, {thresholds.max()}] or too near 0; expected"
                         f" them within [-1, 1] and none nearer to 0 than {_SMALLEST_THRESHOLD}")  # fmt: skip
    keys = _keys(thresholds)
    shift = next((s for s in range(20, 8, -1) if ((keys[1:] >> s) > (keys[:-1] >> s)).all()), None)
    if shift is None:
        raise ValueError("code: midpoints closer than 2**9 fp32 patterns; expected a table-searchable map")
    bins = keys >> shift
    if bins[-1] == int(_keys(np.array([1.0]))[0]) >> shift:
        raise ValueError("code: a midpoint in the bin of 1.0; expected none so near 1")
    lo, hi = -(1 << (31 - shift)), (1 << (31 - shift)) - 1  # every int32 key >> shift
    below, above = bins[bins < 0], bins[bins >= 0]  # the threshold-free run between them shares one entry
    dlo = int(below.max()) + 1 if len(below) else lo
    dhi = int(above.min()) - 1 if len(above) else hi
    if dlo > dhi:
        dlo = dhi = 0  # no empty run: every bin keeps its entry
    kb = np.arange(lo, hi + 1, dtype=np.int64)
    kb = kb[(kb <= dlo) | (kb > dhi)]  # the bins in table order: one for the whole run dlo .. dhi
    base = np.searchsorted(keys, kb << shift)  # thresholds below each bin's first pattern
    has = (base < len(keys)) & (bins[np.minimum(base, len(keys) - 1)] == kb)
    t_low = np.where(has, keys[np.minimum(base, len(keys) - 1)] & ((1 << shift) - 1), 1 << shift)
    entries = (base << (shift + 1)) | ((1 << (shift + 1)) - 1 - t_low)
    table = torch.from_numpy(entries.astype(np.int32)).to(code.device)
    return CodeSearch(table, shift, dlo, dhi, bool(len(below)))


DYNAMIC_SEARCH = (code_search(SIGNED_DYNAMIC), code_search(UNSIGNED_DYNAMIC))  # built once, on the CPU


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
def _div_by(x, d, r, INF_X: tl.constexpr = False):
    """x / d correctly rounded, given r = RN(1/d): q = RN(x * r), then twice q = RN(q + RN(x - d*q) * r) (FMAs).

    RN(x * r) is within 1.5 ulps of x/d; the first correction makes q faithful, the second rounds it correctly:
    with r within half an ulp of 1/d and q faithful, x - d*q is exact and RN(q + (x - d*q) * r) = RN(x/d)
    (Markstein's theorem; Muller et al., Handbook of Floating-Point Arithmetic), nothing underflowing. Callers
    keep d in [2**-49, 2**64] and use quotients above 2**-40 (smaller ones stay below 2**-39, in every map's
    zero code), or keep d in [2**-27, 1] and x in {0} U [2**-75, 2**64]. INF_X: x may be inf (x - d*q is then
    NaN, made inf, so that the quotient is inf as x / d).
    """
    q = x * r
    e = tl.math.fma(-d, q, x)
    if INF_X:
        e = tl.minimum(e, float("inf"))  # minnum: NaN -> inf, anything else unchanged
    q = tl.math.fma(e, r, q)
    e = tl.math.fma(-d, q, x)
    if INF_X:
        e = tl.minimum(e, float("inf"))
    return tl.math.fma(e, r, q)


@triton.jit
def _row_divisor(absmax):
    """(scale, divisor, 1/divisor) per block: x / absmax = (x * scale) / divisor, with divisor in [2**-49, 2**64]
    (absmax < 2**-40 is scaled by 2**100, > 2**60 by 2**-64; both exact), 1.0 for absmax 0 (x is 0) and inf
    (scale 0: x / inf is 0, NaN for x = inf, as x * 0). A NaN absmax stays NaN."""
    scale = tl.where(absmax < 2.0**-40, 2.0**100, tl.where(absmax > 2.0**60, 2.0**-64, 1.0))
    inf = absmax == float("inf")
    scale = tl.where(inf, 0.0, scale)
    divisor = tl.where(inf | (absmax == 0.0), 1.0, absmax * scale)
    return scale, divisor, tl.math.div_rn(tl.full(divisor.shape, 1.0, tl.float32), divisor)


@triton.jit
def _code_index(x, table_ptr, shift, dlo, dhi, SIGNED: tl.constexpr):
    """Sorted index of the nearest map value to each x (fp32): #{thresholds < x}, from the `CodeSearch` table.

    +NaN codes as above every threshold, -NaN as below (quant.blockwise's bit-pattern table does the same).
    SIGNED: the map has negative thresholds; without, a negative x (all in the shared run) needs no key."""
    key = x.to(tl.int32, bitcast=True)
    if SIGNED:
        key = key ^ ((key >> 31) & 0x7FFFFFFF)  # monotone: a < b exactly when key(a) < key(b) (no 0 threshold)
    kb = key >> shift
    kb = (kb - tl.minimum(tl.maximum(kb, dlo), dhi) + (dlo + (1 << (31 - shift)))).to(tl.uint32)  # run -> 1 bin
    entry = tl.load(table_ptr + kb)
    return (entry + (key & ((1 << shift) - 1))) >> (shift + 1)


@triton.jit
def _absmax(x):
    """max |x| of each row, NaN if any is (as torch's amax)."""
    return tl.reduce(tl.abs(x), 1, _max_nan)


@triton.jit
def _max_nan(a, b):
    return tl.maximum(a, b, propagate_nan=tl.PropagateNan.ALL)


@triton.jit
def _requantize(x, absmax, table_ptr, shift, dlo, dhi, SIGNED: tl.constexpr):
    """Codes (BLOCKS, BLOCKSIZE) int32 of an fp32 tile given each row's absmax: the nearest of x / absmax."""
    scale, divisor, inv = _row_divisor(absmax)
    normed = _div_by(x * scale[:, None], divisor[:, None], inv[:, None])
    return _code_index(normed, table_ptr, shift, dlo, dhi, SIGNED)


@triton.jit
def _adamw_8bit_kernel(
    # parameter, gradient (N,) in the parameter dtype; p updated in place
    p_ptr, g_ptr,
    # first moment: codes (N,) uint8, absmax (n_blocks,) fp32, signed map (256,) fp32, its CodeSearch
    m_ptr, m_absmax_ptr, m_code_ptr, m_table_ptr, m_shift, m_dlo, m_dhi,
    # second moment, likewise (the unsigned map)
    v_ptr, v_absmax_ptr, v_code_ptr, v_table_ptr, v_shift, v_dlo, v_dhi,
    # sizes: elements, and the first block and the block count of this launch
    N, row0, n_rows,
    # hyper-parameters, fp32 (quant.optim.states.AdamWHyper); inv_sqrt_correction2 = RN(1 / sqrt_correction2)
    beta1, one_minus_beta1, beta2, one_minus_beta2, eps, step_size, sqrt_correction2, inv_sqrt_correction2, decay,
    M_SIGNED: tl.constexpr, V_SIGNED: tl.constexpr, BLOCKSIZE: tl.constexpr, BLOCKS: tl.constexpr,
    RAGGED: tl.constexpr,
):  # fmt: skip
    """AdamW on blockwise 8-bit states: a program owns BLOCKS whole quantization blocks (BLOCKS, BLOCKSIZE).

    RAGGED: mask each element by N (the short last block); else whole blocks, masked by row (vector accesses)."""
    rows = row0 + tl.program_id(0).to(tl.int64) * BLOCKS + tl.arange(0, BLOCKS)  # quantization block indices
    offs = rows[:, None] * BLOCKSIZE + tl.arange(0, BLOCKSIZE)[None, :]  # (BLOCKS, BLOCKSIZE) int64
    row_mask = rows < row0 + n_rows
    mask = offs < N if RAGGED else row_mask[:, None]
    p = tl.load(p_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    # dequantize: code[c] * absmax[block]
    m_codes = tl.load(m_ptr + offs, mask=mask, other=0).to(tl.uint32)
    v_codes = tl.load(v_ptr + offs, mask=mask, other=0).to(tl.uint32)
    m = tl.load(m_code_ptr + m_codes) * tl.load(m_absmax_ptr + rows, mask=row_mask, other=0.0)[:, None]
    v = tl.load(v_code_ptr + v_codes) * tl.load(v_absmax_ptr + rows, mask=row_mask, other=0.0)[:, None]
    # update in fp32
    m = m * beta1 + g * one_minus_beta1
    v = v * beta2 + g * g * one_minus_beta2
    root = tl.sqrt_rn(v)
    # root / sqrt_correction2: root is 0 or in [2**-75, 2**64], the divisor in (0, 1]; an inf root stays inf
    denom = _div_by(root, sqrt_correction2, inv_sqrt_correction2, INF_X=True) + eps
    p = p * decay
    p = p - step_size * tl.math.div_rn(m, denom)
    tl.store(p_ptr + offs, p.to(p_ptr.dtype.element_ty), mask=mask)
    # requantize with each block's new absmax (a short block's padding is 0: no effect)
    if RAGGED:
        m = tl.where(mask, m, 0.0)
        v = tl.where(mask, v, 0.0)
    m_absmax = _absmax(m)
    v_absmax = _absmax(v)
    m_new = _requantize(m, m_absmax, m_table_ptr, m_shift, m_dlo, m_dhi, M_SIGNED)
    v_new = _requantize(v, v_absmax, v_table_ptr, v_shift, v_dlo, v_dhi, V_SIGNED)
    tl.store(m_ptr + offs, m_new.to(tl.uint8), mask=mask)
    tl.store(v_ptr + offs, v_new.to(tl.uint8), mask=mask)
    tl.store(m_absmax_ptr + rows, m_absmax, mask=row_mask)
    tl.store(v_absmax_ptr + rows, v_absmax, mask=row_mask)


# ---------------------------------------------------------------------------------------------------
# Plans and launchers
# ---------------------------------------------------------------------------------------------------


def _scalars(hp: AdamWHyper) -> dict[str, float]:
    names = ("beta1", "one_minus_beta1", "beta2", "one_minus_beta2", "eps", "step_size", "sqrt_correction2", "decay")
    return {name: getattr(hp, name) for name in names}


_OPTIONS = {"enable_fp_fusion": False}  # every product and sum rounds on its own, as in torch


def plan_fp32(
    p: torch.Tensor, grad: torch.Tensor, exp_avg: torch.Tensor, exp_avg_sq: torch.Tensor, hp: AdamWHyper
) -> Launch:
    """The launch of `adamw_fp32` (inputs trusted: the launcher checks them; meta tensors plan for the audit)."""
    n = p.numel()
    args = {"p_ptr": p, "g_ptr": grad, "m_ptr": exp_avg, "v_ptr": exp_avg_sq, "N": n, **_scalars(hp)}
    return Launch(
        _adamw_fp32_kernel, (triton.cdiv(n, FP32_BLOCK),), {**args, "BLOCK": FP32_BLOCK}, num_warps=4,
        options=_OPTIONS, name=f"B{FP32_BLOCK}-w4", elements=FP32_BLOCK,
    )  # fmt: skip


def pick_blocks(n: int, blocksize: int = OPTIM_BLOCKSIZE) -> int:
    """Quantization blocks a program owns: 1 up to 8192 blocks (more programs for small tensors), else 2 (fewer
    instructions an element: the per-block work is shared by 16 elements a thread instead of 8)."""
    return 1 if triton.cdiv(n, blocksize) <= 8192 else 2


_WARPS = 1  # a program is one warp: a block's absmax is a warp reduction, with no shared memory or barrier


def plan_8bit(
    p: torch.Tensor,
    grad: torch.Tensor,
    m: Blockwise8State,
    v: Blockwise8State,
    hp: AdamWHyper,
    searches: tuple[CodeSearch, CodeSearch],
    blocks_per_program: int | None = None,
) -> tuple[Launch, ...]:
    """The launches of `adamw_8bit`: the whole blocks (BLOCKS a program, masked by block), then a short last
    block on its own (masked by element), if any. Inputs trusted; meta tensors plan for the audit."""
    n, bs = p.numel(), m.blocksize
    blocks = pick_blocks(n, bs) if blocks_per_program is None else blocks_per_program
    c2 = np.float32(hp.sqrt_correction2)
    common = {
        "p_ptr": p, "g_ptr": grad,
        "m_ptr": m.codes, "m_absmax_ptr": m.absmax, "m_code_ptr": m.code, **searches[0].args("m"),
        "v_ptr": v.codes, "v_absmax_ptr": v.absmax, "v_code_ptr": v.code, **searches[1].args("v"),
        "N": n, **_scalars(hp), "inv_sqrt_correction2": float(np.float32(1.0) / c2), "BLOCKSIZE": bs,
    }  # fmt: skip
    full, tail = divmod(n, bs)
    per_element = 3 * p.element_size() + 4 + 8 / bs  # p read and written, grad read, two codes r/w, two absmax r/w
    launches = []
    for row0, rows, per_program, ragged in ((0, full, blocks, False), (full, int(tail > 0), 1, True)):
        if rows:
            launches.append(
                Launch(
                    _adamw_8bit_kernel, (triton.cdiv(rows, per_program),),
                    {**common, "row0": row0, "n_rows": rows, "BLOCKS": per_program, "RAGGED": ragged},
                    num_warps=_WARPS, options=_OPTIONS, elements=per_program * bs,
                    name=f"BS{bs}-BLOCKS{per_program}-w{_WARPS}" + ("-ragged" if ragged else ""),
                    bytes=int(per_element * (tail if ragged else full * bs)) + 2 * 4 * 256,  # + the code tables
                )
            )  # fmt: skip
    return tuple(launches)


def _check_param(p: torch.Tensor, grad: torch.Tensor) -> None:
    if p.dtype not in DTYPE_NAMES:
        raise ValueError(f"p: dtype {p.dtype}; expected fp32|fp16|bf16")
    if grad.shape != p.shape or grad.device != p.device:
        raise ValueError(f"grad: shape {tuple(grad.shape)} on {grad.device}; expected {tuple(p.shape)} on {p.device}")
    if grad.dtype not in DTYPE_NAMES:
        raise ValueError(f"grad: dtype {grad.dtype}; expected fp32|fp16|bf16")
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
    plan_fp32(p, grad, exp_avg, exp_avg_sq, hp).run()


def search_for(code: torch.Tensor) -> CodeSearch:
    """The `CodeSearch` of a map on its device: quant's dynamic maps' prebuilt tables (copied to the device),
    any other map's built from its values (a host round trip)."""
    for base, search in zip((SIGNED_DYNAMIC, UNSIGNED_DYNAMIC), DYNAMIC_SEARCH, strict=True):
        if code is on_device(base, code.device) or (code.is_cpu and torch.equal(code, base)):
            return search.to(code.device)
    return code_search(code)


def adamw_8bit(
    p: torch.Tensor,
    grad: torch.Tensor,
    m: Blockwise8State,
    v: Blockwise8State,
    hp: AdamWHyper,
    blocks_per_program: int | None = None,
    searches: tuple[CodeSearch, CodeSearch] | None = None,
) -> None:
    """Fused AdamW with blockwise 8-bit states, in place (as `adamw_8bit_ref`, bit for bit).

    p, grad: any shape, fp32|fp16|bf16, contiguous; m, v: codes p's shape uint8, absmax (ceil(n/blocksize),)
    fp32, code (256,) fp32 strictly increasing (quant.codebooks.dynamic_map); blocksize 256 (or another power of
    2 >= 16). blocks_per_program: 1 or 2 (default `pick_blocks`). searches: the `CodeSearch` of m.code and of
    v.code (default `search_for` each, a table copy to the device per call: pass them to skip it).

    Raises:
        ValueError: mismatched shapes, dtypes or devices, a blocksize that is not a power of 2, a bad
            blocks_per_program, a map that `code_search` rejects, or hp.sqrt_correction2 outside [2**-27, 1]
            (beta2 outside [0, 1) or t < 1).
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
    if blocks_per_program not in (None, *BLOCKS_CHOICES):
        raise ValueError(f"blocks_per_program: {blocks_per_program!r}; expected one of {BLOCKS_CHOICES}")
    if not 2.0**-27 <= hp.sqrt_correction2 <= 1.0:
        raise ValueError(f"hp: sqrt(1 - beta2**t) = {hp.sqrt_correction2!r} (beta2 {hp.beta2!r}, t {hp.t!r});"
                         " expected beta2 in [0, 1) and t >= 1")  # fmt: skip
    if searches is None:
        searches = (search_for(m.code), search_for(v.code))
    for name, search in zip(("m", "v"), searches, strict=True):
        if search.table.device != p.device:
            raise ValueError(f"searches: {name}'s table on {search.table.device}; expected {p.device}")
    for launch in plan_8bit(p, grad, m, v, hp, searches, blocks_per_program):
        launch.run()


class TritonAdamWUpdate:
    """The fused `quant.optim.AdamWUpdate`: the launchers above, with each map's `CodeSearch` built once (kept
    for the maps this optimizer's states use: the dynamic maps' one copy per device)."""

    def __init__(self) -> None:
        self._searches: dict[int, tuple[torch.Tensor, CodeSearch]] = {}

    def fp32(
        self, p: torch.Tensor, grad: torch.Tensor, exp_avg: torch.Tensor, exp_avg_sq: torch.Tensor, hp: AdamWHyper
    ) -> None:
        _contiguous_call(adamw_fp32, p, grad, exp_avg, exp_avg_sq, hp)

    def blockwise8(
        self, p: torch.Tensor, grad: torch.Tensor, m: Blockwise8State, v: Blockwise8State, hp: AdamWHyper
    ) -> None:
        searches = (self._search(m.code), self._search(v.code))
        _contiguous_call(adamw_8bit, p, grad, m, v, hp, None, searches)

    def _search(self, code: torch.Tensor) -> CodeSearch:
        held = self._searches.get(id(code))
        if held is None or held[0] is not code:  # keyed by the tensor itself (held, so its id stays its own)
            held = self._searches[id(code)] = (code, search_for(code))
        return held[1]


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


# ---------------------------------------------------------------------------------------------------
# Audit
# ---------------------------------------------------------------------------------------------------

# (label, tensors, shape of each, parameter dtype): the suite's LoRA adapter sets (128 flat tensors, as
# suites/bench_optim.py), one large flat tensor with a short last block, and a full 4096 x 4096 weight.
_AUDIT_SETS: tuple[tuple[str, int, tuple[int, ...], torch.dtype], ...] = (
    ("lora-r8.llama2-7b", 128, (32768,), torch.float32),
    ("lora-r16.llama2-7b", 128, (65536,), torch.float32),
    ("param-16.7M", 1, (16_700_001,), torch.float32),
    ("param-4096x4096", 1, (4096, 4096), torch.float32),
    ("param-4096x4096.bf16", 1, (4096, 4096), torch.bfloat16),
)
_AUDIT_HP = AdamWHyper(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.01, t=10)


def _meta_plans(shape: tuple[int, ...], dtype: torch.dtype, bits: int, blocks: int | None = None) -> tuple[Launch, ...]:
    """The launches one update of a `shape` parameter plans, on meta tensors."""
    p = torch.empty(shape, dtype=dtype, device="meta")
    n = p.numel()
    if bits == 32:
        state = torch.empty(shape, dtype=torch.float32, device="meta")
        return (plan_fp32(p, p, state, state, _AUDIT_HP),)
    codes, code = torch.empty(shape, dtype=torch.uint8, device="meta"), torch.empty(256, device="meta")
    m = Blockwise8State(codes, torch.empty(triton.cdiv(n, OPTIM_BLOCKSIZE), device="meta"), code)
    return plan_8bit(p, p, m, m, _AUDIT_HP, (DYNAMIC_SEARCH[0].to("meta"), DYNAMIC_SEARCH[1].to("meta")), blocks)


def audit_workloads() -> list[Workload]:
    """kernels.audit's workloads: one AdamW step over each parameter set of _AUDIT_SETS, with 8-bit and with
    fp32 states, planned by the launchers' own functions on meta tensors.

    m: tensors, n: elements each; bytes: what the step must move in device memory (p read and written, grad
    read, the states read and written, absmax included: `quant.optim.state_bytes`); flops: ADAMW_FLOPS each.
    """
    workloads = []
    for label, tensors, shape, dtype in _AUDIT_SETS:
        n = math.prod(shape)
        for bits in (8, 32):
            per_tensor = 3 * dtype.itemsize * n + 2 * state_bytes(n, bits, min_8bit_size=0)
            workloads.append(
                Workload(
                    "adamw", label, f"adamw{bits}", tensors, n, 0, tensors * per_tensor, tensors * n * ADAMW_FLOPS,
                    _meta_plans(shape, dtype, bits) * tensors,
                )
            )  # fmt: skip
    return workloads
