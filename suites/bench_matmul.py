"""y = x W^T on real layer shapes, for each batch size M and each weight precision.

Providers per precision:
- fp32 / fp16 / bf16: torch (cuBLAS on a GPU), the reference provider; qkbench's kernel on a dense bf16 W too;
- nf4, nf4-dq, fp4, int8: qkbench (`kernels.matmul`: GEMV for M <= 16, tensor-core GEMM above, W dequantized on
  chip), dequant+torch (dequantize W into memory, then torch's matmul), bitsandbytes (`matmul_4bit`; LLM.int8()
  vector-wise `int8_linear_matmul` + `int8_mm_dequant`).
Activations are bf16 (fp32 / fp16 for those precisions). bitsandbytes' int8 path takes fp16 only (its CUDA
kernels refuse anything else), so it runs as its own MatMul8bitLt does, on every device alike: W cast to fp16 once
when quantized, x cast to fp16 in each call and y cast back to x's dtype (both casts timed). The error is against
x W^T in fp32 with the original, unquantized W, so it includes the format's quantization error (and for
bitsandbytes' int8 the fp16 casts: exact for bf16 values but fp16's subnormals, and y's rounding). Triton kernels
are not timed on the CPU (the interpreter): those cases are recorded as skipped.
"""

from __future__ import annotations

from typing import Any

import torch

import quant
from kernels.device import DEVICE, INTERPRET
from suites.measure import Case, Meter
from suites.metrics import matmul_cost
from suites.shapes import DTYPES, Grid, format_of, sweep

INTERPRETED = "Triton kernels are not timed under the interpreter (no GPU)"


def _impls(precision: str) -> tuple[str, ...]:
    if precision == "bf16":
        return ("torch", "qkbench")
    if precision in ("fp32", "fp16"):
        return ("torch",)
    return ("qkbench", "dequant+torch", "bitsandbytes")


def matmul_cases(grid: Grid) -> list[dict[str, Any]]:
    return [
        {"impl": impl, "precision": precision, "shape": shape.name, "M": m}
        for shape in grid.matmul_shapes
        for m in grid.matmul_m
        for precision in grid.matmul_precisions
        for impl in _impls(precision)
    ]


def _bnb(x: torch.Tensor, w: torch.Tensor, precision: str) -> Any:
    """bitsandbytes' op for this precision on the same weights: matmul_4bit, or LLM.int8()'s int8 path (fp16 in,
    as its CUDA kernels require: see the module docstring)."""
    import bitsandbytes
    import bitsandbytes.functional as F

    fmt, dq = format_of(precision)
    if fmt == "int8":
        wq, w_stats, _ = F.int8_vectorwise_quant(w.to(torch.float16))

        def int8() -> torch.Tensor:
            xq, x_stats, _ = F.int8_vectorwise_quant(x.to(torch.float16))
            return F.int8_mm_dequant(F.int8_linear_matmul(xq, wq), x_stats, w_stats).to(x.dtype)

        return int8
    packed, state = F.quantize_4bit(w, blocksize=64, compress_statistics=dq, quant_type=fmt)
    return lambda: bitsandbytes.matmul_4bit(x, packed.t(), state)


@sweep(matmul_cases)
def test_matmul(benchmark: Any, meter: Meter, grid: Grid, impl: str, precision: str, shape: str, M: int) -> None:
    from kernels.dequant import dequantize
    from kernels.matmul import audit_key, matmul, plan

    layer = grid.layer(shape)
    n, k = layer.n, layer.k
    fmt, dq = format_of(precision)
    act = precision if precision in ("fp32", "fp16") else grid.act
    flops, nbytes = matmul_cost(M, n, k, precision, act)
    case = Case("matmul", "matmul", impl, precision, shape, layer.model, M, n, k, flops=flops, bytes=nbytes)
    case.baseline = impl == "torch"
    held: dict[str, torch.Tensor] = {}

    def build() -> Any:
        gen = torch.Generator(device=DEVICE).manual_seed(0)
        dtype = DTYPES[act]
        w = (torch.randn(n, k, generator=gen, device=DEVICE) / k**0.5).to(dtype)
        x = torch.randn(M, k, generator=gen, device=DEVICE).to(dtype)
        held.update(x=x, w=w)
        if impl == "torch":
            return lambda: x @ w.T
        if impl == "bitsandbytes":
            return _bnb(x, w, precision)
        weight = w if fmt in DTYPES else quant.quantize(w, fmt, blocksize=64, double_quant=dq)
        if impl == "dequant+torch":
            assert isinstance(weight, quant.QuantizedTensor)
            deq = weight.dequantize if INTERPRET else lambda: dequantize(weight, dtype)
            return lambda: x @ deq().T
        case.kernel = audit_key(dtype, weight, plan(M, n, k, weight))
        return lambda: matmul(x, weight)

    def reference() -> torch.Tensor:
        return held["x"].float() @ held["w"].float().T

    skip = INTERPRETED if impl == "qkbench" and INTERPRET else None
    meter.run(benchmark, case, build, reference, skip=skip)
