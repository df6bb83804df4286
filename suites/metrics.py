"""FLOPs and bytes of each op, by model (not measured): the numbers that turn a time into TFLOP/s, GB/s and a
percentage of the roofline. One function per op; each docstring gives its formula.

Bytes count what the op must move between memory and the chip at least once: inputs read, outputs written,
weights in their stored format (packed codes + scales, `quant.memory.tensor_bytes`). Elementwise ops carry
nominal op counts (they are memory-bound; their FLOP/s is shown for completeness, their GB/s is what matters).
"""

from __future__ import annotations

from quant.memory import tensor_bytes
from quant.optim import state_bytes

__all__ = [
    "ELEMENT_BYTES",
    "adamw_cost",
    "dequantize_cost",
    "lora_cost",
    "matmul_cost",
    "quantize_cost",
    "roofline_bound",
    "roofline_flag",
    "roofline_pct",
    "weight_bytes",
]

ELEMENT_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2}
QUANTIZE_OPS = 4  # per element: |x|, the block max, the scale, the code search (counted once)
DEQUANTIZE_OPS = 2  # per element: the codebook lookup and the scale multiply
ADAMW_OPS = 12  # per parameter: m (3), v (4), bias-corrected step (4), decoupled decay (1)


def weight_bytes(precision: str, n: int, k: int, blocksize: int = 64) -> int:
    """Stored bytes of an (N, K) weight: "nf4-dq"/"fp4-dq" are the 4-bit formats with double quantization."""
    fmt, _, dq = precision.partition("-")
    return tensor_bytes(n * k, fmt, blocksize, double_quant=dq == "dq", rows=n)


def matmul_cost(m: int, n: int, k: int, precision: str, act: str = "bf16") -> tuple[float, float]:
    """y = x W^T: FLOPs 2 M N K; bytes W (stored) + x (M K) + y (M N) in the activation dtype."""
    e = ELEMENT_BYTES[act]
    return 2.0 * m * n * k, float(weight_bytes(precision, n, k) + e * m * (k + n))


def lora_cost(m: int, n: int, k: int, r: int, precision: str, act: str = "bf16", backward: bool = False):
    """y = x W^T + s (x A^T) B^T (r = 0: the base layer alone).

    Forward: FLOPs 2 M N K + 2 M R (K + N); bytes W + A (R K) + B (N R) + x + y.
    Backward adds dx = dy W + s (dy B) A (2 M N K + 2 M R (N + K)), dA = s (dy B)^T x (2 M R K) and
    dB = s dy^T (x A^T) (2 M N R): FLOPs 4 M N K + 6 M R (K + N) in all; bytes W, A, B, x and dy read again,
    dx, dA, dB written.
    """
    e = ELEMENT_BYTES[act]
    w = weight_bytes(precision, n, k)
    adapters = e * r * (k + n)
    if not backward:
        return 2.0 * m * n * k + 2.0 * m * r * (k + n), float(w + adapters + e * m * (k + n))
    flops = 4.0 * m * n * k + 6.0 * m * r * (k + n)
    forward = w + adapters + e * m * (k + n)
    backward_bytes = w + 2 * adapters + e * m * (n + 2 * k)  # W, A, B, dy, x read; dA, dB, dx written
    return flops, float(forward + backward_bytes)


def quantize_cost(n: int, k: int, precision: str, source: str = "fp32") -> tuple[float, float]:
    """Quantize an (N, K) tensor: QUANTIZE_OPS per element; bytes: the source read, the stored format written."""
    return QUANTIZE_OPS * float(n * k), float(ELEMENT_BYTES[source] * n * k + weight_bytes(precision, n, k))


def dequantize_cost(n: int, k: int, precision: str, out: str = "fp32") -> tuple[float, float]:
    """Dequantize an (N, K) tensor: DEQUANTIZE_OPS per element; bytes: the stored format read, the output
    written."""
    return DEQUANTIZE_OPS * float(n * k), float(weight_bytes(precision, n, k) + ELEMENT_BYTES[out] * n * k)


def adamw_cost(numel: int, state_bits: int, param: str = "fp32") -> tuple[float, float]:
    """One AdamW step: ADAMW_OPS per parameter; bytes: p read and written, g read, states read and written
    (`quant.optim.state_bytes`: 8 a parameter at 32 bits, about 2 at 8 bits)."""
    e = ELEMENT_BYTES[param]
    return ADAMW_OPS * float(numel), float(3 * e * numel + 2 * state_bytes(numel, state_bits))


def roofline_pct(flops: float, nbytes: float, seconds: float, peak_tflops: float, peak_gbps: float) -> float | None:
    """Achieved share of the roofline: the time the ceilings allow (compute or memory, the slower) over the time
    taken, in percent. None without a time or ceilings."""
    if not seconds or seconds <= 0 or peak_tflops <= 0 or peak_gbps <= 0:
        return None
    bound = max(flops / (peak_tflops * 1e12), nbytes / (peak_gbps * 1e9))
    return 100.0 * bound / seconds


def roofline_bound(flops: float, nbytes: float, peak_tflops: float, peak_gbps: float) -> str | None:
    """Which ceiling binds a case: "compute" (flops / peak FLOP/s is the longer time) or "memory"; None without
    ceilings."""
    if peak_tflops <= 0 or peak_gbps <= 0:
        return None
    return "compute" if flops / (peak_tflops * 1e12) >= nbytes / (peak_gbps * 1e9) else "memory"


def roofline_flag(pct: float | None, nbytes: float, cache_bytes: int, ceiling: str | None) -> str | None:
    """Why a case sits above 100% of its roofline; None at or below 100%. Either its bytes fit in the last-level
    cache (`cache_bytes`), so some of its traffic came from there rather than from memory despite the flush, or it
    ran faster than the run's measured `ceiling` ("copy", "fp32", "bf16", "int8"), which is then an underestimate
    of the device (each peak is the best of a few runs of one kernel)."""
    if pct is None or pct <= 100:
        return None
    if nbytes <= cache_bytes:
        return (
            f"{pct:.0f}% of roofline: its {nbytes / 2**20:.3g} MiB fit in the {cache_bytes / 2**20:.0f} MiB "
            "last-level cache, so part of its traffic came from the cache, not memory"
        )
    return f"{pct:.0f}% of roofline: faster than the run's measured {ceiling} peak, which understates this device"
