"""The memory suite's measured training state against quant.memory's model of it (CPU: tracked_bytes).

Built on the CPU whatever DEVICE is: tracked_bytes is how the suite measures on the CPU, and its exact storage
bytes are what this checks (on CUDA the suite reads the allocator instead, whose 512-byte blocks and per-device
shared constants, allocated once before any case, make an exact equality meaningless)."""

from __future__ import annotations

import pytest
import torch

import suites.bench_memory
from quant.blockwise import CODEBOOKS_4BIT
from quant.codebooks import dynamic_map
from suites.bench_memory import _info, _training_state
from suites.measure import tracked_bytes
from suites.shapes import GRIDS


@pytest.mark.parametrize("method", ["full", "lora", "qlora"])
def test_measured_state_is_the_model_plus_shared_constants(method: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every byte the model counts is held, once, and nothing else but constants shared by all tensors: the
    optimizer's two 8-bit maps, and for QLoRA the NF4 codebook (double quantization's map is the optimizer's
    signed map, the same tensor) less the 4-byte offset that the model counts per tensor (bitsandbytes stores
    it as a tensor; here it is a Python float)."""
    monkeypatch.setattr(suites.bench_memory, "DEVICE", torch.device("cpu"))  # the CPU's measurement, on any box
    spec, rank = GRIDS["quick"].memory_measured, 8
    model = _info(spec, method, rank if method != "full" else None)["total_bytes"]
    measured = tracked_bytes(*_training_state(spec, method, rank))
    maps = sum(dynamic_map(signed=s).numel() * 4 for s in (True, False))
    extra = maps
    if method == "qlora":
        quantized = spec.n_layers * len(spec.linears())
        extra += CODEBOOKS_4BIT["nf4"].code.numel() * 4 - 4 * quantized
    assert measured - model == extra
