"""The `quant.quantize` entry point: dtype contracts, storage accounting, bad input, layouts."""

from __future__ import annotations

import pytest
import torch

import quant
from quant.memory import tensor_bytes

FORMATS = ["nf4", "fp4", "int8", "fp16", "bf16"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("fmt", FORMATS)
def test_dequantize_returns_the_original_dtype_and_shape(fmt, dtype) -> None:
    x = torch.randn(5, 3, 64, dtype=dtype)
    qt = quant.quantize(x, fmt)
    out = qt.dequantize()
    assert out.dtype == dtype and out.shape == x.shape
    assert qt.dequantize(torch.float32).dtype == torch.float32


@pytest.mark.parametrize(
    ("fmt", "double_quant", "expected"),
    [("nf4", False, 4.5), ("fp4", False, 4.5), ("nf4", True, 4 + 8 / 64 + 32 / (64 * 256)), ("fp16", False, 16.0)],
)
def test_bits_per_param_is_qlora_figure(fmt, double_quant, expected) -> None:
    qt = quant.quantize(torch.randn(256, 256), fmt, 64, double_quant)
    assert qt.bits_per_param == pytest.approx(expected)


@pytest.mark.parametrize(("fmt", "double_quant"), [(f, False) for f in FORMATS] + [("nf4", True), ("fp4", True)])
def test_nbytes_matches_the_memory_model(fmt, double_quant) -> None:
    x = torch.randn(300, 130)
    qt = quant.quantize(x, fmt, 64, double_quant)
    assert qt.nbytes == tensor_bytes(x.numel(), fmt, 64, double_quant, rows=300)


def test_non_contiguous_input_equals_its_contiguous_copy() -> None:
    x = torch.randn(128, 96).T  # (96, 128), transposed strides
    assert not x.is_contiguous()
    a, b = quant.quantize(x, "nf4"), quant.quantize(x.contiguous(), "nf4")
    assert torch.equal(a.data, b.data) and torch.equal(a.absmax, b.absmax)


@pytest.mark.parametrize("fmt", FORMATS)
def test_empty_tensors_round_trip(fmt) -> None:
    x = torch.empty(0, 64)
    out = quant.quantize(x, fmt).dequantize()
    assert out.shape == (0, 64) and out.dtype == x.dtype


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_values_raise_with_count_and_first_index(bad) -> None:
    x = torch.randn(4, 8)
    x[1, 3] = bad
    x[2, 0] = bad
    with pytest.raises(ValueError, match=r"2 non-finite value\(s\).*index \(1, 3\)"):
        quant.quantize(x, "nf4")


@pytest.mark.parametrize(
    ("fmt", "big", "kwargs"),
    [("fp16", 7e4, {}), ("bf16", 3.4e38, {}), ("int8", -7e4, {"outlier_threshold": 6.0})],
    ids=["fp16", "bf16", "int8-outliers-in-fp16"],
)
def test_values_a_cast_would_make_infinite_raise(fmt, big, kwargs) -> None:
    x = torch.randn(4, 8)
    x[2, 5] = big
    with pytest.raises(ValueError, match=r"1 value\(s\) beyond torch\.\w+'s range.*index \(2, 5\)"):
        quant.quantize(x, fmt, **kwargs)


def test_largest_values_that_round_to_a_finite_cast_are_kept() -> None:
    x = torch.tensor([65504.0, 65519.0, -65519.0])  # 65520 and beyond round to Inf in fp16
    assert torch.equal(quant.quantize(x, "fp16").dequantize(), torch.tensor([65504.0, 65504.0, -65504.0]))
    assert quant.quantize(torch.tensor([[1.0, 7e4]]), "int8").dequantize()[0, 1] == 7e4  # no outliers: no fp16


@pytest.mark.parametrize("dtype", [torch.int32, torch.int8, torch.bool])
def test_integer_tensors_raise_type_error(dtype) -> None:
    with pytest.raises(TypeError, match="tensor: dtype"):
        quant.quantize(torch.zeros(4, 4, dtype=dtype), "nf4")


@pytest.mark.parametrize("blocksize", [16, 48, 8192, 0, -64])
def test_bad_blocksize_is_named(blocksize) -> None:
    with pytest.raises(ValueError, match=f"blocksize: {blocksize}"):
        quant.quantize(torch.randn(64), "nf4", blocksize)


def test_bad_arguments_are_named() -> None:
    x = torch.randn(8, 8)
    with pytest.raises(ValueError, match="fmt: 'nf5'"):
        quant.quantize(x, "nf4".replace("4", "5"))
    with pytest.raises(ValueError, match="double_quant"):
        quant.quantize(x, "int8", double_quant=True)
    with pytest.raises(ValueError, match="int8_scheme"):
        quant.quantize(x, "int8", int8_scheme="column")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="outlier_threshold"):
        quant.quantize(x, "nf4", outlier_threshold=6.0)
    with pytest.raises(TypeError, match=r"torch\.Tensor"):
        quant.quantize([1.0, 2.0], "nf4")  # type: ignore[arg-type]


def test_per_tensor_int8_uses_one_scale() -> None:
    x = torch.randn(16, 32)
    qt = quant.quantize(x, "int8", int8_scheme="tensor")
    assert qt.absmax is not None and qt.absmax.dim() == 0
    assert qt.absmax.item() == pytest.approx(x.abs().max().item())
    assert (qt.dequantize() - x).abs().max() <= x.abs().max() / 127 / 2 + 1e-6


def test_to_moves_every_tensor() -> None:
    qt = quant.quantize(torch.randn(64, 64), "nf4", double_quant=True).to("cpu")
    assert qt.device.type == "cpu" and qt.state2 is not None and qt.state2.data.device.type == "cpu"
