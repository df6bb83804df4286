"""Interop with bitsandbytes' 4-bit layout: `to_bnb` and `from_bnb`.

bitsandbytes is imported inside each function: it is the oracle and a baseline, never a dependency of the
formats. Both directions share storage where the layouts agree (they do: same packing, same absmax).
"""

from __future__ import annotations

from typing import Any

import torch

from quant.blockwise import DoubleQuantState
from quant.tensor import QuantizedTensor

__all__ = ["from_bnb", "to_bnb"]


def to_bnb(qt: QuantizedTensor) -> tuple[torch.Tensor, Any]:
    """(packed (ceil(n/2), 1) uint8, bitsandbytes.functional.QuantState) for an nf4/fp4 QuantizedTensor,
    readable by `bitsandbytes.functional.dequantize_4bit(packed, state)`.

    Raises:
        ValueError: `qt` is not nf4 or fp4.
    """
    from bitsandbytes.functional import QuantState

    if qt.fmt not in ("nf4", "fp4"):
        raise ValueError(f"qt: format {qt.fmt!r} has no bitsandbytes 4-bit layout; expected 'nf4' or 'fp4'")
    assert qt.code is not None
    if qt.state2 is None:
        state = QuantState(
            absmax=qt.absmax, shape=qt.shape, code=qt.code, blocksize=qt.blocksize, quant_type=qt.fmt, dtype=qt.dtype
        )
    else:
        s2 = qt.state2
        state2 = QuantState(absmax=s2.absmax, code=s2.code, blocksize=s2.blocksize, dtype=torch.float32)
        offset = torch.tensor(s2.offset, dtype=torch.float32, device=qt.device)
        state = QuantState(
            absmax=s2.data, shape=qt.shape, code=qt.code, blocksize=qt.blocksize, quant_type=qt.fmt,
            dtype=qt.dtype, offset=offset, state2=state2,
        )  # fmt: skip
    return qt.data.view(-1, 1), state


def from_bnb(packed: torch.Tensor, quant_state: Any) -> QuantizedTensor:
    """A QuantizedTensor over bitsandbytes' packed 4-bit codes and QuantState (uint8 storage only).

    Raises:
        ValueError: the state is not nf4/fp4, or `packed` is not uint8 of the expected length.
    """
    fmt = getattr(quant_state, "quant_type", None)
    if fmt not in ("nf4", "fp4"):
        raise ValueError(f"quant_state: quant_type {fmt!r}; expected 'nf4' or 'fp4'")
    shape = torch.Size(quant_state.shape)
    expected = -(-shape.numel() // 2)
    if packed.dtype != torch.uint8 or packed.numel() != expected:
        raise ValueError(
            f"packed: {packed.dtype} with {packed.numel()} elements; expected uint8 with {expected} for shape "
            f"{tuple(shape)}"
        )
    code = quant_state.code.float()
    if quant_state.nested:
        s2 = quant_state.state2
        state2 = DoubleQuantState(
            data=quant_state.absmax, absmax=s2.absmax, offset=float(quant_state.offset), code=s2.code,
            blocksize=s2.blocksize,
        )  # fmt: skip
        absmax = None
    else:
        state2, absmax = None, quant_state.absmax
    data = packed.reshape(-1)
    return QuantizedTensor(fmt, shape, quant_state.dtype, data, absmax, quant_state.blocksize, code, state2)
