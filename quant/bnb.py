"""Interop with bitsandbytes' 4-bit layout: `to_bnb` and `from_bnb`.

bitsandbytes is imported inside each function: it is the oracle and a baseline, never a dependency of the
formats. Both directions share storage where the layouts agree (they do: same packing, same absmax).
"""

from __future__ import annotations

from typing import Any

import torch

from quant.blockwise import DoubleQuantState
from quant.tensor import FieldError, QuantizedTensor

__all__ = ["from_bnb", "to_bnb"]


def to_bnb(qt: QuantizedTensor) -> tuple[torch.Tensor, Any]:
    """(packed (ceil(n/2), 1) uint8, bitsandbytes.functional.QuantState) for an nf4/fp4 QuantizedTensor,
    readable by `bitsandbytes.functional.dequantize_4bit(packed, state)`.

    bitsandbytes 0.50 cannot dequantize a 0-d shape, nor an empty one with a 0 past its first dim, even from its
    own quantize_4bit: for those the state is the one it makes, and only quant/ reads it back.

    Raises:
        ValueError: `qt` is not an nf4 or fp4 QuantizedTensor.
    """
    from bitsandbytes.functional import QuantState

    if not isinstance(qt, QuantizedTensor):
        raise ValueError(f"qt: {type(qt).__name__}; expected a quant.QuantizedTensor")
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


# QuantizedTensor's fields by the bitsandbytes names they come from, for from_bnb's errors
_BNB_NAMES = {
    "data": "packed",
    "shape": "quant_state.shape",
    "dtype": "quant_state.dtype",
    "blocksize": "quant_state.blocksize",
    "code": "quant_state.code",
    "absmax": "quant_state.absmax",
    "state2.data": "quant_state.absmax",
    "state2.offset": "quant_state.offset",
    "state2.absmax": "quant_state.state2.absmax",
    "state2.code": "quant_state.state2.code",
    "state2.blocksize": "quant_state.state2.blocksize",
}


def from_bnb(packed: torch.Tensor, quant_state: Any) -> QuantizedTensor:
    """A QuantizedTensor over bitsandbytes' packed 4-bit codes (ceil(n/2), 1) uint8 and QuantState (uint8 storage
    only), with QuantizedTensor's checks: every length, dtype and device must fit the state's shape and blocksize.

    Raises:
        ValueError: the state is not nf4/fp4, or a part does not fit, named by its bitsandbytes name
            (`packed`, `quant_state.absmax`, `quant_state.blocksize`, ...) with its value and what was expected.
    """
    fmt = getattr(quant_state, "quant_type", None)
    if fmt not in ("nf4", "fp4"):
        raise ValueError(f"quant_state: quant_type {fmt!r}; expected 'nf4' or 'fp4'")
    if not isinstance(packed, torch.Tensor):
        raise ValueError(f"packed: {type(packed).__name__}; expected a torch.Tensor of uint8 codes")
    code = quant_state.code.float() if isinstance(quant_state.code, torch.Tensor) else quant_state.code
    state2, absmax = None, quant_state.absmax
    if quant_state.nested:
        s2, offset = quant_state.state2, quant_state.offset
        if isinstance(offset, torch.Tensor) and offset.numel() == 1:
            offset = float(offset)
        state2 = DoubleQuantState(data=absmax, absmax=s2.absmax, offset=offset, code=s2.code, blocksize=s2.blocksize)
        absmax = None
    shape = quant_state.shape
    try:
        return QuantizedTensor(
            fmt, shape, quant_state.dtype, packed.reshape(-1), absmax, quant_state.blocksize, code, state2
        )
    except FieldError as e:
        raise ValueError(f"{_BNB_NAMES.get(e.field, e.field)}: {e.detail}") from None
