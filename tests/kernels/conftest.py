"""Kernel-test fixtures: the bf16 shim for Triton's CPU interpreter.

Triton's interpreter stores bf16 tensors as their uint16 bit patterns, and
- its `create_dot` multiplies those patterns as integers (triton#11584; fp16 and fp32 are exact): bf16
  operands are decoded to fp32 (exact, as a tensor core consumes them) before the product;
- its fp32 -> bf16 cast (`x.to(tl.bfloat16)`, a bf16 store) truncates, where the GPU's cvt.rn.bf16.f32
  rounds to nearest even: the cast is redone with torch's round-to-nearest-even.
Both patches apply under the interpreter only; compiled GPU code is untouched.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from kernels.device import INTERPRET


def _decode_bf16(handle):  # type: ignore[no-untyped-def]
    """An interpreter TensorHandle of bf16 bit patterns as an fp32 handle (bf16 is the top half of fp32)."""
    from triton.runtime import interpreter as itp

    if handle.dtype.scalar.name != "bf16":
        return handle
    f32 = (handle.data.astype(np.uint32) << 16).view(np.float32)
    return itp.TensorHandle(f32, itp.tl.float32)


def bf16_dot_shim(monkeypatch: pytest.MonkeyPatch) -> None:
    """Patch the interpreter: bf16 dot operands decoded to fp32 first; fp32 -> bf16 casts round to nearest even."""
    import torch
    from triton.runtime import interpreter as itp

    original_dot = itp.InterpreterBuilder.create_dot
    original_cast = itp.InterpreterBuilder.cast_impl

    def create_dot(self, a, b, d, input_precision, max_num_imprecise_acc):  # type: ignore[no-untyped-def]
        return original_dot(self, _decode_bf16(a), _decode_bf16(b), d, input_precision, max_num_imprecise_acc)

    def cast_impl(self, src, dst_type):  # type: ignore[no-untyped-def]
        if src.dtype.scalar.name == "fp32" and dst_type.scalar.name == "bf16":
            rounded = torch.from_numpy(np.ascontiguousarray(src.data)).to(torch.bfloat16)
            return itp.TensorHandle(rounded.view(torch.int16).numpy().view(np.uint16), dst_type.scalar)
        return original_cast(self, src, dst_type)

    monkeypatch.setattr(itp.InterpreterBuilder, "create_dot", create_dot)
    monkeypatch.setattr(itp.InterpreterBuilder, "cast_impl", cast_impl)


@pytest.fixture(autouse=True)
def _interpreter_bf16_shim(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every kernel test runs with the shim under the interpreter (`monkeypatch.undo()` in a test removes it)."""
    if INTERPRET:
        bf16_dot_shim(monkeypatch)
    yield
