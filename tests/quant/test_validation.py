"""QuantizedTensor validates its fields at construction (and from_bnb its state): kernels index by them."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import bitsandbytes.functional as bnbf
import pytest
import torch

import quant
from quant import QuantizedTensor

# every format and variant quantize() makes, and the fields each one has
VARIANTS: dict[str, Callable[[torch.Tensor], QuantizedTensor]] = {
    "nf4": lambda x: quant.quantize(x, "nf4", 64),
    "fp4": lambda x: quant.quantize(x, "fp4", 128),
    "nf4-dq": lambda x: quant.quantize(x, "nf4", 64, double_quant=True),
    "fp4-dq": lambda x: quant.quantize(x, "fp4", 32, double_quant=True),
    "int8-row": lambda x: quant.quantize(x, "int8"),
    "int8-outliers": lambda x: quant.quantize(x, "int8", outlier_threshold=2.0),
    "int8-tensor": lambda x: quant.quantize(x, "int8", int8_scheme="tensor"),
    "fp16": lambda x: quant.quantize(x, "fp16"),
    "bf16": lambda x: quant.quantize(x, "bf16"),
}


def _x() -> torch.Tensor:
    x = torch.randn(3, 5, 70, generator=torch.Generator().manual_seed(0))
    x[:, :, 7] *= 4  # an outlier column for LLM.int8()
    return x


def _tamper(qt: QuantizedTensor, **fields) -> QuantizedTensor:
    return dataclasses.replace(qt, **fields)


def _tamper_state2(qt: QuantizedTensor, **fields) -> QuantizedTensor:
    assert qt.state2 is not None
    return dataclasses.replace(qt, state2=dataclasses.replace(qt.state2, **fields))


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_internal_construction_passes(variant) -> None:
    """quantize, .to() (the "meta" device stands in for a second device) and from_bnb build valid tensors."""
    qt = VARIANTS[variant](_x())
    for device in ("cpu", "meta"):
        moved = qt.to(device)
        assert moved.device.type == device and moved.shape == qt.shape
    if qt.fmt in ("nf4", "fp4"):
        back = quant.from_bnb(*quant.to_bnb(qt))
        assert torch.equal(back.dequantize(), qt.dequantize())


# (variant, field changes, the field the error must name)
FOUR_BIT_CASES = [
    ("nf4", lambda q: {"data": q.data[:-1]}, "data"),
    ("nf4", lambda q: {"data": q.data.view(torch.int8)}, "data"),
    ("nf4", lambda q: {"data": torch.stack([q.data, q.data], 1)[:, 0]}, "data: non-contiguous"),
    ("nf4", lambda q: {"absmax": q.absmax[:-1]}, "absmax"),
    ("nf4", lambda q: {"absmax": q.absmax.half()}, "absmax"),
    ("nf4", lambda q: {"absmax": None}, "absmax"),
    ("nf4", lambda q: {"absmax": q.absmax.to("meta")}, "absmax: on meta"),
    ("nf4", lambda q: {"blocksize": 128}, "absmax"),  # a valid blocksize that the absmax length does not fit
    ("nf4", lambda q: {"blocksize": 100}, "blocksize: 100"),
    ("nf4", lambda q: {"blocksize": 64.0}, "blocksize: 64.0"),
    ("nf4", lambda q: {"blocksize": True}, "blocksize: True"),
    ("nf4", lambda q: {"blocksize": "64"}, "blocksize: '64'"),
    ("nf4", lambda q: {"blocksize": 0}, "blocksize: 0"),
    ("nf4", lambda q: {"code": q.code[:8]}, "code"),
    ("nf4", lambda q: {"code": None}, "code"),
    ("nf4", lambda q: {"fmt": "nf5"}, "fmt: 'nf5'"),
    ("nf4", lambda q: {"fmt": "int8"}, "blocksize: 64; expected 0"),
    ("nf4", lambda q: {"dtype": torch.int32}, "dtype: torch.int32"),
    ("nf4", lambda q: {"shape": torch.Size([3, 5, 71])}, "data"),
    ("nf4", lambda q: {"shape": (3, -5, 70)}, "shape"),
    ("nf4", lambda q: {"outlier_cols": torch.zeros(1, dtype=torch.int64)}, "outlier_cols"),
    ("nf4", lambda q: {"state2": "dq"}, "state2"),
    ("nf4-dq", lambda q: {"absmax": torch.zeros(17)}, "absmax"),
]
DOUBLE_QUANT_CASES = [
    ({"data": lambda s: s.data[:-1]}, "state2.data"),
    ({"data": lambda s: s.data.to(torch.int8)}, "state2.data"),
    ({"absmax": lambda s: torch.empty(0)}, "state2.absmax"),
    ({"absmax": lambda s: s.absmax.double()}, "state2.absmax"),
    ({"code": lambda s: s.code[:16]}, "state2.code"),
    ({"code": lambda s: s.code.to("meta")}, "state2.code: on meta"),
    ({"blocksize": lambda s: 100}, "state2.blocksize: 100"),
    ({"offset": lambda s: float("nan")}, "state2.offset: nan"),
    ({"offset": lambda s: None}, "state2.offset: None"),
]
INT8_CASES = [
    ("int8-row", lambda q: {"data": q.data.T}, "data"),
    ("int8-row", lambda q: {"data": q.data.view(torch.uint8)}, "data"),
    ("int8-row", lambda q: {"data": q.data.reshape(-1)}, "data"),
    ("int8-row", lambda q: {"absmax": q.absmax[:-1]}, "absmax"),
    ("int8-row", lambda q: {"absmax": None}, "absmax"),
    ("int8-row", lambda q: {"blocksize": 64}, "blocksize: 64"),
    ("int8-row", lambda q: {"code": torch.zeros(16)}, "code"),
    ("int8-row", lambda q: {"outlier_cols": torch.tensor([7])}, "outliers: None"),
    ("int8-outliers", lambda q: {"outlier_cols": q.outlier_cols.float()}, "outlier_cols"),
    ("int8-outliers", lambda q: {"outlier_cols": torch.arange(71)}, "outlier_cols: 71 columns"),
    ("int8-outliers", lambda q: {"outliers": q.outliers.float()}, "outliers"),
    ("int8-outliers", lambda q: {"outliers": q.outliers[:-1]}, "outliers"),
    ("int8-outliers", lambda q: {"outliers": q.outliers.to("meta")}, "outliers: on meta"),
    ("int8-tensor", lambda q: {"absmax": q.absmax.view(1)}, "absmax"),
    ("int8-tensor", lambda q: {"outlier_cols": torch.tensor([7]), "outliers": torch.zeros(15, 1).half()}, "per-tensor"),
    ("fp16", lambda q: {"data": q.data.float()}, "data"),
    ("fp16", lambda q: {"data": q.data.view(-1)}, "data"),
    ("bf16", lambda q: {"data": q.data.half()}, "data"),
    ("bf16", lambda q: {"absmax": torch.ones(1)}, "absmax"),
    ("bf16", lambda q: {"blocksize": 64}, "blocksize"),
]


CASES = FOUR_BIT_CASES + INT8_CASES


@pytest.mark.parametrize(("variant", "change", "field"), CASES, ids=[f"{c[0]}-{c[2]}" for c in CASES])
def test_a_field_that_does_not_fit_is_named(variant, change, field) -> None:
    qt = VARIANTS[variant](_x())
    with pytest.raises(ValueError, match=field):
        _tamper(qt, **change(qt))


@pytest.mark.parametrize("variant", ["nf4-dq", "fp4-dq"])
@pytest.mark.parametrize(("change", "field"), DOUBLE_QUANT_CASES, ids=[c[1] for c in DOUBLE_QUANT_CASES])
def test_a_double_quant_field_that_does_not_fit_is_named(variant, change, field) -> None:
    qt = VARIANTS[variant](_x())
    assert qt.state2 is not None
    with pytest.raises(ValueError, match=field):
        _tamper_state2(qt, **{name: make(qt.state2) for name, make in change.items()})


def test_errors_say_what_was_expected() -> None:
    qt = quant.quantize(torch.randn(200), "nf4", 64)
    assert qt.absmax is not None
    expected = r"absmax: torch.float32 of shape \(3,\); expected torch.float32 of shape \(4,\)"
    with pytest.raises(ValueError, match=expected):
        _tamper(qt, absmax=qt.absmax[:3])
    with pytest.raises(ValueError, match=r"data: .*expected torch.uint8 of shape \(100,\)"):
        _tamper(qt, data=qt.data[:99])


def test_int8_per_tensor_codes_of_a_permuted_input_are_contiguous() -> None:
    """Elementwise ops keep a permuted input's strides; kernels read the codes flat, so they must be contiguous."""
    x = torch.randn(64, 96).T
    qt = quant.quantize(x, "int8", int8_scheme="tensor")
    assert qt.data.is_contiguous()
    assert torch.equal(qt.data, quant.quantize(x.contiguous(), "int8", int8_scheme="tensor").data)


