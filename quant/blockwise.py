"""Blockwise absmax quantization: 4-bit (NF4, FP4) with bitsandbytes' packing, and dynamic 8-bit.

Every function here is plain torch and the executable spec of its format; kernels/ is tested against it.
Inputs are trusted (checked by `quant.quantize`); a flat element order (row-major, `reshape(-1)`) is
split into blocks of `blocksize`, the last block possibly short.

4-bit (QLoRA; bitsandbytes `quantize_4bit`):
    absmax_b = max |x| over block b; a partial last block stores max(absmax_b, 1e-38) as bitsandbytes does
               (its CPU quantizer clamps that one block only; whole blocks keep a zero or subnormal absmax)
    code_i   = nearest codebook value to x_i * (1 / absmax_b)   (ties go to the lower value)
    packed   = code_{2j} << 4 | code_{2j+1}                       (first element in the high nibble;
                                                                  an odd count pads a code for 0.0)
8-bit dynamic (bitsandbytes `quantize_blockwise`, used for double quantization and optimizer states):
    code_i   = nearest of 256 values to x_i / absmax_b            (ties go to the lower value)
    bitsandbytes' CPU build misses the nearest value for ~0.15% of inputs (its table search, not rounding:
    tests/quant/test_bnb_conformance.py shows cases 40x nearer to our pick); its CUDA kernel does not.
Double quantization (QLoRA §3): the fp32 absmax vector minus its mean is 8-bit quantized in blocks of 256; a
block of 256 that is all zero codes 0 as in bitsandbytes. Where a block's absmax is subnormal below 2^-128,
bitsandbytes' x * (1/absmax) overflows and keeps only the sign; ours keeps the ratio
(tests/quant/test_bnb_edge_blocks.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from quant.codebooks import FP4, NF4, SIGNED_DYNAMIC, dynamic_map, on_device, sorted_with_order

__all__ = [
    "DoubleQuantState",
    "block_chunks",
    "dequantize_4bit",
    "dequantize_8bit",
    "double_dequantize",
    "double_quantize",
    "quantize_4bit",
    "quantize_8bit",
]

DOUBLE_QUANT_BLOCKSIZE = 256
TAIL_ABSMAX_MIN = 1e-38  # bitsandbytes' floor for a partial last block's absmax (fp32: 9.99999935e-39, subnormal)
_CHUNK = 1 << 20  # elements per chunk on the CPU fast paths: keeps temporaries in L2
_TABLE_MIN = 1 << 16  # below this, building the 8-bit table costs more than bucketize


def block_chunks(n: int, blocksize: int, chunk: int = _CHUNK) -> Iterator[tuple[slice, slice]]:
    """(elements, blocks) slices covering n elements in chunks of about `chunk` elements, whole blocks each (the
    last may end in a short block). Blocks are independent, so blockwise work done chunk by chunk equals the
    work on the whole tensor, bit for bit, with its temporaries in cache."""
    step = max(chunk - chunk % blocksize, blocksize)
    for start in range(0, n, step):
        stop = min(n, start + step)
        yield slice(start, stop), slice(start // blocksize, -(-stop // blocksize))


@dataclass(frozen=True)
class DoubleQuantState:
    """The absmax vector, 8-bit quantized: absmax ≈ code[data] * absmax2[block] + offset."""

    data: torch.Tensor  # (n_absmax,) uint8
    absmax: torch.Tensor  # (ceil(n_absmax / blocksize),) fp32
    offset: float
    code: torch.Tensor  # (256,) fp32, the signed dynamic map
    blocksize: int = DOUBLE_QUANT_BLOCKSIZE

    @property
    def nbytes(self) -> int:
        # the code table is shared by every tensor of a format, as in bitsandbytes; offset is one fp32
        return self.data.numel() + self.absmax.numel() * 4 + 4


def _block_absmax(flat: torch.Tensor, blocksize: int) -> torch.Tensor:
    """(ceil(n / blocksize),) fp32 absmax of each block of a flat fp32 tensor."""
    n = flat.numel()
    full = n - n % blocksize
    absmax = flat[:full].view(-1, blocksize).abs().amax(dim=1)
    if full < n:
        absmax = torch.cat([absmax, flat[full:].abs().amax().view(1)])
    return absmax


class _ThresholdTable:
    """Exact nearest-value lookup for a small sorted codebook, faster than a binary search per element.

    [-1, 1] is cut into 2**12 equal bins, narrower than any gap between decision thresholds, so a bin
    (widened by a margin that covers the rounding of the bin index) holds at most one threshold t:
    the sorted index of x is base[bin] + (x > t[bin]). This is `bucketize(x, thresholds)` exactly.
    """

    BINS = 1 << 12

    def __init__(self, thresholds: torch.Tensor) -> None:
        bins = self.BINS
        edges = torch.arange(bins + 1, dtype=torch.float64) * (2.0 / bins) - 1.0
        margin = 1e-3 / bins
        lo, hi = edges[:-1] - margin, edges[1:] + margin
        t = thresholds.to(torch.float64)
        inside = (t.view(1, -1) >= lo.view(-1, 1)) & (t.view(1, -1) <= hi.view(-1, 1))
        if int(inside.sum(dim=1).max()) > 1:
            raise AssertionError("codebook thresholds closer than one bin; raise BINS")
        self.base = (t.view(1, -1) < lo.view(-1, 1)).sum(dim=1).to(torch.uint8)
        threshold = torch.full((bins,), float("inf"), dtype=torch.float64)
        has = inside.any(dim=1)
        threshold[has] = t[inside.to(torch.int64).argmax(dim=1)[has]]
        self.threshold = threshold.to(torch.float32)
        # fp32 thresholds must order exactly as the originals: they are the originals (fp32 midpoints)

    def lookup(self, scaled: torch.Tensor) -> torch.Tensor:
        """Sorted codebook index (uint8) of each value of `scaled` (fp32, within [-1, 1])."""
        b = ((scaled + 1.0) * (self.BINS / 2)).to(torch.int32).clamp_(0, self.BINS - 1)
        idx = self.base.index_select(0, b)
        idx += (scaled > self.threshold.index_select(0, b)).view(torch.uint8)
        return idx


def _bits_keys(x: torch.Tensor) -> torch.Tensor:
    """Monotone int32 keys of fp32 values: a < b exactly when key(a) < key(b) (-0.0 sorts just below +0.0).

    A negative value's 31 magnitude bits are flipped (bits ^ 0x7FFFFFFF, its sign bit kept), in place on a
    fresh tensor: three integer passes (a torch.where costs ~10x as much on the CPU).
    """
    bits = x.contiguous().view(torch.int32)
    keys = bits >> 31  # -1 for a negative value, else 0
    keys &= 0x7FFFFFFF
    keys ^= bits
    return keys


class _BitsTable:
    """Exact nearest-value lookup for a sorted codebook whose thresholds crowd towards zero (the dynamic 8-bit
    maps: 1e-7 apart there, 1e-2 near 1), which equal-width bins cannot separate.

    A bin is a run of 2**shift consecutive fp32 bit patterns (monotone keys), so its width is relative to the
    value; `shift` is the largest that leaves at most one threshold t in a bin, and the sorted index of x is
    base[bin] + (x > t[bin]): `bucketize(x, thresholds)` exactly, with integer bin arithmetic (no rounding).
    """

    def __init__(self, thresholds: torch.Tensor) -> None:
        t = thresholds.to(torch.float32).cpu()
        keys = _bits_keys(t).to(torch.int64)
        for shift in range(20, 8, -1):
            if bool(((keys[1:] >> shift) > (keys[:-1] >> shift)).all()):
                break
        else:
            raise AssertionError("codebook thresholds too close for a bit-pattern table")
        self.shift = shift
        self.first = int(_bits_keys(torch.tensor([-1.0]))) >> shift  # the bin of -1.0 (floor shift, as torch's)
        bins = torch.arange(self.first, (int(_bits_keys(torch.tensor([1.0]))) >> shift) + 1, dtype=torch.int64)
        below = torch.searchsorted(keys, bins << shift)  # thresholds below each bin's first pattern
        inside = torch.zeros_like(bins, dtype=torch.bool)
        some = below < len(t)
        inside[some] = (keys[below[some]] >> shift) == bins[some]
        self.base = below.to(torch.uint8)
        self.threshold = torch.full((len(bins),), float("inf"))
        self.threshold[inside] = t[below[inside]]

    def lookup(self, scaled: torch.Tensor) -> torch.Tensor:
        """Sorted codebook index (uint8) of each value of `scaled` (fp32, within [-1, 1])."""
        b = _bits_keys(scaled)
        b >>= self.shift
        b -= self.first
        b.clamp_(0, len(self.threshold) - 1)
        idx = self.base.index_select(0, b)
        idx += (scaled > self.threshold.index_select(0, b)).view(torch.uint8)
        return idx


@dataclass(frozen=True)
class _Codebook4:
    code: torch.Tensor  # (16,) fp32, indexed by code
    thresholds: torch.Tensor  # (15,) fp32 midpoints between sorted values
    order: torch.Tensor  # (16,) sorted index -> code
    table: _ThresholdTable
    identity: bool  # the code is already sorted (NF4): skip the reorder

    @classmethod
    def of(cls, code: torch.Tensor) -> _Codebook4:
        thresholds, order = sorted_with_order(code)
        identity = bool(torch.equal(order, torch.arange(16)))
        return cls(code, thresholds, order.to(torch.uint8), _ThresholdTable(thresholds), identity)

    def zero_code(self) -> int:
        """The code of 0.0, which pads an odd element count."""
        return int(self.order[int(torch.bucketize(torch.zeros(()), self.thresholds))])


CODEBOOKS_4BIT: dict[str, _Codebook4] = {"nf4": _Codebook4.of(NF4), "fp4": _Codebook4.of(FP4)}


def quantize_4bit(x: torch.Tensor, fmt: str, blocksize: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Blockwise 4-bit quantization.

    x: any shape, fp32|fp16|bf16 (any strides); fmt: "nf4" | "fp4".
    Returns (packed (ceil(n/2),) uint8, absmax (ceil(n/blocksize),) fp32).
    """
    book = CODEBOOKS_4BIT[fmt]
    flat = x.reshape(-1)
    if flat.is_cpu and flat.numel():
        return _quantize_4bit_cpu(flat, book, blocksize)
    return _quantize_4bit_generic(flat, book, blocksize)


