"""Codebooks: the value sets that 4-bit and 8-bit codes index.

- NF4 (QLoRA, Dettmers et al. 2023, appendix E): 16 quantiles of N(0, 1), asymmetric (8 negative, 7
  positive and an exact zero), normalized to [-1, 1]. `nf4_from_quantiles()` derives it; the quantizer
  uses the paper's published fp32 table `NF4`, because a recomputed table drifts by ~2e-7 and flips codes
  that sit exactly on a decision threshold, which would break byte-for-byte agreement with bitsandbytes.
- FP4: bitsandbytes' 4-bit float (1 sign, 2 exponent, 1 mantissa bit; no inf/NaN), scaled so its largest
  magnitude is 1. Code = sign << 3 | exponent << 1 | mantissa; exponent 0 is subnormal.
- Dynamic 8-bit maps (Dettmers 2015, "8-Bit Approximations for Parallelism in Deep Learning"): a sign
  bit, a unary exponent (a run of zeros ended by an indicator bit), and a linear fraction in the rest.
  The signed map quantizes double-quantization statistics and Adam's first moment; the unsigned map
  quantizes the second moment.

Every codebook is an fp32 tensor on the CPU. The module-level ones (`NF4`, `FP4`, `SIGNED_DYNAMIC`,
`UNSIGNED_DYNAMIC`) are shared, never written: `on_device` gives one copy per device that every tensor
using it shares, as tensors share the CPU original (not a copy per quantized weight on a GPU).
"""

from __future__ import annotations

import functools

import torch

__all__ = [
    "FP4",
    "NF4",
    "SIGNED_DYNAMIC",
    "UNSIGNED_DYNAMIC",
    "dynamic_map",
    "fp4_values",
    "nf4_from_quantiles",
    "on_device",
    "sorted_with_order",
]

# The published NF4 table (QLoRA appendix E; identical to bitsandbytes' `get_4bit_type("nf4")`).
NF4: torch.Tensor = torch.tensor(
    [
        -1.0,
        -0.6961928009986877,
        -0.5250730514526367,
        -0.39491748809814453,
        -0.28444138169288635,
        -0.18477343022823334,
        -0.09105003625154495,
        0.0,
        0.07958029955625534,
        0.16093020141124725,
        0.24611230194568634,
        0.33791524171829224,
        0.44070982933044434,
        0.5626170039176941,
        0.7229568362236023,
        1.0,
    ],
    dtype=torch.float32,
)

# The offset QLoRA chose: the outermost quantile is 1 - 1/2 * (1/(2*15) + 1/(2*16)).
NF4_OFFSET = 0.9677083


def nf4_from_quantiles(offset: float = NF4_OFFSET) -> torch.Tensor:
    """Derive NF4 from normal quantiles as QLoRA defines it (fp64 math, fp32 result, 16 values, sorted).

    8 positive quantiles on linspace(offset, 0.5, 9)[:-1], 7 negative ones on linspace(offset, 0.5, 8)[:-1],
    one exact zero, then division by the largest value so the range is [-1, 1].
    """
    ndtri = torch.special.ndtri
    pos = ndtri(torch.linspace(offset, 0.5, 9, dtype=torch.float64)[:-1])
    neg = -ndtri(torch.linspace(offset, 0.5, 8, dtype=torch.float64)[:-1])
    values = torch.cat([pos, torch.zeros(1, dtype=torch.float64), neg]).sort().values
    return (values / values.max()).to(torch.float32)


def fp4_values() -> torch.Tensor:
    """bitsandbytes' FP4 value set, indexed by code (16 fp32 values, largest magnitude 1).

    Code bits are s|e1 e0|m. bitsandbytes' exponent field counts down: e = 1, 2, 3 scale by 2**(4-e), so
    a normal value is (1 + m/2) * 2**(4-e) / 12 (the 12 makes the top value, e=1 m=1, exactly 1). Exponent 0
    is the subnormal: 0 for m=0 and 1/192 (0.0625/12) for m=1.
    """
    values = torch.empty(16, dtype=torch.float64)
    for code in range(16):
        sign = -1.0 if code & 0b1000 else 1.0
        exponent, mantissa = (code >> 1) & 0b11, code & 0b1
        magnitude = mantissa * 0.0625 if exponent == 0 else (1.0 + 0.5 * mantissa) * 2.0 ** (4 - exponent)
        values[code] = sign * magnitude / 12.0
    return values.to(torch.float32)


FP4: torch.Tensor = fp4_values()


def dynamic_map(signed: bool = True, max_exponent_bits: int = 7, total_bits: int = 8) -> torch.Tensor:
    """The dynamic tree quantization map (2**total_bits fp32 values, sorted ascending).

    For exponent i = 0 .. max_exponent_bits-1 the fraction has 2**(i + free) intervals on [0.1, 1]
    (free = total_bits-1-max_exponent_bits, one more bit when unsigned); each value is an interval
    midpoint times 10**(i - max_exponent_bits + 1). Zero and 1.0 complete the table.
    """
    non_sign_bits = total_bits - 1
    additional = 2 ** (non_sign_bits - max_exponent_bits) - 1
    data: list[float] = []

    def midpoints(n_edges: int, scale: float) -> None:
        # fp32 linspace and midpoints as the original generator does, so values agree to the bit
        edges = torch.linspace(0.1, 1, n_edges, dtype=torch.float32)
        means = (edges[:-1] + edges[1:]) / 2.0
        data.extend((scale * means).tolist())  # an fp32 product, rounded as the original rounds it
        if signed:
            data.extend((-scale * means).tolist())

    for i in range(max_exponent_bits):
        fraction_items = 2 ** (i + non_sign_bits - max_exponent_bits) + 1
        if not signed:
            fraction_items = 2 ** (i + non_sign_bits - max_exponent_bits + 1) + 1
        midpoints(fraction_items, 10.0 ** (-(max_exponent_bits - 1) + i))
    if additional > 0:
        midpoints(additional + 1, 10.0 ** (-(max_exponent_bits - 1) + max_exponent_bits - 1))
    data += [0.0, 1.0]
    data += [0.0] * (2**total_bits - len(data))
    return torch.tensor(sorted(data), dtype=torch.float32)


SIGNED_DYNAMIC: torch.Tensor = dynamic_map(signed=True)
UNSIGNED_DYNAMIC: torch.Tensor = dynamic_map(signed=False)
_SHARED: dict[str, torch.Tensor] = {
    "nf4": NF4,
    "fp4": FP4,
    "signed_dynamic": SIGNED_DYNAMIC,
    "unsigned_dynamic": UNSIGNED_DYNAMIC,
}


@functools.cache
def _shared_on(name: str, device: torch.device) -> torch.Tensor:
    """The one copy of shared codebook `name` on `device` (the module's own table on its own device)."""
    table = _SHARED[name]
    return table if table.device == device else table.to(device)


def on_device(table: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """`table` on `device`: for a shared module-level codebook (or a copy made here) the one copy kept for that
    device, keyed by the codebook's name; any other tensor `.to(device)`."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    for name in _SHARED:
        if table is _shared_on(name, table.device):
            return _shared_on(name, device)
    return table.to(device)


def sorted_with_order(code: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Decision thresholds for nearest-value quantization against `code`.

    Returns (midpoints between consecutive sorted values, permutation from sorted index to code).
    `order[bucketize(x, midpoints)]` is the code of the nearest value (ties go to the lower value).
    """
    order = torch.argsort(code)
    values = code[order]
    return (values[:-1] + values[1:]) / 2, order