def _bnb_state(double_quant: bool):
    return bnbf.quantize_4bit(torch.randn(8, 200), blocksize=64, quant_type="nf4", compress_statistics=double_quant)


@pytest.mark.parametrize(
    ("double_quant", "change", "field"),
    [
        (False, lambda s: setattr(s, "absmax", s.absmax[:-1]), "quant_state.absmax"),
        (False, lambda s: setattr(s, "blocksize", 100), "quant_state.blocksize: 100"),
        (False, lambda s: setattr(s, "blocksize", 128), "quant_state.absmax"),
        (False, lambda s: setattr(s, "code", s.code[:4]), "quant_state.code"),
        (False, lambda s: setattr(s, "dtype", torch.int8), "quant_state.dtype"),
        (False, lambda s: setattr(s, "shape", torch.Size([8, 300])), "packed"),
        (True, lambda s: setattr(s, "absmax", s.absmax[:-1]), "quant_state.absmax"),
        (True, lambda s: setattr(s.state2, "absmax", s.state2.absmax[:0]), "quant_state.state2.absmax"),
        (True, lambda s: setattr(s.state2, "blocksize", 100), "quant_state.state2.blocksize"),
        (True, lambda s: setattr(s, "offset", torch.tensor(float("inf"))), "quant_state.offset"),
    ],
)
def test_from_bnb_refuses_a_state_that_does_not_fit(double_quant, change, field) -> None:
    packed, state = _bnb_state(double_quant)
    change(state)
    with pytest.raises(ValueError, match=field):
        quant.from_bnb(packed, state)


def test_from_bnb_refuses_packed_codes_of_another_type() -> None:
    packed, state = _bnb_state(False)
    with pytest.raises(ValueError, match="packed: list"):
        quant.from_bnb(packed.tolist(), state)
    with pytest.raises(ValueError, match=r"packed: torch\.int8"):
        quant.from_bnb(packed.view(torch.int8), state)
