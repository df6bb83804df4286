"""Shared test settings. Kernel-specific fixtures (the bf16 interpreter shim) live in tests/kernels/conftest.py."""

from __future__ import annotations

import pytest
import torch

from kernels.device import DEVICE


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """`gpu`-marked tests (full sweeps) run only where kernels run on a CUDA device."""
    if DEVICE.type == "cuda":
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (full sweep)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
