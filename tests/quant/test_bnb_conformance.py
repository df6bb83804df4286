"""Conformance with bitsandbytes on the CPU: the oracle for every format. Runs in CI, never skipped there."""

from __future__ import annotations

import math

import bitsandbytes.functional as bnbf
import pytest
import torch

import quant
from quant import blockwise
from quant.codebooks import dynamic_map

SHAPES = [(64, 64), (33, 77), (1, 1), (3,), (257, 129), (2, 3, 50)]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
BLOCKSIZES = [32, 64, 256, 4096]


def _id(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape))


def _bnb_dequantize_4bit(packed: torch.Tensor, state) -> torch.Tensor:
    """bitsandbytes' dequantization, from its plain-torch default backend where its native CPU kernel is wrong.

    bitsandbytes 0.50's native (AVX-512) CPU kernel mis-decodes when the row is shorter than a block and the
    block is smaller than 2048 (e.g. 64x64 at blocksize 128: errors of 2.0 on N(0, 9) data, against 0.45 for a
    correct decode); bitsandbytes itself falls back to the default backend for blocksize >= 2048 and odd rows.
    """
    shape, blocksize = tuple(state.shape), state.blocksize
    if blocksize <= shape[-1] or blocksize >= 2048 or blocksize >= math.prod(shape):
        return bnbf.dequantize_4bit(packed, state)
    from bitsandbytes.backends.default.ops import _dequantize_4bit_compute
    from bitsandbytes.backends.utils import _get_4bit_code

    eager = _dequantize_4bit_compute.__wrapped__  # the uncompiled function
    code = _get_4bit_code(state.quant_type, packed.device)
    return eager(packed.view(-1), state.absmax, code, blocksize, shape, state.dtype)


@pytest.mark.parametrize("fmt", ["nf4", "fp4"])
@pytest.mark.parametrize("blocksize", BLOCKSIZES, ids=lambda b: f"bs{b}")
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=_id)
def test_4bit_codes_absmax_and_values_equal_bnb(shape, dtype, blocksize, fmt) -> None:
    x = torch.randn(shape, dtype=dtype) * 3
    packed, state = bnbf.quantize_4bit(x, blocksize=blocksize, quant_type=fmt)
    qt = quant.quantize(x, fmt, blocksize)
    assert torch.equal(qt.data, packed.view(-1)), "packed codes must be byte-identical"
    assert torch.equal(qt.absmax, state.absmax)
    ours, theirs = qt.dequantize(), _bnb_dequantize_4bit(packed, state)
    assert ours.dtype == theirs.dtype == dtype
    if dtype == torch.float32:
        torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=0)
    else:
        assert torch.equal(ours, theirs)


@pytest.mark.parametrize("double_quant", [False, True], ids=["plain", "dq"])
@pytest.mark.parametrize("blocksize", [64, 4096], ids=lambda b: f"bs{b}")
def test_dequantize_across_chunks_equals_bnb(blocksize, double_quant) -> None:
    """Past quant.blockwise's 2^20-element dequantize chunks, with a ragged last block and an odd count: bitsandbytes'
    own quantized tensor, decoded by us and by it (double-quant codes may differ between the two quantizers, see
    test_double_quant_matches_bnb, so both decode the same state)."""
    x = torch.randn(2 * 2**20 + 37, dtype=torch.bfloat16)
    packed, state = bnbf.quantize_4bit(x, blocksize=blocksize, quant_type="nf4", compress_statistics=double_quant)
    assert torch.equal(quant.from_bnb(packed, state).dequantize(), _bnb_dequantize_4bit(packed, state))


@pytest.mark.parametrize("fmt", ["nf4", "fp4"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(256, 256), (129, 333), (4096, 64)], ids=_id)
def test_double_quant_matches_bnb(shape, dtype, fmt) -> None:
    """4-bit codes byte-identical; offset and second-level absmax equal; 8-bit absmax codes agree except where
    bitsandbytes' CPU table search misses the nearest value (see test_bnb_cpu_8bit_search_misses_nearest)."""
    x = torch.randn(shape, dtype=dtype)
    packed, state = bnbf.quantize_4bit(x, blocksize=64, quant_type=fmt, compress_statistics=True)
    qt = quant.quantize(x, fmt, 64, double_quant=True)
    assert qt.state2 is not None
    assert torch.equal(qt.data, packed.view(-1))
    assert qt.state2.offset == float(state.offset)
    assert torch.equal(qt.state2.absmax, state.state2.absmax)
    agree = (qt.state2.data == state.absmax).float().mean().item()
    assert agree >= 0.99, f"8-bit absmax codes agree on {agree:.4f}"
    # where they differ, ours is the nearer value, so our decoded absmax is never worse
    absmax = blockwise._block_absmax(x.reshape(-1).float(), 64)
    ours = blockwise.double_dequantize(qt.state2)
    theirs = bnbf.dequantize_blockwise(state.absmax, state.state2) + state.offset
    assert (ours - absmax).abs().max() <= (theirs - absmax).abs().max() + 1e-7


