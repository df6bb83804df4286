"""Triton's CPU interpreter made exact for bf16, applied once by kernels/device.py whenever the interpreter runs.

The interpreter stores bf16 tensors as their uint16 bit patterns, and
- its `create_dot` multiplies those patterns as integers (triton#11584, not fixed upstream; fp16 and fp32 are
  exact): bf16 operands are decoded to fp32 first (exact, as a tensor core consumes them);
- its fp32 -> bf16 cast (`x.to(tl.bfloat16)`, a bf16 store) truncates, where the GPU's cvt.rn.bf16.f32 rounds to
  nearest even: the cast is redone with torch's round-to-nearest-even;
- its casts between bf16 and integers (or fp16 and other types) reinterpret the bit patterns as numbers (an int8
  -3 became the bf16 pattern 0xfffd, a NaN): they go through exact fp32 values instead.
Both patches touch the interpreter's builder only: compiled GPU code is never changed. `install()` is idempotent.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["install", "installed"]

_STATE = {"installed": False}


def _decode_bf16(handle: Any) -> Any:
    """An interpreter TensorHandle of bf16 bit patterns as an fp32 handle (bf16 is the top half of fp32)."""
    from triton.runtime import interpreter as itp

    if handle.dtype.scalar.name != "bf16":
        return handle
    f32 = (handle.data.astype(np.uint32) << 16).view(np.float32)
    return itp.TensorHandle(f32, itp.tl.float32)


def install() -> None:
    """Patch the interpreter's builder: bf16 dot operands decoded to fp32; fp32 -> bf16 casts round to nearest."""
    if _STATE["installed"]:
        return
    import torch
    from triton.runtime import interpreter as itp

    original_dot = itp.InterpreterBuilder.create_dot
    original_cast = itp.InterpreterBuilder.cast_impl

    def create_dot(self, a, b, d, input_precision, max_num_imprecise_acc):  # type: ignore[no-untyped-def]
        return original_dot(self, _decode_bf16(a), _decode_bf16(b), d, input_precision, max_num_imprecise_acc)

    def cast_impl(self, src, dst_type):  # type: ignore[no-untyped-def]
        src_name, dst_name = src.dtype.scalar.name, dst_type.scalar.name
        if dst_name == "bf16" and src_name != "bf16":
            values = _decode_bf16(src).data.astype(np.float32)  # exact for every source the kernels cast
            rounded = torch.from_numpy(np.ascontiguousarray(values)).to(torch.bfloat16)
            return itp.TensorHandle(rounded.view(torch.int16).numpy().view(np.uint16), dst_type.scalar)
        if src_name == "bf16" and dst_name not in ("bf16", "fp32"):
            return original_cast(self, _decode_bf16(src), dst_type)
        return original_cast(self, src, dst_type)

    itp.InterpreterBuilder.create_dot = create_dot
    itp.InterpreterBuilder.cast_impl = cast_impl
    _STATE["installed"] = True


def installed() -> bool:
    return _STATE["installed"]