def _quantize_4bit_generic(flat: torch.Tensor, book: _Codebook4, blocksize: int) -> tuple[torch.Tensor, torch.Tensor]:
    """quantize_4bit by bucketize on the midpoints: the readable form of the rule (any device)."""
    flat = flat.to(dtype=torch.float32)
    absmax = _tail_floor(_block_absmax(flat, blocksize), flat.numel(), blocksize)
    if flat.numel() == 0:
        return torch.empty(0, dtype=torch.uint8, device=flat.device), absmax
    sorted_idx = torch.bucketize(_scale(flat, absmax, blocksize), book.thresholds.to(flat.device))
    return _pack(book.order.to(flat.device)[sorted_idx], book), absmax


def _pack(codes: torch.Tensor, book: _Codebook4) -> torch.Tensor:
    """Two codes a byte, the first in the high nibble; an odd count is padded with the code of 0.0."""
    if codes.numel() % 2:
        codes = torch.cat([codes, codes.new_full((1,), book.zero_code())])
    return (codes[0::2] << 4) | codes[1::2]


def _quantize_4bit_cpu(flat: torch.Tensor, book: _Codebook4, blocksize: int) -> tuple[torch.Tensor, torch.Tensor]:
    """quantize_4bit on the CPU, one L2-sized chunk of whole blocks at a time (an even element count, so that
    chunks pack independently): its fp32 copy, absmax, scaled values and codes stay in cache, and codes are
    found by the threshold table instead of a binary search."""
    n = flat.numel()
    packed = torch.empty((n + 1) // 2, dtype=torch.uint8)
    absmax = torch.empty(-(-n // blocksize), dtype=torch.float32)
    for part, blocks in block_chunks(n, blocksize):  # blocksize >= 32: every chunk starts at an even element
        values = flat[part].to(torch.float32)
        absmax[blocks] = _tail_floor(_block_absmax(values, blocksize), part.stop, blocksize)
        codes = book.table.lookup(_scale(values, absmax[blocks], blocksize))
        if not book.identity:
            codes = book.order.index_select(0, codes.to(torch.int32))
        packed[part.start // 2 : (part.stop + 1) // 2] = _pack(codes, book)
    return packed, absmax


def _tail_floor(absmax: torch.Tensor, n: int, blocksize: int) -> torch.Tensor:
    """absmax with a partial last block's entry raised to TAIL_ABSMAX_MIN, in place: bitsandbytes 0.50's 4-bit
    quantizer stores `abs().max().clamp(min=1e-38)` for that block (its whole blocks are not clamped). Its codes
    are unchanged (they divide by the clamped value either way); it decodes to code * 1e-38, and the double-quant
    offset is the mean of the clamped vector."""
    if n % blocksize:
        absmax[-1:].clamp_(min=TAIL_ABSMAX_MIN)
    return absmax


def _scale(flat: torch.Tensor, absmax: torch.Tensor, blocksize: int) -> torch.Tensor:
    """x * (1 / absmax) per full block; the short tail block divides (as bitsandbytes does)."""
    n = flat.numel()
    full = n - n % blocksize
    inv = 1.0 / absmax[: full // blocksize].clamp(min=1e-38)
    scaled = (flat[:full].view(-1, blocksize) * inv.view(-1, 1)).view(-1)
    if full < n:
        scaled = torch.cat([scaled, flat[full:] / absmax[-1].clamp(min=1e-38)])
    return scaled


def dequantize_4bit(
    packed: torch.Tensor, absmax: torch.Tensor, code: torch.Tensor, blocksize: int, n: int, dtype: torch.dtype
) -> torch.Tensor:
    """Inverse of quantize_4bit: (n,) of `dtype`, computed in fp32 (code[c] * absmax) and then rounded once.

    Each byte is decoded at once through a 256-entry table of its (high, low) nibble values, a chunk of whole
    blocks at a time (`block_chunks`) so that the fp32 temporaries stay in cache.
    """
    code = code.to(device=packed.device, dtype=torch.float32)
    byte = torch.arange(256, device=packed.device)
    # (256,) 8-byte items, each the fp32 (high, low) pair: a 1-D gather of whole items is ~4x faster than rows
    pairs = torch.stack([code[byte >> 4], code[byte & 0xF]], dim=-1).view(torch.int64).view(-1)
    flat = packed.reshape(-1)
    out = torch.empty(n, dtype=dtype, device=packed.device)
    for part, blocks in block_chunks(n, blocksize):  # blocksize >= 32: every chunk starts at an even element
        items = pairs.index_select(0, flat[part.start // 2 : (part.stop + 1) // 2].to(torch.int32))
        values = items.view(torch.float32)[: part.stop - part.start]
        out[part] = _apply_absmax(values, absmax[blocks], blocksize)
    return out


def _apply_absmax(values: torch.Tensor, absmax: torch.Tensor, blocksize: int) -> torch.Tensor:
    """values (n,) fp32, a fresh tensor: scaled in place by each block's absmax (absmax[0] scales values[0];
    a partial last block takes absmax[-1], so `values` must end where the tensor ends or at a block edge).
    In place and then cast by the caller: torch's mixed-dtype `mul(out=fp16)` is ~6x slower on the CPU."""
    n = values.numel()
    full = n - n % blocksize
    values[:full].view(-1, blocksize).mul_(absmax[: full // blocksize].view(-1, 1))
    if full < n:
        values[full:].mul_(absmax[-1])
    return values


def quantize_8bit(x: torch.Tensor, code: torch.Tensor, blocksize: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Blockwise 8-bit quantization against a sorted 256-value map (e.g. `dynamic_map()`).

    x: any shape, fp32|fp16|bf16. Returns (codes with x's shape, uint8; absmax (n_blocks,) fp32).
    The rule is the 4-bit one: nearest value to x / absmax by the fp32 midpoints, a tie goes to the lower
    value (bitsandbytes' CUDA kernel compares with the same midpoints); an all-zero block codes 0.0.
    """
    flat = x.reshape(-1).to(dtype=torch.float32)
    absmax = _block_absmax(flat, blocksize)
    n = flat.numel()
    if n == 0:
        return torch.empty(x.shape, dtype=torch.uint8, device=x.device), absmax
    full = n - n % blocksize
    safe = torch.where(absmax == 0, torch.ones_like(absmax), absmax)
    normed = torch.empty_like(flat)
    normed[:full] = (flat[:full].view(-1, blocksize) / safe[: full // blocksize].view(-1, 1)).view(-1)
    if full < n:
        normed[full:] = flat[full:] / safe[-1]
    book = _cpu_codebook_8bit(code, n) if flat.is_cpu else None
    if book is None:
        thresholds, order = sorted_with_order(code.to(flat.device))
        return order[torch.bucketize(normed, thresholds)].to(torch.uint8).view(x.shape), absmax
    codes = torch.empty(n, dtype=torch.uint8)
    for start in range(0, n, _CHUNK):  # the CPU: the bit-pattern table, in L2-sized chunks
        sorted_idx = book.table.lookup(normed[start : start + _CHUNK]).to(torch.int32)
        codes[start : start + _CHUNK] = book.order.index_select(0, sorted_idx)
    return codes.view(x.shape), absmax


@dataclass(frozen=True)
class _Codebook8:
    code: torch.Tensor  # (256,) fp32
    order: torch.Tensor  # (256,) uint8: sorted index -> code
    table: _BitsTable

    @classmethod
    def of(cls, code: torch.Tensor) -> _Codebook8:
        thresholds, order = sorted_with_order(code.float().cpu())
        return cls(code.float().cpu(), order.to(torch.uint8), _BitsTable(thresholds))


_DYNAMIC_8BIT = (_Codebook8.of(dynamic_map(signed=True)), _Codebook8.of(dynamic_map(signed=False)))


def _cpu_codebook_8bit(code: torch.Tensor, n: int) -> _Codebook8 | None:
    """The table path for `code` on the CPU: the dynamic maps' prebuilt tables, another map's only when n is
    large enough to repay building it (None: bucketize)."""
    for book in _DYNAMIC_8BIT:
        if torch.equal(code.float().cpu(), book.code):
            return book
    return _Codebook8.of(code) if n >= _TABLE_MIN else None


def dequantize_8bit(codes: torch.Tensor, absmax: torch.Tensor, code: torch.Tensor, blocksize: int) -> torch.Tensor:
    """Inverse of quantize_8bit, fp32, flat (n,)."""
    values = code.to(device=codes.device, dtype=torch.float32).index_select(0, codes.reshape(-1).to(torch.int32))
    return _apply_absmax(values, absmax, blocksize)


def double_quantize(absmax: torch.Tensor) -> DoubleQuantState:
    """Quantize an fp32 absmax vector (QLoRA double quantization; bitsandbytes `compress_statistics`).

    A group of 256 whose absmax - offset is all zero (one block, a constant tensor, an all-zero one) gets code 0,
    as in bitsandbytes (CPU and CUDA alike: 0 * (1/0) is NaN, which their searches place at index 0), not
    quantize_8bit's code of 0.0; both decode to code * 0 + offset = offset.
    """
    offset = absmax.mean() if absmax.numel() else absmax.new_zeros(())  # an empty tensor: 0.0, not NaN
    code = on_device(SIGNED_DYNAMIC, absmax.device)
    data, absmax2 = quantize_8bit(absmax - offset, code, DOUBLE_QUANT_BLOCKSIZE)
    zero_group = (absmax2 == 0).repeat_interleave(DOUBLE_QUANT_BLOCKSIZE)[: data.numel()]
    data.masked_fill_(zero_group, 0)
    return DoubleQuantState(data=data, absmax=absmax2, offset=float(offset), code=code)


def double_dequantize(state: DoubleQuantState) -> torch.Tensor:
    """The fp32 absmax vector back: code[data] * absmax2 + offset."""
    return dequantize_8bit(state.data, state.absmax, state.code, state.blocksize) + state.offset
