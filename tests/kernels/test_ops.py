"""kernels/ops.py: the custom ops pass torch.library.opcheck (schema, autograd registration, fake tensors, AOT
dispatch with dynamic shapes; under the Triton interpreter on a CPU), compute what the eager launchers compute, and
let torch.compile trace a LoRALinear model in one graph."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import quant
from kernels import ops
from kernels.device import DEVICE
from kernels.lora import LoRAAdapter, LoRALinear, lora_linear

K, N, R, M = 64, 48, 4, 6  # small: opcheck runs each op several times


def _weight(fmt: str) -> quant.QuantizedTensor | torch.Tensor:
    w = torch.randn(N, K, device=DEVICE) / K**0.5
    if fmt == "dense":
        return w
    if fmt == "int8-outliers":
        w[:, 3] *= 100.0
        return quant.quantize(w, "int8", outlier_threshold=6.0)
    if fmt == "nf4-dq":
        return quant.quantize(w, "nf4", 64, double_quant=True)
    return quant.quantize(w, fmt, 64)


def _lora_args(fmt: str, dropout: bool) -> tuple:  # type: ignore[type-arg]
    x = torch.randn(2, M // 2, K, device=DEVICE, requires_grad=True)
    a = torch.randn(R, K, device=DEVICE, requires_grad=True)
    b = torch.randn(N, R, device=DEVICE, requires_grad=True)
    bias = torch.randn(N, device=DEVICE, requires_grad=True)
    mask = torch.rand(x.shape, device=DEVICE) >= 0.25 if dropout else None
    return (x, a, b, bias, *ops.weight_args(_weight(fmt)), 0.5, mask, 1 / 0.75 if dropout else 1.0)


@pytest.mark.parametrize("fmt", ["nf4-dq", "fp4", "int8-outliers"])
def test_opcheck_dequantize(fmt: str) -> None:
    torch.library.opcheck(torch.ops.qkbench.dequantize.default, (*ops.weight_args(_weight(fmt)), torch.float32))


@pytest.mark.parametrize("fmt", ["nf4-dq", "int8", "dense"])
def test_opcheck_matmul(fmt: str) -> None:
    x = torch.randn(M, K, device=DEVICE, requires_grad=True)
    bias = torch.randn(N, device=DEVICE, requires_grad=True)
    torch.library.opcheck(torch.ops.qkbench.matmul.default, (x, *ops.weight_args(_weight(fmt)), bias))


@pytest.mark.parametrize(("fmt", "dropout"), [("nf4-dq", False), ("dense", True)])
def test_opcheck_lora_fwd_and_bwd(fmt: str, dropout: bool) -> None:
    args = _lora_args(fmt, dropout)
    torch.library.opcheck(torch.ops.qkbench.lora_fwd.default, args)
    x, a, b, bias, *rest = args
    y, xa = torch.ops.qkbench.lora_fwd(*args)
    dy = torch.randn_like(y)
    bwd_args = (dy, x.detach(), a.detach(), b.detach(), xa, bias.detach(), *rest[:-3], *rest[-3:], [True] * 4)
    torch.library.opcheck(torch.ops.qkbench.lora_bwd.default, bwd_args)


@pytest.mark.parametrize("fmt", ["nf4-dq", "int8", "dense"])
def test_ops_compute_what_the_launchers_compute(fmt: str) -> None:
    """The ops run LoRAFunction's own forward and backward: the same kernels, so the same bits."""
    w = _weight(fmt)
    x = torch.randn(M, K, device=DEVICE, requires_grad=True)
    a = torch.randn(R, K, device=DEVICE, requires_grad=True)
    b = torch.randn(N, R, device=DEVICE, requires_grad=True)
    bias = torch.randn(N, device=DEVICE, requires_grad=True)
    dy = torch.randn(M, N, device=DEVICE)
    results = []
    for fn in (lora_linear, ops.lora_linear):
        y = fn(x, w, LoRAAdapter(a, b, 0.5), bias=bias)
        grads = torch.autograd.grad(y, (x, a, b, bias), dy)
        results.append((y.detach(), *grads))
    for got, want in zip(*results, strict=True):
        assert torch.equal(got, want)
    y = ops.matmul(x, w, bias)
    assert torch.equal(y, torch.ops.qkbench.matmul(x, *ops.weight_args(w), bias))
    dx, dbias = torch.autograd.grad(y, (x, bias), dy)
    w_dense = w.dequantize(torch.float32) if isinstance(w, quant.QuantizedTensor) else w
    torch.testing.assert_close(dx, dy @ w_dense)
    torch.testing.assert_close(dbias, dy.sum(0))


class _Model(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.up = LoRALinear.from_linear(nn.Linear(K, N, device=DEVICE), R, 8, quant="nf4", dropout=0.0)
        self.down = LoRALinear.from_linear(nn.Linear(N, K, device=DEVICE), R, 8)
        for layer in (self.up, self.down):
            with torch.no_grad():
                layer.lora_B["default"].normal_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.down(torch.relu(self.up(x)))


def _compiled_matches_eager(backend: str) -> None:
    torch._dynamo.reset()
    model = _Model()
    x = torch.randn(2, M, K, device=DEVICE)
    compiled = torch.compile(model, backend=backend, fullgraph=True)  # fullgraph: a graph break is an error
    outputs = []
    for fn in (model, compiled):
        model.zero_grad()
        y = fn(x)
        y.square().sum().backward()
        outputs.append((y.detach(), *(p.grad.clone() for p in model.parameters() if p.grad is not None)))
    assert len(outputs[0]) == 5  # y and the four adapter gradients
    for got, want in zip(*outputs, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    model.down.merge()  # the merged layer is traced too (the qkbench::matmul op)
    torch.testing.assert_close(compiled(x), model(x), rtol=1e-5, atol=1e-5)


def test_compile_traces_lora_model_in_one_graph() -> None:
    """aot_eager: Dynamo and AOTAutograd (the tracing that must not break) without Inductor's code generation,
    which on a CPU needs a C++ toolchain; the GPU test below runs Inductor itself."""
    _compiled_matches_eager("aot_eager")


@pytest.mark.gpu
def test_compile_inductor_on_gpu() -> None:
    _compiled_matches_eager("inductor")
