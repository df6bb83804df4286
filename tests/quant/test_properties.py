"""Property-based tests (hypothesis) over shapes and values."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import quant

shapes = st.lists(st.integers(1, 40), min_size=1, max_size=3).map(tuple)
blocksizes = st.sampled_from([32, 64, 128, 4096])
formats = st.sampled_from(["nf4", "fp4"])
dtypes = st.sampled_from([torch.float32, torch.float16, torch.bfloat16])


@settings(max_examples=60, deadline=None)
@given(
    shape=shapes,
    blocksize=blocksizes,
    fmt=formats,
    dtype=dtypes,
    scale=st.floats(1e-3, 1e3),
    seed=st.integers(0, 2**16),
)
def test_4bit_requantizing_the_dequantized_tensor_is_a_fixed_point(shape, blocksize, fmt, dtype, scale, seed) -> None:
    x = (torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * scale).to(dtype)
    qt = quant.quantize(x, fmt, blocksize)
    again = quant.quantize(qt.dequantize(torch.float32), fmt, blocksize)
    assert torch.equal(again.dequantize(torch.float32), qt.dequantize(torch.float32))
    if fmt == "nf4":  # FP4 has two zero codes (+0, -0): a fixed point in value, not always in bits
        assert torch.equal(again.data, qt.data)
    assert qt.data.numel() == -(-x.numel() // 2)


@settings(max_examples=60, deadline=None)
@given(shape=shapes, fmt=formats, double_quant=st.booleans(), seed=st.integers(0, 2**16))
def test_round_trip_error_is_bounded_by_block_absmax(shape, fmt, double_quant, seed) -> None:
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    qt = quant.quantize(x, fmt, 64, double_quant)
    err = (qt.dequantize() - x).abs().max().item()
    # one code step is at most ~0.33 of absmax (FP4's widest gap); double quantization adds its own step
    assert err <= x.abs().max().item() * (0.34 if not double_quant else 0.36) + 1e-6


@settings(max_examples=40, deadline=None)
@given(
    rows=st.integers(1, 20), cols=st.integers(1, 40), seed=st.integers(0, 2**16), threshold=st.sampled_from([0.0, 2.0])
)
def test_int8_codes_in_range_and_outliers_exact(rows, cols, seed, threshold) -> None:
    x = torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed)).half()
    qt = quant.quantize(x, "int8", outlier_threshold=threshold)
    assert qt.data.dtype == torch.int8 and int(qt.data.abs().max()) <= 127
    if qt.outlier_cols is not None:
        assert torch.equal(qt.dequantize()[:, qt.outlier_cols], x[:, qt.outlier_cols])
