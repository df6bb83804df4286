"""Empty and 0-d tensors: one behaviour for every format, +-double quantization, every dtype and entry point."""

from __future__ import annotations

import math

import bitsandbytes.functional as bnbf
import pytest
import torch

import quant
from quant.memory import tensor_bytes

EMPTY_SHAPES = [(0,), (64, 0), (0, 64), (0, 0), (3, 0, 5)]
VARIANTS = [
    ("nf4", False, {}),
    ("nf4", True, {}),
    ("fp4", False, {}),
    ("fp4", True, {}),
    ("int8", False, {}),
    ("int8", False, {"outlier_threshold": 6.0}),
    ("int8", False, {"int8_scheme": "tensor"}),
    ("fp16", False, {}),
    ("bf16", False, {}),
]
IDS = ["nf4", "nf4-dq", "fp4", "fp4-dq", "int8-row", "int8-outliers", "int8-tensor", "fp16", "bf16"]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def _shape_id(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape)) or "0d"


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(("fmt", "double_quant", "kwargs"), VARIANTS, ids=IDS)
@pytest.mark.parametrize("shape", EMPTY_SHAPES, ids=_shape_id)
def test_an_empty_tensor_round_trips_to_an_empty_tensor(shape, fmt, double_quant, kwargs, dtype) -> None:
    x = torch.empty(shape, dtype=dtype)
    qt = quant.quantize(x, fmt, 64, double_quant, **kwargs)
    assert qt.shape == x.shape and qt.numel == 0 and qt.double_quant == double_quant
    for out_dtype in (None, torch.float32):
        out = qt.dequantize(out_dtype)
        assert out.shape == x.shape and out.dtype == (out_dtype or dtype)
    assert qt.bits_per_param == 0.0
    rows = math.prod(shape[:-1])
    if kwargs.get("int8_scheme") == "tensor":
        assert qt.nbytes == 4  # its one per-tensor scale
    else:
        assert qt.nbytes == tensor_bytes(0, fmt, 64, double_quant, rows=rows)
    if double_quant:
        assert qt.state2 is not None and qt.state2.offset == 0.0, "a mean of nothing is 0.0, not NaN"
    moved = qt.to("cpu")
    assert moved.dequantize().shape == x.shape


@pytest.mark.parametrize(("fmt", "double_quant", "kwargs"), VARIANTS, ids=IDS)
def test_a_0d_tensor_is_one_element(fmt, double_quant, kwargs) -> None:
    x = torch.tensor(-0.75)
    qt = quant.quantize(x, fmt, 64, double_quant, **kwargs)
    out = qt.dequantize()
    assert out.shape == () and out.dtype == torch.float32
    assert out.item() == -0.75  # the block's (or row's) absmax: exact in every format
    assert qt.numel == 1 and qt.bits_per_param > 0


@pytest.mark.parametrize("double_quant", [False, True], ids=["plain", "dq"])
@pytest.mark.parametrize("fmt", ["nf4", "fp4"])
@pytest.mark.parametrize("shape", [*EMPTY_SHAPES, ()], ids=_shape_id)
def test_to_bnb_of_an_empty_or_0d_tensor_is_bnb_own_state(shape, fmt, double_quant) -> None:
    """The state bitsandbytes' own quantize_4bit makes; bitsandbytes reads it back where it reads its own (it
    cannot dequantize 0-d shapes or empty ones with a 0 past the first dim, even from its own states)."""
    x = torch.randn(shape) if shape == () else torch.empty(shape)
    qt = quant.quantize(x, fmt, 64, double_quant)
    packed, state = quant.to_bnb(qt)
    bnb_packed, bnb_state = bnbf.quantize_4bit(x, blocksize=64, quant_type=fmt, compress_statistics=double_quant)
    assert packed.shape == bnb_packed.shape and torch.equal(packed, bnb_packed)
    assert state.shape == bnb_state.shape and state.blocksize == bnb_state.blocksize
    assert state.absmax.shape == bnb_state.absmax.shape and state.nested == bnb_state.nested
    back = quant.from_bnb(bnb_packed, bnb_state)  # bitsandbytes' empty double-quant offset is NaN: no blocks use it
    assert back.shape == x.shape and back.dequantize().shape == x.shape
    if shape and (x.numel() or math.prod(shape[1:])):
        assert bnbf.dequantize_4bit(packed, state).reshape(shape).shape == x.shape
