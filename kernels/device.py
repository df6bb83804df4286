"""The one place that asks "is there a GPU?".

Imported first by `kernels/__init__.py`, before any `@triton.jit` runs: without a CUDA device it selects
Triton's CPU interpreter (TRITON_INTERPRET=1, unless the caller already chose), so the same kernels run on a
laptop, a CI runner and an H100; under the interpreter it makes bf16 exact (kernels/interpreter.py). Everything
else (tests, suites, reports' environment table) reads the answers below instead of probing torch.cuda itself.
"""

from __future__ import annotations

import os
from typing import Literal

import torch

__all__ = ["DEVICE", "HAS_CUDA", "INTERPRET", "Profile", "default_profile", "device_name"]

# Triton 3.9 warns that its default (fused multiply-add, FMA) changes in 3.10; the kernels are written and
# audited with fusion on, so say so explicitly (a caller's own setting wins).
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
HAS_CUDA: bool = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")
INTERPRET: bool = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
if INTERPRET:  # the interpreter's bf16 dot and cast made exact, for every caller (kernels/interpreter.py)
    from kernels import interpreter

    interpreter.install()
# Where kernels run: the GPU when there is one (and the interpreter is not forced), else the CPU.
DEVICE: torch.device = torch.device("cuda" if HAS_CUDA and not INTERPRET else "cpu")

Profile = Literal["quick", "full"]


def default_profile() -> Profile:
    """The benchmark profile the device implies: the full matrix on a GPU, the quick one on a CPU."""
    return "full" if DEVICE.type == "cuda" else "quick"


def device_name() -> str:
    """A human name for DEVICE, e.g. 'NVIDIA H100 80GB HBM3' or 'cpu (2 threads)'."""
    if DEVICE.type == "cuda":
        return torch.cuda.get_device_name(DEVICE)
    return f"cpu ({torch.get_num_threads()} threads)"
