"""Bad arguments to quant/'s entry points are refused with a ValueError naming the argument; quantizing a tensor
that requires grad (an nn.Parameter) leaves no autograd history in the quantized tensors."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

import quant
from quant import QuantizedTensor

VARIANTS = [
    ("nf4", False, {}),
    ("nf4", True, {}),
    ("fp4", False, {}),
    ("fp4", True, {}),
    ("int8", False, {}),
    ("int8", False, {"outlier_threshold": 2.0}),
    ("int8", False, {"int8_scheme": "tensor"}),
    ("fp16", False, {}),
    ("bf16", False, {}),
]
IDS = ["nf4", "nf4-dq", "fp4", "fp4-dq", "int8-row", "int8-outliers", "int8-tensor", "fp16", "bf16"]


def _x(dtype: torch.dtype = torch.float32) -> torch.Tensor:
    x = torch.randn(6, 96, generator=torch.Generator().manual_seed(0))
    x[:, 5] *= 8  # an outlier column at threshold 2.0
    return x.to(dtype)


@pytest.mark.parametrize("fmt", ["nf4", "fp4"])
@pytest.mark.parametrize("blocksize", [64.0, True, "64", 0, 100, None, -64, 8192, 16], ids=repr)
def test_a_bad_blocksize_is_named(blocksize, fmt) -> None:
    with pytest.raises(ValueError, match=re.escape(f"blocksize: {blocksize!r}")):
        quant.quantize(_x(), fmt, blocksize)


def test_an_integer_blocksize_of_any_int_type_is_taken() -> None:
    qt = quant.quantize(_x(), "nf4", np.int64(128))
    assert qt.blocksize == 128 and type(qt.blocksize) is int


@pytest.mark.parametrize("threshold", [float("nan"), float("inf"), -float("inf"), -1.0, "6", None, True], ids=repr)
def test_a_bad_outlier_threshold_is_named(threshold) -> None:
    with pytest.raises(ValueError, match=re.escape(f"outlier_threshold: {threshold!r}")):
        quant.quantize(_x(), "int8", outlier_threshold=threshold)


def test_a_tensor_outlier_threshold_is_refused() -> None:
    with pytest.raises(ValueError, match="outlier_threshold: tensor"):
        quant.quantize(_x(), "int8", outlier_threshold=torch.tensor(6.0))  # type: ignore[arg-type]


@pytest.mark.parametrize("fmt", [4, None, ["nf4"], b"nf4", ("nf4",)], ids=repr)
def test_a_format_of_the_wrong_type_is_named(fmt) -> None:
    with pytest.raises(ValueError, match=re.escape(f"fmt: {fmt!r}")):
        quant.quantize(_x(), fmt)


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [("double_quant", {"double_quant": "yes"}), ("int8_scheme", {"fmt": "int8", "int8_scheme": ["row"]})],
)
def test_other_arguments_of_the_wrong_type_are_named(name, kwargs) -> None:
    kwargs = {"fmt": "nf4", **kwargs}
    with pytest.raises(ValueError, match=name):
        quant.quantize(_x(), **kwargs)


@pytest.mark.parametrize(
    "dtype", [torch.int32, torch.int8, torch.bool, torch.float64, torch.complex64, "float32"], ids=str
)
@pytest.mark.parametrize(("fmt", "double_quant", "kwargs"), VARIANTS, ids=IDS)
def test_dequantize_takes_floating_dtypes_only(fmt, double_quant, kwargs, dtype) -> None:
    qt = quant.quantize(_x(), fmt, 64, double_quant, **kwargs)
    with pytest.raises(ValueError, match=re.escape(f"dtype: {dtype!r}")):
        qt.dequantize(dtype)


def _tensors(qt: QuantizedTensor) -> dict[str, torch.Tensor]:
    out = {name: getattr(qt, name) for name in ("data", "absmax", "code", "outlier_cols", "outliers")}
    if qt.state2 is not None:
        out |= {"state2.data": qt.state2.data, "state2.absmax": qt.state2.absmax, "state2.code": qt.state2.code}
    return {name: t for name, t in out.items() if t is not None}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize(("fmt", "double_quant", "kwargs"), VARIANTS, ids=IDS)
def test_quantizing_a_parameter_keeps_no_autograd_history(fmt, double_quant, kwargs, dtype) -> None:
    """An nn.Parameter (a leaf requiring grad) and a non-leaf with a grad_fn; fp16 of an fp16 Parameter is the
    case where a cast alone would hand back the Parameter itself."""
    param = torch.nn.Parameter(_x(dtype))
    for source in (param, param * 1):
        qt = quant.quantize(source, fmt, 64, double_quant, **kwargs)
        tensors = _tensors(qt)
        assert "data" in tensors
        for name, t in tensors.items():
            assert not t.requires_grad and t.grad_fn is None, name
            assert not isinstance(t, torch.nn.Parameter), name
        out = qt.dequantize()
        assert not out.requires_grad and out.grad_fn is None


def test_to_bnb_refuses_what_is_not_a_4bit_quantized_tensor() -> None:
    with pytest.raises(ValueError, match=r"qt: Tensor; expected a quant\.QuantizedTensor"):
        quant.to_bnb(torch.zeros(4, dtype=torch.uint8))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="qt: format 'int8'"):
        quant.to_bnb(quant.quantize(_x(), "int8"))
