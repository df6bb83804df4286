"""Conformance with bitsandbytes 0.50 (CPU) where a block's absmax is zero or subnormal: zero, subnormal and
single-element tails, all-zero tensors, subnormal blocks; nf4 and fp4, with and without double quantization.

bitsandbytes stores a partial last block's absmax clamped to >= 1e-38 (fp32 9.99999935e-39) and leaves whole
blocks as they are; the codes divide by the clamped value either way, and the double-quant offset is the mean of
the clamped vector. A double-quant group whose absmax - offset is all zero gets code 0 there (0 * (1/0) is NaN).
Packed codes, absmax (bits), offset (bits), double-quant codes and second-level absmax, decoded absmax (bits) and
decoded values must all agree. Decoded values compare by value: bitsandbytes' CPU table decodes FP4's code 8 to
+0.0 where its CUDA kernel (sign * 0) and quant/ give -0.0. Runs in CI on the CPU, never skipped.
"""

from __future__ import annotations

from collections.abc import Callable

import bitsandbytes.functional as bnbf
import pytest
import torch

import quant
from quant import blockwise

TINY = 1e-40  # an fp32 subnormal (fp32's smallest normal is 1.18e-38)


def _randn(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, generator=torch.Generator().manual_seed(seed))


def _tail(n: int, blocksize: int, fill: Callable[[int], torch.Tensor]) -> torch.Tensor:
    """N(0, 1) values whose partial last block (n % blocksize elements) is `fill(count)`."""
    x = _randn(n)
    tail = n % blocksize
    x[n - tail :] = fill(tail)
    return x


