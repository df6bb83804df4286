"""Accuracy on Gaussian weights: error statistics per format, bounds derived from the codebooks, QLoRA's finding."""

from __future__ import annotations

import math

import bitsandbytes.functional as bnbf
import pytest
import torch

import quant
from quant.blockwise import CODEBOOKS_4BIT


def _stats(x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    err = (y.float() - x.float()).reshape(-1)
    rmse = err.pow(2).mean().sqrt().item()
    return {
        "rmse": rmse,
        "max": err.abs().max().item(),
        "sqnr_db": 10 * math.log10(x.float().pow(2).mean().item() / max(rmse**2, 1e-30)),
    }


@pytest.fixture(scope="module")
def weights() -> torch.Tensor:
    return torch.randn(1024, 1024, generator=torch.Generator().manual_seed(1)) * 0.02


def test_nf4_error_is_below_fp4(weights) -> None:
    """QLoRA §3/§5: NF4 is information-theoretically better than FP4 for normally distributed weights."""
    nf4 = _stats(weights, quant.quantize(weights, "nf4").dequantize())
    fp4 = _stats(weights, quant.quantize(weights, "fp4").dequantize())
    assert nf4["rmse"] < fp4["rmse"]
    assert nf4["sqnr_db"] > fp4["sqnr_db"]


@pytest.mark.parametrize("blocksize", [32, 64, 256, 1024])
@pytest.mark.parametrize("fmt", ["nf4", "fp4"])
def test_4bit_error_bounded_by_half_the_widest_gap(weights, fmt, blocksize) -> None:
    """|x - x̂| <= absmax_b * (largest gap between sorted codebook values) / 2 for every element."""
    code = CODEBOOKS_4BIT[fmt].code.sort().values
    half_gap = (code[1:] - code[:-1]).max().item() / 2
    qt = quant.quantize(weights, fmt, blocksize)
    absmax = qt.block_absmax().repeat_interleave(blocksize)[: weights.numel()].view_as(weights)
    assert bool(((qt.dequantize() - weights).abs() <= absmax * half_gap * (1 + 1e-6)).all())


@pytest.mark.parametrize("double_quant", [False, True])
@pytest.mark.parametrize("fmt", ["nf4", "fp4"])
def test_no_worse_than_bitsandbytes(weights, fmt, double_quant) -> None:
    ours = _stats(weights, quant.quantize(weights, fmt, 64, double_quant).dequantize())
    packed, state = bnbf.quantize_4bit(weights, blocksize=64, quant_type=fmt, compress_statistics=double_quant)
    theirs = _stats(weights, bnbf.dequantize_4bit(packed, state))
    assert ours["rmse"] <= theirs["rmse"] * (1 + 1e-6)


def test_int8_error_within_half_a_step(weights) -> None:
    qt = quant.quantize(weights, "int8")
    assert qt.absmax is not None
    step = (qt.absmax / 127).unsqueeze(1)
    assert bool(((qt.dequantize() - weights).abs() <= step / 2 * (1 + 1e-5)).all())


def test_precision_ladder(weights) -> None:
    """More bits, less error: nf4 < int8 < bf16 < fp16 in RMSE on N(0, 0.02²) weights (the accuracy table)."""
    table = {f: _stats(weights, quant.quantize(weights, f).dequantize()) for f in ("nf4", "int8", "bf16", "fp16")}
    rmse = [table[f]["rmse"] for f in ("nf4", "int8", "bf16", "fp16")]
    assert rmse == sorted(rmse, reverse=True), table
