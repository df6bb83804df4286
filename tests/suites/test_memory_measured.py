"""The memory suite's measured training state against quant.memory's model of it (CPU: tracked_bytes)."""

from __future__ import annotations

import pytest

from quant.blockwise import CODEBOOKS_4BIT
from quant.codebooks import dynamic_map
from suites.bench_memory import _info, _training_state
from suites.measure import tracked_bytes
from suites.shapes import GRIDS


@pytest.mark.parametrize("method", ["full", "lora", "qlora"])
def test_measured_state_is_the_model_plus_shared_constants(method: str) -> None:
    """Every byte the model counts is held, once, and nothing else but constants shared by all tensors: the
    optimizer's two 8-bit maps, and for QLoRA the NF4 codebook (double quantization's map is the optimizer's
    signed map, the same tensor) less the 4-byte offset that the model counts per tensor (bitsandbytes stores
    it as a tensor; here it is a Python float)."""
    spec, rank = GRIDS["quick"].memory_measured, 8
    model = _info(spec, method, rank if method != "full" else None)["total_bytes"]
    measured = tracked_bytes(*_training_state(spec, method, rank))
    maps = sum(dynamic_map(signed=s).numel() * 4 for s in (True, False))
    extra = maps
    if method == "qlora":
        quantized = spec.n_layers * len(spec.linears())
        extra += CODEBOOKS_4BIT["nf4"].code.numel() * 4 - 4 * quantized
    assert measured - model == extra