# name -> (n, blocksize) -> values: every case ends in a partial block unless its name says otherwise
CASES: dict[str, Callable[[int, int], torch.Tensor]] = {
    "zero-tail": lambda n, bs: _tail(n, bs, torch.zeros),
    "subnormal-tail": lambda n, bs: _tail(n, bs, lambda k: _randn(k, 1) * TINY),
    "tail-below-1e-38": lambda n, bs: _tail(n, bs, lambda k: torch.full((k,), 5e-39)),
    "tail-above-1e-38": lambda n, bs: _tail(n, bs, lambda k: torch.full((k,), -2e-38)),
    "single-element-tail": lambda n, bs: _randn(n - n % bs + 1),
    "single-zero-tail": lambda n, bs: _tail(n - n % bs + 1, bs, torch.zeros),
    "single-subnormal-tail": lambda n, bs: _tail(n - n % bs + 1, bs, lambda k: torch.full((k,), -3 * TINY)),
    "all-zero": lambda n, bs: torch.zeros(n),
    "all-zero-whole-blocks": lambda n, bs: torch.zeros(n - n % bs),
    "all-zero-under-one-block": lambda n, bs: torch.zeros(bs // 2 + 1),
    "one-element": lambda n, bs: torch.full((1,), 0.75),
    "one-zero": lambda n, bs: torch.zeros(1),
    "subnormal-blocks": lambda n, bs: _randn(n) * TINY,
    "zero-and-subnormal-blocks": lambda n, bs: torch.cat([torch.zeros(bs), _randn(bs) * TINY, _randn(n - 2 * bs)]),
}


def _bnb_decode(packed: torch.Tensor, state) -> torch.Tensor:
    """bitsandbytes' decode, flat, fp32 accumulation as in its plain-torch backend (its native CPU kernel misdecodes
    blocks longer than a row, see test_bnb_conformance; its absmax is decoded by its own dequantize_blockwise)."""
    from bitsandbytes.backends.default.ops import _dequantize_4bit_compute
    from bitsandbytes.backends.utils import _get_4bit_code

    absmax = state.absmax
    if state.nested:
        absmax = bnbf.dequantize_blockwise(state.absmax, state.state2) + state.offset
    code = _get_4bit_code(state.quant_type, packed.device)
    n = state.shape.numel()
    return _dequantize_4bit_compute.__wrapped__(packed.view(-1), absmax, code, state.blocksize, (n,), state.dtype)


def _bits(t: torch.Tensor) -> torch.Tensor:
    """The raw bits, so that -0.0 and 0.0 (and subnormals) compare exactly."""
    return t.contiguous().view(torch.int32 if t.dtype == torch.float32 else torch.int16)


@pytest.mark.parametrize("double_quant", [False, True], ids=["plain", "dq"])
@pytest.mark.parametrize("fmt", ["nf4", "fp4"])
@pytest.mark.parametrize("blocksize", [32, 64, 256, 4096], ids=lambda b: f"bs{b}")
@pytest.mark.parametrize("case", CASES)
def test_edge_blocks_equal_bnb_byte_for_byte(case, blocksize, fmt, double_quant) -> None:
    n = 3 * blocksize + 5
    x = CASES[case](n, blocksize)
    packed, state = bnbf.quantize_4bit(x, blocksize=blocksize, quant_type=fmt, compress_statistics=double_quant)
    qt = quant.quantize(x, fmt, blocksize, double_quant)
    assert torch.equal(qt.data, packed.view(-1)), "packed codes"
    if double_quant:
        assert qt.state2 is not None
        assert _bits(torch.tensor(qt.state2.offset)).item() == _bits(state.offset.view(())).item(), "offset"
        assert torch.equal(_bits(qt.state2.absmax), _bits(state.state2.absmax)), "second-level absmax"
        assert torch.equal(qt.state2.data, state.absmax), "double-quant codes"
    else:
        assert torch.equal(_bits(qt.absmax), _bits(state.absmax)), "absmax"
    assert torch.equal(_bits(qt.block_absmax()), _bits(_bnb_absmax(state))), "decoded absmax"
    assert torch.equal(qt.dequantize().reshape(-1), _bnb_decode(packed, state)), "decoded values"


def _bnb_absmax(state) -> torch.Tensor:
    if state.nested:
        return bnbf.dequantize_blockwise(state.absmax, state.state2) + state.offset
    return state.absmax


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("double_quant", [False, True], ids=["plain", "dq"])
def test_half_precision_zero_and_tiny_tails_equal_bnb(dtype, double_quant) -> None:
    """fp16/bf16 inputs: a zero tail, and bf16's own subnormals (fp32's range) in the tail."""
    x = _randn(2 * 64 + 3).to(dtype)
    x[-3:] = torch.tensor([0.0, 1e-39, -2e-39]).to(dtype)
    packed, state = bnbf.quantize_4bit(x, blocksize=64, quant_type="nf4", compress_statistics=double_quant)
    qt = quant.quantize(x, "nf4", 64, double_quant)
    assert torch.equal(qt.data, packed.view(-1))
    assert torch.equal(_bits(qt.block_absmax()), _bits(_bnb_absmax(state)))
    assert torch.equal(qt.dequantize().reshape(-1), _bnb_decode(packed, state))


def test_only_the_partial_last_block_is_clamped() -> None:
    """The rule itself, on values written out: whole blocks keep 0 and subnormal absmax; the tail stores 1e-38."""
    x = torch.cat([torch.zeros(64), torch.full((64,), TINY), torch.zeros(3)])
    _, absmax = blockwise.quantize_4bit(x, "nf4", 64)
    fp32_1e38 = torch.tensor(1e-38, dtype=torch.float32)
    assert absmax[0].item() == 0.0 and absmax[1].item() == torch.tensor(TINY).item()
    assert absmax[2].item() == fp32_1e38.item() and 0 < absmax[2].item() < torch.finfo(torch.float32).tiny
    _, whole = blockwise.quantize_4bit(x[:128], "nf4", 64)
    assert torch.equal(whole, absmax[:2])


def test_bnb_codes_only_the_sign_of_a_subnormal_double_quant_group() -> None:
    """The one place left where the double-quant codes differ, on purpose: every block's absmax subnormal and no
    partial last block (whose 1e-38 floor would dominate), so a group's absmax - offset stays below 2^-128, where
    bitsandbytes' x * (1/absmax2) overflows to ±inf and keeps only the sign (codes 0 and 255). Ours keeps the ratio;
    the 4-bit codes, offset and second-level absmax still agree, and our decoded absmax is the nearer."""
    x = _randn(300 * 32) * TINY
    packed, state = bnbf.quantize_4bit(x, blocksize=32, quant_type="nf4", compress_statistics=True)
    qt = quant.quantize(x, "nf4", 32, double_quant=True)
    assert qt.state2 is not None
    assert torch.equal(qt.data, packed.view(-1)) and qt.state2.offset == float(state.offset)
    assert torch.equal(qt.state2.absmax, state.state2.absmax)
    assert bool((state.state2.absmax < 2.0**-128).all())
    assert set(state.absmax.unique().tolist()) == {0, 255}, "bitsandbytes: the sign only"
    true = x.view(-1, 32).abs().amax(dim=1)
    ours = (qt.block_absmax() - true).abs().max()
    theirs = (_bnb_absmax(state) - true).abs().max()
    assert ours * 100 < theirs
