"""What each profile sweeps: layer shapes of real models, batch sizes, LoRA ranks, precisions, sizes.

The device picks the profile (`kernels.device.default_profile`): "full" on a GPU, "quick" on a CPU, where the
Triton kernels run under the interpreter and are not timed, and where the sweep must finish in minutes on two
cores. Layer shapes come from `quant.memory.MODELS`, so the suites and the memory model agree on them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

from quant.memory import MODELS, ModelSpec, lora_params
from suites.measure import Profile
from suites.timing import Stopping

__all__ = ["DTYPES", "GRIDS", "PROFILES", "Grid", "LayerShape", "format_of", "layer_shapes", "sweep"]

F = TypeVar("F", bound=Callable[..., Any])


def sweep(params: Callable[[Grid], list[dict[str, Any]]]) -> Callable[[F], F]:
    """Mark a benchmark test with the function that lists its cases for a profile's grid: one dict of the test's
    parameters per case (suites/conftest.py parametrizes the test with them)."""

    def mark(test: F) -> F:
        test._qkbench_sweep = params  # type: ignore[attr-defined]
        return test

    return mark


@dataclass(frozen=True)
class LayerShape:
    """A linear layer y = x W^T with W of shape (N, K); `name` reads "llama2-7b.q_proj" (projections with the
    same (N, K) are listed once, under the first name and a '+' of the others)."""

    name: str
    model: str | None
    n: int
    k: int


def layer_shapes(model: str) -> list[LayerShape]:
    """The distinct (N, K) projections of a model's transformer block, named after the projections."""
    by_shape: dict[tuple[int, int], list[str]] = {}
    for proj, nk in MODELS[model].linears().items():
        by_shape.setdefault(nk, []).append(proj.removesuffix("_proj"))
    return [LayerShape(f"{model}.{'+'.join(names)}", model, n, k) for (n, k), names in by_shape.items()]


@dataclass(frozen=True)
class Grid:
    """The cases a profile sweeps, per suite."""

    # quantize: (N, K) matrices; 4-bit and int8 formats against bitsandbytes, casts against torch
    quantize_shapes: tuple[tuple[int, int], ...]
    quantize_formats: tuple[str, ...]
    # matmul: layer shapes x M x precision, activations in `act`
    matmul_shapes: tuple[LayerShape, ...]
    matmul_m: tuple[int, ...]
    matmul_precisions: tuple[str, ...]
    act: str
    # LoRA: one layer shape, M, ranks, base precisions
    lora_shape: LayerShape
    lora_m: tuple[int, ...]
    lora_ranks: tuple[int, ...]
    lora_bases: tuple[str, ...]
    # optimizers: (label, parameter count) of LoRA adapter sets (q and v adapted in every layer)
    optim_params: tuple[tuple[str, int], ...]
    # memory: the models of the memory table and the LoRA ranks; `memory_measured` is trained for real
    memory_models: tuple[str, ...]
    memory_ranks: tuple[int, ...]
    memory_measured: ModelSpec

    def layer(self, name: str) -> LayerShape:
        """The matmul or LoRA layer shape of that name."""
        for shape in (*self.matmul_shapes, self.lora_shape):
            if shape.name == name:
                return shape
        raise KeyError(f"shape: {name!r} is not in this grid")


# When the rounds stop (suites/timing.py). full, a GPU's: nvbench's 0.5% noise target, 10 rounds at least and a
# 15 s timeout; its 0.5 s minimum becomes 0.1 s of rounds (wall time) because the full grid holds about 1,600
# timed cases; max_rounds caps µs ops (a round costs a flush, a spin and an NVML read besides the op). quick, the
# CPU's: a looser 3% target and few rounds, because each round first writes twice the CPU's last-level cache
# (hundreds of MiB on a server part), so a 1.5 s timeout, 6 rounds at least (what the regression gate needs to
# decide), bounds a case; no warm-up rounds (the first call has run the op, and a CPU has no clocks to ramp up).
PROFILES: dict[str, Profile] = {
    "quick": Profile("quick", warmup_rounds=0, stopping=Stopping(0.03, 6, 50, min_time_s=0.0, timeout_s=1.5)),
    "full": Profile("full", warmup_rounds=5, stopping=Stopping(0.005, 10, 5000, min_time_s=0.1, timeout_s=15.0)),
}

_TINY = ModelSpec("tiny-2x512", n_layers=2, d_model=512, d_ff=1408, n_heads=8, n_kv_heads=8, vocab=1000)
_FULL_SHAPES = tuple(s for m in ("llama2-7b", "llama3-8b", "llama2-70b") for s in layer_shapes(m))
_LLAMA2_7B_ATTN = layer_shapes("llama2-7b")[0]  # q/k/v/o: 4096 x 4096

GRIDS: dict[str, Grid] = {
    "quick": Grid(
        quantize_shapes=((1024, 1024), (4096, 4096)),
        quantize_formats=("nf4", "nf4-dq", "fp4", "int8", "fp16", "bf16"),
        matmul_shapes=(_LLAMA2_7B_ATTN, layer_shapes("llama3-8b")[1]),  # 4096 x 4096, 1024 x 4096 (k/v)
        matmul_m=(1, 16, 256),
        matmul_precisions=("fp32", "bf16", "nf4", "nf4-dq", "int8"),
        act="bf16",
        lora_shape=LayerShape("1024x1024", None, 1024, 1024),
        lora_m=(1, 256),
        lora_ranks=(1, 8, 64),
        lora_bases=("bf16", "nf4"),
        optim_params=(("lora-r8.llama2-7b", lora_params(MODELS["llama2-7b"], 8)),),
        memory_models=("llama-7b", "llama-13b", "llama-33b", "llama-65b", "llama2-70b", "gpt3-175b"),
        memory_ranks=(8, 64),
        memory_measured=_TINY,
    ),
    "full": Grid(
        quantize_shapes=((4096, 4096), (8192, 8192), (28672, 8192)),
        quantize_formats=("nf4", "nf4-dq", "fp4", "fp4-dq", "int8", "fp16", "bf16"),
        matmul_shapes=_FULL_SHAPES,
        matmul_m=(1, 4, 16, 64, 256, 1024, 4096),
        matmul_precisions=("fp32", "fp16", "bf16", "nf4", "nf4-dq", "fp4", "int8"),
        act="bf16",
        lora_shape=_LLAMA2_7B_ATTN,
        lora_m=(1, 4096),
        lora_ranks=(1, 2, 4, 8, 16, 32, 64, 128, 256),
        lora_bases=("bf16", "nf4", "int8"),
        optim_params=(
            ("lora-r16.llama2-7b", lora_params(MODELS["llama2-7b"], 16)),
            ("lora-r64.llama2-70b", lora_params(MODELS["llama2-70b"], 64)),
        ),
        memory_models=("llama-7b", "llama-13b", "llama-33b", "llama-65b", "llama2-70b", "llama3-70b", "gpt3-175b"),
        memory_ranks=(8, 64),
        memory_measured=_TINY,
    ),
}


def format_of(precision: str) -> tuple[str, bool]:
    """A precision name -> (quant format, double quantization): "nf4-dq" -> ("nf4", True), "bf16" -> ("bf16", False)."""
    fmt, _, dq = precision.partition("-")
    return fmt, dq == "dq"


DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
