"""Model and training memory: full fine-tuning vs LoRA vs QLoRA, from quant/'s memory model, checked by a run.

test_training_memory records `quant.memory.training_memory` for each model, method and rank (impl "model":
computed, not timed; activations are not modelled). test_training_memory_measured builds a small model's
training state for real (16-bit weights or an NF4 + double-quant base, adapters on every projection, gradients,
PagedAdamW states after one step) and records the bytes it holds (CUDA: the allocator's count; the CPU: the
tensors' storage) beside the model's prediction for the same spec.
"""

from __future__ import annotations

from typing import Any

import torch

import quant
from kernels.device import DEVICE
from quant.memory import MODELS, ModelSpec, training_memory
from quant.optim import PagedAdamW
from suites.measure import Case, Meter, tracked_bytes
from suites.shapes import Grid, sweep

PRECISION = {"full": "bf16", "lora": "bf16", "qlora": "nf4-dq"}


def memory_cases(grid: Grid) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for model in grid.memory_models:
        rows.append({"method": "full", "shape": model, "rank": None})
        rows += [{"method": m, "shape": model, "rank": r} for m in ("lora", "qlora") for r in grid.memory_ranks]
    return rows


def _info(spec: ModelSpec, method: str, rank: int | None) -> dict[str, Any]:
    mem = training_memory(spec, method, rank=rank or 64, targets="all")  # type: ignore[arg-type]
    return {
        "method": method,
        "params": spec.n_params,
        "weights_bytes": mem.weights,
        "gradients_bytes": mem.gradients,
        "optimizer_bytes": mem.optimizer,
        "adapters_bytes": mem.adapters,
        "activations_bytes": mem.activations,
        "total_bytes": mem.total,
    }


@sweep(memory_cases)
def test_training_memory(benchmark: Any, meter: Meter, method: str, shape: str, rank: int | None) -> None:
    spec = MODELS[shape]
    case = Case("memory", "training_memory", "model", PRECISION[method], shape, shape, rank=rank)
    meter.record(benchmark, case, **_info(spec, method, rank), measured_bytes=None)


def measured_cases(grid: Grid) -> list[dict[str, Any]]:
    rank = grid.memory_ranks[0]
    return [{"method": m, "rank": None if m == "full" else rank} for m in ("full", "lora", "qlora")]


def _training_state(spec: ModelSpec, method: str, rank: int) -> list[Any]:
    """Everything a training step of `spec` keeps: weights, adapters, gradients, optimizer (after one step)."""
    gen = torch.Generator(device=DEVICE).manual_seed(0)

    def randn(*shape: int) -> torch.Tensor:
        return (torch.randn(*shape, generator=gen, device=DEVICE) * 0.02).to(torch.bfloat16)

    others = [
        randn(spec.vocab, spec.d_model),
        randn(spec.vocab, spec.d_model),
        randn(2 * spec.n_layers + 1, spec.d_model),
    ]
    linears = [randn(n, k) for _ in range(spec.n_layers) for n, k in spec.linears().values()]
    held: list[Any] = []
    if method == "full":
        trainable = [torch.nn.Parameter(t) for t in (*linears, *others)]
    else:
        base = linears if method == "lora" else [quant.quantize(w, "nf4", 64, double_quant=True) for w in linears]
        held += [base, others]
        trainable = []
        for w in linears:
            trainable += [torch.nn.Parameter(randn(rank, w.shape[1])), torch.nn.Parameter(randn(w.shape[0], rank))]
        del linears
    for p in trainable:
        p.grad = torch.zeros_like(p)
    opt = PagedAdamW(trainable, state_bits=32)
    opt.step()
    return [*held, trainable, [p.grad for p in trainable], opt]  # tracked_bytes counts opt's states once


@sweep(measured_cases)
def test_training_memory_measured(benchmark: Any, meter: Meter, grid: Grid, method: str, rank: int | None) -> None:
    spec = grid.memory_measured
    case = Case("memory", "training_memory", "measured", PRECISION[method], spec.name, spec.name, rank=rank)
    info = _info(spec, method, rank)
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        state = _training_state(spec, method, rank or 64)
        torch.cuda.synchronize()
        measured = torch.cuda.memory_allocated() - before  # the optimizer's device states are in this count
    else:
        state = _training_state(spec, method, rank or 64)
        measured = tracked_bytes(*state)
    del state
    meter.record(benchmark, case, **info, measured_bytes=measured)
