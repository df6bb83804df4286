"""kernels.dequant against quant/'s dequantize (Triton interpreter on the CPU).

fp16, bf16 and fp32 outputs must match bit for bit (the same fp32 product, cast once; under the interpreter bf16
rounds to nearest even through the library's own fix, kernels/interpreter.py).
"""

from __future__ import annotations

import pytest
import torch

import quant
from kernels.dequant import audit_key, audit_workloads, dequantize, dequantize_ref
from kernels.device import DEVICE

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
FORMATS = {  # id -> quantize kwargs
    "nf4": {"fmt": "nf4"},
    "nf4dq": {"fmt": "nf4", "double_quant": True},
    "fp4": {"fmt": "fp4"},
    "fp4dq-b32": {"fmt": "fp4", "double_quant": True, "blocksize": 32},
    "int8": {"fmt": "int8"},
    "int8-tensor": {"fmt": "int8", "int8_scheme": "tensor"},
    "int8-outliers": {"fmt": "int8", "outlier_threshold": 2.5},
}


@pytest.mark.parametrize("out", DTYPES)
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("shape", [(40, 128), (7, 13), (300, 72)], ids=lambda s: "x".join(map(str, s)))
def test_matches_quant(shape: tuple[int, int], fmt: str, out: str) -> None:
    w = torch.randn(shape, device=DEVICE)
    qt = quant.quantize(w, **FORMATS[fmt])  # type: ignore[arg-type]
    got = dequantize(qt, DTYPES[out])
    assert got.dtype == DTYPES[out] and got.shape == w.shape
    torch.testing.assert_close(got, dequantize_ref(qt, DTYPES[out]), rtol=0, atol=0)


def test_default_dtype_casts_and_empty() -> None:
    w = torch.randn(8, 64, dtype=torch.bfloat16, device=DEVICE)
    qt = quant.quantize(w, "nf4")
    assert dequantize(qt).dtype == torch.bfloat16
    torch.testing.assert_close(dequantize(quant.quantize(w, "fp16"), torch.float32), w.half().float())
    assert dequantize(quant.quantize(torch.empty(0, 64, device=DEVICE), "nf4")).shape == (0, 64)


def test_bad_inputs() -> None:
    qt = quant.quantize(torch.randn(8, 64, device=DEVICE), "nf4")
    with pytest.raises(TypeError, match=r"qt: Tensor; expected a quant.QuantizedTensor"):
        dequantize(torch.randn(3))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"dtype: torch.float64; expected"):
        dequantize(qt, torch.float64)


def test_audit_covers_the_launches() -> None:
    """The audit's workloads build their launches with the launcher's own code; audit_key names their config."""
    loads = audit_workloads()
    assert {w.precision for w in loads} == {"nf4", "nf4dq", "int8"}
    for w in loads:
        (launch,) = w.launches
        assert launch.options == {"enable_fp_fusion": False}  # as dequantize launches it
        assert w.bytes > 2 * w.n * w.k
    qt = quant.quantize(torch.randn(8, 64, device=DEVICE), "nf4", double_quant=True)
    assert audit_key(qt, torch.bfloat16) == "_dequantize_kernel:4bit-dq-bf16-B1024-w4"


@pytest.mark.gpu
@pytest.mark.parametrize("fmt", FORMATS)
def test_large(fmt: str) -> None:
    qt = quant.quantize(torch.randn(4096, 4104, device=DEVICE), **FORMATS[fmt])  # type: ignore[arg-type]
    for dtype in DTYPES.values():
        torch.testing.assert_close(dequantize(qt, dtype), dequantize_ref(qt, dtype), rtol=0, atol=0)
