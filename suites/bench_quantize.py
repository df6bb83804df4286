"""Quantize and dequantize throughput, every format: qkbench vs bitsandbytes vs torch casts.

quantize: an fp32 (N, K) matrix into the format. qkbench is `quant.quantize` (torch; on the CPU its threshold
table path); bitsandbytes is `quantize_4bit` / `int8_vectorwise_quant`, the latter after the fp16 cast its CUDA
kernel requires (timed: bitsandbytes' Int8Params casts the same way; done on every device alike); torch is the
cast (the reference provider, `baseline`). Each 4-bit and int8 case also records its accuracy on these Gaussian
weights (RMSE, SQNR, bits per parameter).
dequantize: the stored format back to bf16. qkbench is the Triton kernel (`kernels.dequantize`) on a GPU, and
quant/'s torch path on the CPU, where Triton kernels run under the interpreter and are not timed.
"""

from __future__ import annotations

import math
from typing import Any

import torch

import quant
from kernels.device import DEVICE
from suites.measure import Case, Meter
from suites.metrics import dequantize_cost, quantize_cost
from suites.shapes import DTYPES, Grid, format_of, sweep

FOUR_BIT = ("nf4", "nf4-dq", "fp4", "fp4-dq")


def _impls(precision: str) -> tuple[str, ...]:
    if precision in ("fp16", "bf16"):
        return ("qkbench", "torch")
    return ("qkbench", "bitsandbytes")


def quantize_cases(grid: Grid) -> list[dict[str, Any]]:
    return [
        {"impl": impl, "precision": precision, "shape": f"{n}x{k}"}
        for n, k in grid.quantize_shapes
        for precision in grid.quantize_formats
        for impl in _impls(precision)
    ]


def _weights(shape: str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    n, k = map(int, shape.split("x"))
    gen = torch.Generator(device=DEVICE).manual_seed(0)
    return torch.randn(n, k, generator=gen, device=DEVICE).to(dtype)


def _bnb_quantize(w: torch.Tensor, precision: str) -> Any:
    import bitsandbytes.functional as F

    fmt, dq = format_of(precision)
    if fmt == "int8":  # fp16 only on CUDA ("A must be float16"); the cast is part of bitsandbytes' quantization
        return lambda: F.int8_vectorwise_quant(w.to(torch.float16))
    return lambda: F.quantize_4bit(w, blocksize=64, compress_statistics=dq, quant_type=fmt)


def _accuracy(w: torch.Tensor, w_hat: torch.Tensor, qt: quant.QuantizedTensor) -> dict[str, float]:
    """RMSE, SQNR (dB) and exact bits per parameter of one quantized matrix."""
    err = (w_hat.float() - w.float()).pow(2).mean().item()
    signal = w.float().pow(2).mean().item()
    return {
        "rmse": math.sqrt(err),
        "sqnr_db": 10 * math.log10(signal / err) if err > 0 else math.inf,
        "bits_per_param": qt.bits_per_param,
        "numel": qt.numel,
    }


@sweep(quantize_cases)
def test_quantize(benchmark: Any, meter: Meter, impl: str, precision: str, shape: str) -> None:
    n, k = map(int, shape.split("x"))
    fmt, dq = format_of(precision)
    flops, nbytes = quantize_cost(n, k, precision, source="fp32")
    case = Case("quantize", "quantize", impl, precision, shape, N=n, K=k, flops=flops, bytes=nbytes)
    case.baseline = impl == "torch"

    def build() -> Any:
        w = _weights(shape)
        qt = quant.quantize(w, fmt, blocksize=64, double_quant=dq)
        case.extra.update(_accuracy(w, qt.dequantize(torch.float32), qt))
        if impl == "torch":
            return lambda: w.to(DTYPES[fmt])
        if impl == "bitsandbytes":
            return _bnb_quantize(w, precision)
        return lambda: quant.quantize(w, fmt, blocksize=64, double_quant=dq)

    meter.run(benchmark, case, build)


def dequantize_cases(grid: Grid) -> list[dict[str, Any]]:
    rows = []
    for n, k in grid.quantize_shapes:
        for precision in grid.quantize_formats:
            impls = ("qkbench", "bitsandbytes") if precision in FOUR_BIT else ("qkbench",)
            impls = ("torch",) if precision in ("fp16", "bf16") else impls
            rows += [{"impl": impl, "precision": precision, "shape": f"{n}x{k}"} for impl in impls]
    return rows


@sweep(dequantize_cases)
def test_dequantize(benchmark: Any, meter: Meter, impl: str, precision: str, shape: str) -> None:
    from kernels.dequant import audit_key, dequantize

    n, k = map(int, shape.split("x"))
    fmt, dq = format_of(precision)
    flops, nbytes = dequantize_cost(n, k, precision, out="bf16")
    case = Case("quantize", "dequantize", impl, precision, shape, N=n, K=k, flops=flops, bytes=nbytes)
    case.baseline = impl == "torch"
    on_gpu = DEVICE.type == "cuda"
    qt: list[quant.QuantizedTensor] = []

    def build() -> Any:
        w = _weights(shape, torch.bfloat16)
        qt.append(quant.quantize(w, fmt, blocksize=64, double_quant=dq))
        q = qt[0]
        if impl == "torch":  # a 16-bit cast: fp16 -> bf16 (bf16 -> fp32 for bf16)
            out = torch.float32 if fmt == "bf16" else torch.bfloat16
            return lambda: q.data.to(out)
        if impl == "bitsandbytes":
            import bitsandbytes.functional as F

            packed, state = quant.to_bnb(q)
            return lambda: F.dequantize_4bit(packed, state)
        if on_gpu:
            case.kernel = audit_key(q, torch.bfloat16)
            return lambda: dequantize(q, torch.bfloat16)
        return lambda: q.dequantize(torch.bfloat16)

    meter.run(benchmark, case, build, reference=lambda: qt[0].dequantize(torch.float32))