def test_bnb_cpu_8bit_search_misses_nearest() -> None:
    """Why double-quant codes may differ: bitsandbytes' CPU blockwise 8-bit quantizer sometimes returns a code
    that is not the nearest one (by far more than rounding); ours is the nearest by the fp32 midpoints."""
    x = torch.randn(49920)
    codes, state = bnbf.quantize_blockwise(x, blocksize=256)
    ours, absmax = blockwise.quantize_8bit(x, dynamic_map(signed=True), 256)
    assert torch.equal(absmax, state.absmax)
    code = dynamic_map(signed=True)
    normed = (x.view(-1, 256) / absmax.view(-1, 1)).view(-1)
    d_ours = (normed - code[ours.long()]).abs()
    d_bnb = (normed - code[codes.long()]).abs()
    assert bool((d_ours <= d_bnb).all()), "ours is never farther from the value than bitsandbytes' pick"
    differ = ours != codes
    assert 0 < int(differ.sum()) < 0.005 * x.numel()
    assert float((d_bnb[differ] / d_ours[differ].clamp(min=1e-12)).max()) > 10, "not a rounding tie"


@pytest.mark.parametrize("double_quant", [False, True], ids=["plain", "dq"])
@pytest.mark.parametrize("fmt", ["nf4", "fp4"])
def test_to_bnb_is_read_by_bnb_and_from_bnb_round_trips(fmt, double_quant) -> None:
    x = torch.randn(77, 128, dtype=torch.bfloat16)
    qt = quant.quantize(x, fmt, 64, double_quant)
    packed, state = quant.to_bnb(qt)
    assert torch.equal(bnbf.dequantize_4bit(packed, state), qt.dequantize())
    bnb_packed, bnb_state = bnbf.quantize_4bit(x, blocksize=64, quant_type=fmt, compress_statistics=double_quant)
    back = quant.from_bnb(bnb_packed, bnb_state)
    assert back.fmt == fmt and back.shape == x.shape and back.double_quant == double_quant
    assert torch.equal(back.dequantize(), bnbf.dequantize_4bit(bnb_packed, bnb_state))


def test_from_bnb_rejects_wrong_lengths() -> None:
    packed, state = bnbf.quantize_4bit(torch.randn(8, 64), blocksize=64, quant_type="nf4")
    with pytest.raises(ValueError, match="packed"):
        quant.from_bnb(packed[:-1], state)


@pytest.mark.parametrize("threshold", [0.0, 6.0], ids=["plain", "outliers"])
@pytest.mark.parametrize("shape", [(16, 64), (7, 33), (1, 40), (700, 1000)], ids=_id)
def test_int8_rowwise_equals_llm_int8_vectorwise(shape, threshold) -> None:
    """(700, 1000) spans several of the CPU path's row chunks and holds an all-zero row."""
    x = torch.randn(shape, dtype=torch.float16) * 2
    x[:, shape[1] // 2] *= 8  # an outlier feature
    x[shape[0] // 2] = 0.0
    codes, scales, cols = bnbf.int8_vectorwise_quant(x.clone(), threshold=threshold)
    qt = quant.quantize(x, "int8", outlier_threshold=threshold)
    assert torch.equal(qt.data, codes)
    assert torch.equal(qt.absmax, scales)
    inliers = bnbf.int8_vectorwise_dequant(codes, scales)  # fp32, bitsandbytes' own dequantization
    outlier = torch.zeros(shape[1], dtype=torch.bool)
    if qt.outlier_cols is not None:
        outlier[qt.outlier_cols] = True
    assert torch.equal(qt.dequantize(torch.float32)[:, ~outlier], inliers[:, ~outlier])
    assert torch.equal(qt.dequantize()[:, ~outlier], inliers.to(x.dtype)[:, ~outlier])
    if threshold > 0 and cols is not None and cols.numel():
        assert qt.outlier_cols is not None and torch.equal(qt.outlier_cols, cols.long())
        restored = qt.dequantize()
        assert torch.equal(restored[:, qt.outlier_cols], x[:, qt.outlier_cols]), "outliers kept exactly in fp16"
