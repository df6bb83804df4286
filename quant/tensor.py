"""`QuantizedTensor`: one frozen record for every format, and `quantize()`, the one entry point."""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Literal, TypeGuard

import torch

from quant import blockwise, int8
from quant.blockwise import CODEBOOKS_4BIT, DoubleQuantState
from quant.codebooks import on_device

__all__ = ["BLOCKSIZES", "FORMATS", "FieldError", "Format", "QuantizedTensor", "quantize"]

Format = Literal["nf4", "fp4", "int8", "fp16", "bf16"]
FORMATS: tuple[str, ...] = ("nf4", "fp4", "int8", "fp16", "bf16")
BLOCKSIZES: tuple[int, ...] = tuple(2**i for i in range(5, 13))  # 32 .. 4096
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_CAST_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
_FLOAT_NAMES = "torch.float32, torch.float16 or torch.bfloat16"


class FieldError(ValueError):
    """A bad `QuantizedTensor` field: `field` names it ("absmax", "state2.data"), `detail` says what was wrong."""

    def __init__(self, field: str, detail: str) -> None:
        super().__init__(f"{field}: {detail}")
        self.field, self.detail = field, detail


@dataclass(frozen=True, eq=False)
class QuantizedTensor:
    """A tensor stored in a quantized format.

    Fields by format (n = numel(shape)):
      nf4, fp4: data (ceil(n/2),) uint8 two codes a byte, first element in the high nibble;
                absmax (ceil(n/blocksize),) fp32, or None when `state2` holds it double-quantized (state2.data
                (ceil(n/blocksize),) uint8, state2.absmax (ceil(that/state2.blocksize),) fp32, state2.code
                (256,) fp32, a finite offset); code (16,) fp32 codebook; blocksize an int in BLOCKSIZES.
      int8:     data (rows, cols) int8 of the 2-D view (rows = prod(shape[:-1]), cols = shape[-1], 1 for 0-d);
                absmax (rows,) fp32 row scales, or () fp32 for per-tensor; outlier_cols (k,) int64 and outliers
                (rows, k) fp16 hold LLM.int8()'s outlier columns exactly (row-wise only); blocksize 0.
      fp16, bf16: data is the tensor cast, with `shape` (torch's `.to`: the tensor itself when it already has
                that dtype and is contiguous); blocksize 0.
    dtype is fp32|fp16|bf16; every tensor is contiguous and on data's device. Construction checks all of this.
    """

    fmt: Format
    shape: torch.Size
    dtype: torch.dtype  # the original dtype; dequantize() returns it by default
    data: torch.Tensor
    absmax: torch.Tensor | None = None
    blocksize: int = 0
    code: torch.Tensor | None = None
    state2: DoubleQuantState | None = None
    outlier_cols: torch.Tensor | None = None
    outliers: torch.Tensor | None = None

    def __post_init__(self) -> None:
        """Check every field against the format (kernels index by them): shapes, dtypes, lengths, devices.

        Metadata only (shapes, dtypes, devices), never the values, so construction costs no pass over the data.

        Raises:
            FieldError (a ValueError): a field that does not fit the format, named with its value and what was
                expected.
        """
        object.__setattr__(self, "shape", _check_shape(self.shape))
        _check_fields(self)
        object.__setattr__(self, "blocksize", int(self.blocksize))

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def device(self) -> torch.device:
        return self.data.device

    @property
    def double_quant(self) -> bool:
        return self.state2 is not None

    def block_absmax(self) -> torch.Tensor:
        """The fp32 per-block (4-bit) or per-row (int8) scales, decoding double quantization if present."""
        if self.state2 is not None:
            return blockwise.double_dequantize(self.state2)
        assert self.absmax is not None
        return self.absmax

    def dequantize(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The tensor back, `shape` in `dtype` (fp32|fp16|bf16; default: the original dtype), computed in fp32 and
        cast once.

        Raises:
            ValueError: `dtype` is not torch.float32, torch.float16, torch.bfloat16 or None.
        """
        if dtype is not None and dtype not in FLOAT_DTYPES:
            raise ValueError(f"dtype: {dtype!r}; expected {_FLOAT_NAMES}, or None for the original {self.dtype}")
        dtype = dtype or self.dtype
        if self.fmt in ("fp16", "bf16"):
            return self.data.to(dtype)
        if self.fmt == "int8":
            assert self.absmax is not None
            out = int8.dequantize_rowwise(self.data, self.absmax, dtype)
            if self.outlier_cols is not None and self.outlier_cols.numel():
                assert self.outliers is not None
                out[:, self.outlier_cols] = self.outliers.to(dtype)
            return out.view(self.shape)
        assert self.code is not None
        flat = blockwise.dequantize_4bit(self.data, self.block_absmax(), self.code, self.blocksize, self.numel, dtype)
        return flat.view(self.shape)

    @property
    def nbytes(self) -> int:
        """Exact storage in bytes: codes, scales (fp32), double-quant state and outliers; shared codebooks excluded."""
        total = self.data.numel() * self.data.element_size()
        if self.absmax is not None:
            total += self.absmax.numel() * 4
        if self.state2 is not None:
            total += self.state2.nbytes
        if self.outliers is not None and self.outlier_cols is not None:
            total += self.outliers.numel() * 2 + self.outlier_cols.numel() * self.outlier_cols.element_size()
        return total

    @property
    def bits_per_param(self) -> float:
        """Storage bits per element, e.g. NF4 at blocksize 64: 4 + 32/64 = 4.5; with double quantization
        4 + 8/64 + 32/(64*256) ≈ 4.127 (QLoRA §3), for large tensors (the mean offset is amortized away);
        0.0 for an empty tensor (no elements to share its fixed bytes)."""
        if self.numel == 0:
            return 0.0
        if self.fmt in ("nf4", "fp4"):
            bits = 4.0
            if self.state2 is None:
                return bits + 32.0 / self.blocksize
            return bits + 8.0 / self.blocksize + 32.0 / (self.blocksize * self.state2.blocksize)
        return self.nbytes * 8.0 / self.numel

    def to(self, device: torch.device | str) -> QuantizedTensor:
        """The same tensor on another device (codebooks and scales move with it)."""

        def mv(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device)

        state2 = self.state2
        if state2 is not None:
            s2 = state2
            state2 = DoubleQuantState(
                s2.data.to(device), s2.absmax.to(device), s2.offset, on_device(s2.code, device), s2.blocksize
            )
        return QuantizedTensor(
            self.fmt, self.shape, self.dtype, self.data.to(device), mv(self.absmax), self.blocksize,
            None if self.code is None else on_device(self.code, device), state2, mv(self.outlier_cols),
            mv(self.outliers),
        )  # fmt: skip

    def __repr__(self) -> str:
        extra = f", blocksize={self.blocksize}" if self.blocksize else ""
        extra += ", double_quant=True" if self.state2 is not None else ""
        shape = tuple(self.shape)
        return f"QuantizedTensor({self.fmt}, shape={shape}, dtype={self.dtype}{extra}, device={self.device})"


def _is_int(value: object) -> TypeGuard[numbers.Integral]:
    """An integer (Python or numpy), not a bool: blocksizes and dims."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_blocksize(name: str, value: object) -> int:
    """`value` as an int if it is one of BLOCKSIZES (an int, not a bool or float), else FieldError naming `name`."""
    if _is_int(value) and int(value) in BLOCKSIZES:
        return int(value)
    raise FieldError(name, f"{value!r} is not supported; expected an int, a power of two in 32..4096")


def _check_shape(shape: object) -> torch.Size:
    """`shape` as a torch.Size of non-negative ints."""
    dims = tuple(shape) if isinstance(shape, (tuple, list, torch.Size)) else None
    if dims is None or not all(_is_int(d) and int(d) >= 0 for d in dims):
        raise FieldError("shape", f"{shape!r}; expected a torch.Size (or tuple) of non-negative ints")
    return torch.Size(int(d) for d in dims)


def _check_tensor(name: str, t: object, dtype: torch.dtype, shape: tuple[int, ...], why: str) -> torch.Tensor:
    """`t` if it is a contiguous tensor of `dtype` and `shape` (kernels read it flat), else FieldError."""
    if not isinstance(t, torch.Tensor) or t.dtype != dtype or tuple(t.shape) != shape:
        raise FieldError(name, f"{_describe(t)}; expected {dtype} of shape {shape} ({why})")
    if not t.is_contiguous():
        raise FieldError(name, f"non-contiguous (strides {t.stride()}); expected contiguous storage")
    return t


def _describe(t: object) -> str:
    return f"{t.dtype} of shape {tuple(t.shape)}" if isinstance(t, torch.Tensor) else type(t).__name__


def _absent(qt: QuantizedTensor, *names: str) -> None:
    """FieldError for the first of `names` that is set (blocksize: not 0): the format has no such field."""
    for name in names:
        value = getattr(qt, name)
        if name == "blocksize":
            if not _is_int(value) or value != 0:
                raise FieldError(name, f"{value!r}; expected 0 ({qt.fmt} has no blocks)")
        elif value is not None:
            raise FieldError(name, f"{_describe(value)}; expected None ({qt.fmt} has no {name})")


def _check_fields(qt: QuantizedTensor) -> None:
    """The field checks of QuantizedTensor.__post_init__ (see the class docstring for the layouts)."""
    fmt = qt.fmt
    if not isinstance(fmt, str) or fmt not in FORMATS:
        raise FieldError("fmt", f"{fmt!r} is not a format; expected one of {', '.join(FORMATS)}")
    if qt.dtype not in FLOAT_DTYPES:
        raise FieldError("dtype", f"{qt.dtype!r}; expected {_FLOAT_NAMES} (the original tensor's dtype)")
    n = math.prod(qt.shape)
    fields: dict[str, torch.Tensor] = {}
    if fmt in ("nf4", "fp4"):
        blocksize = check_blocksize("blocksize", qt.blocksize)
        blocks = -(-n // blocksize)
        fields["data"] = _check_tensor("data", qt.data, torch.uint8, (-(-n // 2),), f"two codes a byte: ceil({n}/2)")
        fields["code"] = _check_tensor("code", qt.code, torch.float32, (16,), "the 16-value codebook")
        if qt.state2 is None:
            why = f"one scale a block: ceil({n}/{blocksize})"
            fields["absmax"] = _check_tensor("absmax", qt.absmax, torch.float32, (blocks,), why)
        else:
            if qt.absmax is not None:
                raise FieldError("absmax", "a tensor beside state2; expected None (state2 holds it double-quantized)")
            fields.update(_check_state2(qt.state2, blocks))
        _absent(qt, "outlier_cols", "outliers")
    elif fmt == "int8":
        _absent(qt, "blocksize", "code", "state2")
        cols = qt.shape[-1] if qt.shape else 1
        rows = math.prod(qt.shape[:-1])
        fields["data"] = _check_tensor("data", qt.data, torch.int8, (rows, cols), "the 2-D view (rows, shape[-1])")
        absmax = qt.absmax
        per_tensor = isinstance(absmax, torch.Tensor) and absmax.dim() == 0
        scales: tuple[int, ...] = () if per_tensor else (rows,)
        why = "one scale per tensor" if per_tensor else "one scale a row, or () for one per tensor"
        fields["absmax"] = _check_tensor("absmax", absmax, torch.float32, scales, why)
        fields.update(_check_outliers(qt, rows, cols, per_tensor))
    else:
        _absent(qt, "absmax", "blocksize", "code", "state2", "outlier_cols", "outliers")
        fields["data"] = _check_tensor("data", qt.data, _CAST_DTYPES[fmt], tuple(qt.shape), "the tensor cast")
    device = qt.data.device
    for name, t in fields.items():
        if t.device != device:
            raise FieldError(name, f"on {t.device}; expected data's device {device} (one device for every tensor)")


def _check_state2(state2: object, blocks: int) -> dict[str, torch.Tensor]:
    """The double-quantization state of `blocks` 4-bit scales; its tensors by field name."""
    if not isinstance(state2, DoubleQuantState):
        raise FieldError("state2", f"{type(state2).__name__}; expected a DoubleQuantState or None")
    blocksize = check_blocksize("state2.blocksize", state2.blocksize)
    groups = -(-blocks // blocksize)
    offset = state2.offset
    if isinstance(offset, bool) or not isinstance(offset, numbers.Real) or (blocks and not math.isfinite(offset)):
        raise FieldError("state2.offset", f"{offset!r}; expected a finite float (the mean of the absmax)")
    return {
        "state2.data": _check_tensor("state2.data", state2.data, torch.uint8, (blocks,), "one code a 4-bit block"),
        "state2.absmax": _check_tensor(
            "state2.absmax", state2.absmax, torch.float32, (groups,), f"one scale a group: ceil({blocks}/{blocksize})"
        ),
        "state2.code": _check_tensor("state2.code", state2.code, torch.float32, (256,), "the 8-bit map"),
    }


def _check_outliers(qt: QuantizedTensor, rows: int, cols: int, per_tensor: bool) -> dict[str, torch.Tensor]:
    """LLM.int8()'s outlier columns: both fields or neither, row-wise only, (k,) int64 and (rows, k) fp16.
    The column indices are not scanned (no pass over values): torch's indexing bounds-checks them on use."""
    if qt.outlier_cols is None and qt.outliers is None:
        return {}
    if qt.outlier_cols is None or qt.outliers is None:
        missing = "outlier_cols" if qt.outlier_cols is None else "outliers"
        raise FieldError(missing, "None beside the other outlier field; expected both or neither")
    if per_tensor:
        raise FieldError("outlier_cols", "set with a per-tensor scale; expected None (outliers are row-wise only)")
    cols_t = qt.outlier_cols
    if not (isinstance(cols_t, torch.Tensor) and cols_t.dtype == torch.int64 and cols_t.dim() == 1):
        raise FieldError("outlier_cols", f"{_describe(cols_t)}; expected a (k,) torch.int64 tensor of column indices")
    k = cols_t.shape[0]
    if k > cols:
        raise FieldError("outlier_cols", f"{k} columns; expected at most shape[-1] = {cols}")
    return {
        "outlier_cols": cols_t,
        "outliers": _check_tensor("outliers", qt.outliers, torch.float16, (rows, k), "the outlier columns, exact"),
    }


def _check_values(tensor: torch.Tensor, cast: torch.dtype | None = None) -> None:
    """Raise ValueError on NaN/Inf, or on values that a cast to `cast` would turn into Inf."""
    # One min/max pass: a NaN propagates into both, an Inf shows as one of them. Only a failing tensor pays
    # for the elementwise scan that counts and locates the bad values.
    if tensor.numel() == 0:
        return
    extremes = torch.stack(torch.aminmax(tensor))
    if bool(torch.isfinite(extremes).all()):
        if cast is not None and not bool(torch.isfinite(extremes.to(cast)).all()):  # rounding is monotone
            _raise_overflow(tensor, cast)
        return
    finite = torch.isfinite(tensor)
    if not bool(finite.all()):
        _raise_at("non-finite value(s) (NaN or Inf)", ~finite, tensor, "quantization needs finite values")


def _raise_overflow(tensor: torch.Tensor, cast: torch.dtype) -> None:
    big = ~torch.isfinite(tensor.to(cast))
    limit = torch.finfo(cast).max
    _raise_at(f"value(s) beyond {cast}'s range (±{limit:g})", big, tensor, "casting would make them Inf")


def _raise_at(what: str, bad: torch.Tensor, tensor: torch.Tensor, expected: str) -> None:
    flat = bad.reshape(-1)
    first = int(torch.nonzero(flat)[0])
    index = tuple(int(i) for i in torch.unravel_index(torch.tensor(first), tensor.shape))
    raise ValueError(
        f"tensor: {int(flat.sum())} {what}; the first at index {index} is {tensor.reshape(-1)[first].item()}; "
        f"{expected}"
    )


def _check_arguments(
    fmt: object, blocksize: object, double_quant: object, int8_scheme: object, threshold: object
) -> int:
    """quantize()'s arguments other than the tensor; returns the blocksize as an int (0 unless 4-bit)."""
    if not isinstance(fmt, str) or fmt not in FORMATS:
        raise ValueError(f"fmt: {fmt!r} is not a format; expected one of {', '.join(FORMATS)}")
    if not isinstance(double_quant, bool):
        raise ValueError(f"double_quant: {double_quant!r}; expected True or False")
    if double_quant and fmt not in ("nf4", "fp4"):
        raise ValueError(f"double_quant: True is only defined for nf4 and fp4, not {fmt!r}")
    if not isinstance(int8_scheme, str) or int8_scheme not in ("row", "tensor"):
        raise ValueError(f"int8_scheme: {int8_scheme!r}; expected 'row' or 'tensor'")
    if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real) or not 0 <= float(threshold) < math.inf:
        raise ValueError(f"outlier_threshold: {threshold!r}; expected a finite number >= 0 (0: no outliers)")
    if float(threshold) > 0 and (fmt != "int8" or int8_scheme != "row"):
        raise ValueError(f"outlier_threshold: {threshold!r}; expected 0 (> 0 only for row-wise int8)")
    return check_blocksize("blocksize", blocksize) if fmt in ("nf4", "fp4") else 0


def quantize(
    tensor: torch.Tensor,
    fmt: Format | str,
    blocksize: int = 64,
    double_quant: bool = False,
    *,
    int8_scheme: Literal["row", "tensor"] = "row",
    outlier_threshold: float = 0.0,
) -> QuantizedTensor:
    """Quantize `tensor` into `fmt` ("nf4", "fp4", "int8", "fp16", "bf16").

    tensor: any shape, fp32|fp16|bf16, any strides (int8 reads it as 2-D (prod(shape[:-1]), shape[-1])); one that
    requires grad (an nn.Parameter) is read detached: the quantized tensors carry no autograd history.
    blocksize: 4-bit block size, an int, a power of two in 32..4096 (ignored by the other formats).
    double_quant: True or False, 8-bit quantize the 4-bit absmax.
    int8_scheme: "row" (LLM.int8() vector-wise, the default) or "tensor"; outlier_threshold > 0 keeps the
    columns holding |x| >= threshold in fp16 (LLM.int8()'s decomposition uses 6.0), row-wise only.
    An empty tensor (a 0 anywhere in its shape) gives an empty QuantizedTensor of the same layout (no codes; int8
    keeps its (rows,) zero scales, double quantization a 0.0 offset) that dequantizes to an empty tensor of its
    shape and dtype; a 0-d tensor is one element.

    Raises:
        TypeError: `tensor` is not a floating-point tensor.
        ValueError: `fmt` not a format name, bad `blocksize`, `double_quant`, `int8_scheme` or `outlier_threshold`
            (not a finite number >= 0), or NaN/Inf values; each named with its value and what was expected.
    """
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"tensor: expected a torch.Tensor, got {type(tensor).__name__}")
    if tensor.dtype not in FLOAT_DTYPES:
        raise TypeError(f"tensor: dtype {tensor.dtype} is not supported; expected one of fp32, fp16, bf16")
    blocksize = _check_arguments(fmt, blocksize, double_quant, int8_scheme, outlier_threshold)
    tensor = tensor.detach()  # a Parameter or any tensor requiring grad: no autograd history in the codes
    cast = _CAST_DTYPES.get(fmt)
    if fmt == "int8" and 0 < outlier_threshold <= torch.finfo(torch.float16).max:
        cast = torch.float16  # LLM.int8()'s outlier columns are kept in fp16
    _check_values(tensor, cast)

    shape, dtype = tensor.shape, tensor.dtype
    if fmt in _CAST_DTYPES:
        return QuantizedTensor(fmt, shape, dtype, tensor.to(_CAST_DTYPES[fmt]).contiguous())  # type: ignore[arg-type]
    if fmt == "int8":
        cols = shape[-1] if tensor.dim() else 1
        matrix = tensor.reshape(math.prod(shape[:-1]), cols)  # not (-1, cols): a 0 in cols leaves -1 undefined
        if int8_scheme == "tensor":
            codes, absmax = int8.quantize_tensorwise(matrix)
            return QuantizedTensor("int8", shape, dtype, codes, absmax)
        codes, absmax, outlier_cols = int8.quantize_rowwise(matrix, outlier_threshold)
        outliers = matrix[:, outlier_cols].to(torch.float16) if outlier_cols.numel() else None
        return QuantizedTensor(
            "int8", shape, dtype, codes, absmax,
            outlier_cols=outlier_cols if outlier_cols.numel() else None, outliers=outliers,
        )  # fmt: skip
    packed, absmax = blockwise.quantize_4bit(tensor, fmt, blocksize)
    code = on_device(CODEBOOKS_4BIT[fmt].code, tensor.device)
    if double_quant:
        return QuantizedTensor(fmt, shape, dtype, packed, None, blocksize, code, blockwise.double_quantize(absmax))  # type: ignore[arg-type]
    return QuantizedTensor(fmt, shape, dtype, packed, absmax, blocksize, code)  # type: ignore[arg-type]
