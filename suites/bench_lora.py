"""LoRA and QLoRA layers, y = x W^T + s (x A^T) B^T, forward and forward+backward, across ranks.

Providers:
- qkbench: `kernels.LoRALinear` (fused forward through kernels.matmul's LoRA epilogue, fused backward kernels);
- unfused: the same layer in plain torch (a quantized W is dequantized into memory each call, then three
  matmuls), the reference provider (`baseline`).
Bases: bf16, NF4 with double quantization (QLoRA) and int8 (row-wise). Each (op, base, M) also has a case without
an adapter (rank empty: the base layer alone; forward+backward then computes dx only), from which the report
derives the LoRA overhead of every rank. B is drawn at random (not peft's zero start) so the adapter path
carries real values. peft is not a dependency; its layer is not measured here.
"""

from __future__ import annotations

from typing import Any, Literal

import torch

import quant
from kernels.dequant import dequantize
from kernels.device import DEVICE, INTERPRET
from kernels.matmul import LORA_MAX_FUSED_R, audit_key, plan
from suites.bench_matmul import INTERPRETED
from suites.measure import Case, Meter
from suites.metrics import lora_cost
from suites.shapes import DTYPES, Grid, sweep

PRECISION = {"bf16": "bf16", "nf4": "nf4-dq", "int8": "int8"}  # base -> precision name (QLoRA: NF4 + DQ)
QUANT: dict[str, Literal["nf4", "int8"] | None] = {"bf16": None, "nf4": "nf4", "int8": "int8"}
OPS = {"lora_fwd": False, "lora_fwd_bwd": True}  # op -> with backward


def lora_cases(grid: Grid) -> list[dict[str, Any]]:
    rows = []
    for op in OPS:
        for base in grid.lora_bases:
            for m in grid.lora_m:
                for rank in (None, *grid.lora_ranks):
                    impls = ("unfused",) if rank is None and OPS[op] else ("qkbench", "unfused")
                    rows += [
                        {"op": op, "impl": impl, "precision": PRECISION[base], "M": m, "rank": rank} for impl in impls
                    ]
    return rows


class _Unfused(torch.nn.Module):
    """The plain-torch layer: W dequantized into memory when quantized, then x W^T + s (x A^T) B^T."""

    def __init__(self, w: quant.QuantizedTensor | torch.Tensor, a: torch.Tensor | None, b: torch.Tensor | None, s):
        super().__init__()
        self.w, self.s = w, s
        self.a = None if a is None else torch.nn.Parameter(a.clone())
        self.b = None if b is None else torch.nn.Parameter(b.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.w
        if isinstance(w, quant.QuantizedTensor):  # on a GPU by the Triton kernel: a fair dequantize-then-matmul
            w = w.dequantize(x.dtype) if INTERPRET else dequantize(w, x.dtype)
        y = x @ w.T
        if self.a is not None and self.b is not None:
            y = y + self.s * ((x @ self.a.T) @ self.b.T)
        return y


def _layer(impl: str, w: torch.Tensor, precision: str, rank: int | None, gen: torch.Generator) -> torch.nn.Module:
    from kernels.lora import LoRALinear

    base = precision.split("-")[0]
    n, k = w.shape
    if impl == "qkbench" and rank:
        linear = torch.nn.Linear(k, n, bias=False, device=DEVICE, dtype=w.dtype)
        linear.weight.data.copy_(w)
        layer = LoRALinear.from_linear(linear, rank, alpha=2 * rank, quant=QUANT[base])
        layer.lora_B["default"].data.copy_(torch.randn(n, rank, generator=gen, device=DEVICE) * 0.01)
        return layer
    weight: quant.QuantizedTensor | torch.Tensor = w
    if base != "bf16":
        weight = quant.quantize(w, base, blocksize=64, double_quant=base == "nf4")
    if impl == "qkbench":  # rank-less: the fused matmul alone
        from kernels.matmul import matmul

        class _Base(torch.nn.Module):
            def forward(self, x: torch.Tensor) -> torch.Tensor:
                return matmul(x, weight)  # type: ignore[return-value]  # a tensor without return_xa

        return _Base()
    if not rank:
        return _Unfused(weight, None, None, 0.0)
    a = torch.empty(rank, k, device=DEVICE, dtype=w.dtype)
    torch.nn.init.kaiming_uniform_(a, a=5**0.5, generator=gen)
    b = (torch.randn(n, rank, generator=gen, device=DEVICE) * 0.01).to(w.dtype)
    return _Unfused(weight, a, b, 2.0)


@sweep(lora_cases)
def test_lora(benchmark: Any, meter: Meter, grid: Grid, op: str, impl: str, precision: str, M: int, rank: int | None):
    layer_shape = grid.lora_shape
    n, k = layer_shape.n, layer_shape.k
    backward = OPS[op]
    flops, nbytes = lora_cost(M, n, k, rank or 0, precision, grid.act, backward=backward)
    case = Case("lora", op, impl, precision, layer_shape.name, layer_shape.model, M, n, k, rank, flops, nbytes)
    case.baseline = impl == "unfused"
    held: dict[str, Any] = {}

    def build() -> Any:
        gen = torch.Generator(device=DEVICE).manual_seed(0)
        dtype = DTYPES[grid.act]
        w = (torch.randn(n, k, generator=gen, device=DEVICE) / k**0.5).to(dtype)
        x = torch.randn(M, k, generator=gen, device=DEVICE).to(dtype).requires_grad_(backward)
        layer = _layer(impl, w, precision, rank, gen)
        held.update(x=x, w=w, layer=layer)
        if impl == "qkbench":  # the forward kernel's audit row (the fused epilogue's; rank > 64: the base's)
            base = getattr(layer, "quantized", None) or getattr(layer, "weight", None)
            if base is not None:
                fused = rank if rank and rank <= LORA_MAX_FUSED_R else 0
                case.kernel = audit_key(dtype, base, plan(M, n, k, base, fused))
        if not backward:
            return torch.no_grad()(lambda: layer(x))
        dy = torch.randn(M, n, generator=gen, device=DEVICE).to(dtype)

        def fwd_bwd() -> torch.Tensor:
            y = layer(x)
            y.backward(dy)
            return y.detach()

        return fwd_bwd

    def reference() -> torch.Tensor:
        """x W^T + s (x A^T) B^T in fp32 with the original, unquantized W and the layer's own A, B, s."""
        layer, x = held["layer"], held["x"].detach().float()
        y = x @ held["w"].float().T
        if isinstance(layer, _Unfused) and layer.a is not None and layer.b is not None:
            y += layer.s * (x @ layer.a.detach().float().T) @ layer.b.detach().float().T
        elif hasattr(layer, "adapter") and rank:
            adapter = layer.adapter()
            y += adapter.scale * (x @ adapter.a.detach().float().T) @ adapter.b.detach().float().T
        return y

    skip = INTERPRETED if impl == "qkbench" and INTERPRET else None
    meter.run(benchmark, case, build, reference, skip=skip)
