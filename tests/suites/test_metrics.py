"""suites/metrics.py: each cost model against the arithmetic of its docstring, written out by hand.

Shapes are mostly non-square (N != K) so that a swapped N and K, or int8 scales counted per column instead of
per row of W, changes the number.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch

import quant
from suites.metrics import (
    adamw_cost,
    dequantize_cost,
    lora_cost,
    matmul_cost,
    quantize_cost,
    roofline_bound,
    roofline_flag,
    roofline_pct,
    weight_bytes,
)

SQ = 4096 * 4096  # a 4096 x 4096 weight (llama2-7b q/k/v/o)
N, K = 1024, 4096  # llama3-8b k/v: W is (N, K), N rows


def test_nf4_weight_bytes_at_blocksize_64() -> None:
    # codes: two a byte; scales: one fp32 absmax per 64-element block
    assert weight_bytes("nf4", 4096, 4096) == SQ // 2 + 4 * (SQ // 64) == 9_437_184
    assert weight_bytes("fp4", 4096, 4096) == 9_437_184
    # double quantization: an 8-bit code per block, one fp32 absmax per 256 blocks, one fp32 offset
    dq = SQ // 2 + SQ // 64 + 4 * math.ceil(SQ / 64 / 256) + 4
    assert dq == 8_388_608 + 262_144 + 4_096 + 4
    assert weight_bytes("nf4-dq", 4096, 4096) == dq
    assert weight_bytes("fp4-dq", 4096, 4096) == dq


def test_weight_bytes_of_a_non_square_weight() -> None:
    assert weight_bytes("int8", N, K) == N * K + 4 * N == 4_198_400  # one fp32 scale per row of W (N rows)
    assert weight_bytes("int8", K, N) == N * K + 4 * K  # the transposed weight has K rows
    assert weight_bytes("bf16", N, K) == 2 * N * K and weight_bytes("fp16", N, K) == 2 * N * K
    assert weight_bytes("fp32", N, K) == 4 * N * K


@pytest.mark.parametrize("precision", ["nf4", "nf4-dq", "fp4", "int8", "bf16"])
@pytest.mark.parametrize("shape", [(3, 50), (64, 64), (40, 333)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_weight_bytes_is_what_quant_stores(precision: str, shape: tuple[int, int]) -> None:
    """The model agrees with the real storage of `quant.quantize`, odd sizes (a partial last block) included."""
    fmt, _, dq = precision.partition("-")
    qt = quant.quantize(torch.randn(*shape), fmt, blocksize=64, double_quant=dq == "dq")
    assert weight_bytes(precision, *shape) == qt.nbytes


def test_unknown_precisions_are_refused() -> None:
    with pytest.raises(ValueError, match="nf5"):
        weight_bytes("nf5", N, K)
    with pytest.raises(KeyError):
        matmul_cost(1, N, K, "bf16", act="int4")


@pytest.mark.parametrize("m", [1, 16, 4096])
def test_matmul_cost(m: int) -> None:
    flops, nbytes = matmul_cost(m, 4096, 4096, "nf4")
    assert flops == 2 * m * 4096 * 4096
    assert nbytes == (SQ // 2 + 4 * (SQ // 64)) + 2 * m * 4096 + 2 * m * 4096  # W stored, x (M K) and y (M N) bf16
    flops, nbytes = matmul_cost(m, N, K, "int8", act="fp32")
    assert flops == 2 * m * N * K
    assert nbytes == (N * K + 4 * N) + 4 * m * K + 4 * m * N


def test_matmul_cost_by_number() -> None:
    assert matmul_cost(16, 4096, 4096, "nf4") == (536_870_912.0, 9_437_184.0 + 262_144.0)
    assert matmul_cost(16, N, K, "fp16", act="fp16") == (2 * 16 * N * K, 2 * N * K + 2 * 16 * (K + N))


def test_lora_forward_cost() -> None:
    m, r = 256, 8
    flops, nbytes = lora_cost(m, N, K, r, "bf16")
    assert flops == 2 * m * N * K + 2 * m * r * (K + N) == 2_147_483_648 + 20_971_520
    w, a, b, x, y = 2 * N * K, 2 * r * K, 2 * N * r, 2 * m * K, 2 * m * N
    assert nbytes == w + a + b + x + y == 11_091_968


def test_lora_backward_cost() -> None:
    m, r = 256, 8
    flops, nbytes = lora_cost(m, N, K, r, "bf16", backward=True)
    forward = 2 * m * N * K + 2 * m * r * (K + N)
    dx = 2 * m * N * K + 2 * m * r * (N + K)
    d_a, d_b = 2 * m * r * K, 2 * m * N * r
    assert flops == forward + dx + d_a + d_b == 4 * m * N * K + 6 * m * r * (K + N) == 4_357_881_856
    w, adapters = 2 * N * K, 2 * r * (K + N)
    forward_bytes = w + adapters + 2 * m * (K + N)
    # read again: W, A, B, x (M K), dy (M N); written: dA, dB (the adapters' size) and dx (M K)
    backward_bytes = w + adapters + 2 * m * K + 2 * m * N + adapters + 2 * m * K
    assert nbytes == forward_bytes + backward_bytes == 24_363_008


@pytest.mark.parametrize("precision", ["bf16", "nf4", "nf4-dq", "int8", "fp32"])
@pytest.mark.parametrize("m", [1, 256])
def test_lora_without_adapter_is_the_base_matmul(precision: str, m: int) -> None:
    assert lora_cost(m, N, K, 0, precision) == matmul_cost(m, N, K, precision)
    flops, nbytes = lora_cost(m, N, K, 0, precision, backward=True)
    w = weight_bytes(precision, N, K)
    assert flops == 4 * m * N * K  # forward and dx
    assert nbytes == (w + 2 * m * (K + N)) + (w + 2 * m * (N + 2 * K))


def test_lora_backward_cost_grows_with_rank() -> None:
    costs = [lora_cost(16, N, K, r, "nf4-dq", backward=True) for r in (0, 1, 8, 64)]
    for (f0, b0), (f1, b1) in itertools.pairwise(costs):
        assert f1 > f0 and b1 > b0
    assert costs[2][0] - costs[0][0] == 6 * 16 * 8 * (K + N)


def test_quantize_cost() -> None:
    n = 1024 * 1024
    assert quantize_cost(1024, 1024, "nf4") == (4.0 * n, 4 * n + n // 2 + 4 * (n // 64)) == (4_194_304, 4_784_128)
    dq_bytes = n // 2 + n // 64 + 4 * math.ceil(n / 64 / 256) + 4
    assert quantize_cost(1024, 1024, "nf4-dq") == (4.0 * n, 4 * n + dq_bytes) == (4_194_304, 4_735_236)
    assert quantize_cost(N, K, "int8", source="bf16") == (4.0 * N * K, 2 * N * K + N * K + 4 * N)
    assert quantize_cost(N, K, "fp16") == (4.0 * N * K, 4 * N * K + 2 * N * K)


def test_dequantize_cost() -> None:
    assert dequantize_cost(4096, 4096, "fp4", out="bf16") == (2.0 * SQ, 9_437_184 + 2 * SQ)
    assert (
        dequantize_cost(N, K, "int8", out="bf16")
        == (2.0 * N * K, (N * K + 4 * N) + 2 * N * K)
        == (
            8_388_608,
            12_587_008,
        )
    )
    assert dequantize_cost(N, K, "nf4-dq")[1] == weight_bytes("nf4-dq", N, K) + 4 * N * K  # fp32 out by default


def test_adamw_cost() -> None:
    n = 1 << 20
    # p read and written, g read (3 x 4 bytes); m and v (8 bytes at 32 bits) read and written
    assert adamw_cost(n, 32) == (12.0 * n, 3 * 4 * n + 2 * 8 * n) == (12_582_912, 29_360_128)
    # 8 bits: per moment a uint8 code a parameter and one fp32 absmax per block of 256
    state8 = 2 * (n + 4 * (n // 256))
    assert adamw_cost(n, 8) == (12.0 * n, 3 * 4 * n + 2 * state8) == (12_582_912, 16_842_752)
    assert adamw_cost(n, 32, param="bf16")[1] == 3 * 2 * n + 2 * 8 * n
    # tensors under 4096 elements keep 32-bit states even in an 8-bit optimizer
    assert adamw_cost(1000, 8) == adamw_cost(1000, 32) == (12_000, 28_000)


def test_roofline_memory_bound() -> None:
    # 2 GB at 1000 GB/s: 2 ms at best (1 GFLOP at 100 TFLOP/s would be 10 µs); 4 ms taken is half the roofline
    assert roofline_pct(1e9, 2e9, 4e-3, peak_tflops=100, peak_gbps=1000) == pytest.approx(50.0)
    assert roofline_pct(1e9, 2e9, 2e-3, peak_tflops=100, peak_gbps=1000) == pytest.approx(100.0)


def test_roofline_compute_bound() -> None:
    # 5 TFLOP at 100 TFLOP/s: 50 ms at best (1 GB at 1000 GB/s would be 1 ms); 100 ms taken is 50 %
    assert roofline_pct(5e12, 1e9, 0.1, peak_tflops=100, peak_gbps=1000) == pytest.approx(50.0)
    assert roofline_pct(5e12, 1e9, 0.2, peak_tflops=100, peak_gbps=1000) == pytest.approx(25.0)


@pytest.mark.parametrize(
    ("seconds", "tflops", "gbps"),
    [(0.0, 100, 1000), (-1e-3, 100, 1000), (1e-3, 0.0, 1000), (1e-3, 100, 0.0), (1e-3, -5, 1000), (1e-3, 0, 0)],
)
def test_roofline_is_none_without_time_or_ceilings(seconds: float, tflops: float, gbps: float) -> None:
    assert roofline_pct(1e9, 1e9, seconds, tflops, gbps) is None


def test_the_binding_ceiling() -> None:
    # 1 GFLOP at 100 TFLOP/s is 10 µs; 2 GB at 1000 GB/s is 2 ms: memory binds; 5 TFLOP (50 ms) vs 1 GB (1 ms): compute
    assert roofline_bound(1e9, 2e9, peak_tflops=100, peak_gbps=1000) == "memory"
    assert roofline_bound(5e12, 1e9, peak_tflops=100, peak_gbps=1000) == "compute"
    assert roofline_bound(1e9, 1e9, peak_tflops=0, peak_gbps=1000) is None


def test_above_the_roofline_says_why() -> None:
    assert roofline_flag(None, 1e9, 2**20, "copy") is None and roofline_flag(100.0, 1e9, 2**20, "copy") is None
    cached = roofline_flag(135.0, 4 * 2**20, 50 * 2**20, "copy")  # 4 MiB against a 50 MiB L2
    assert cached == (
        "135% of roofline: its 4 MiB fit in the 50 MiB last-level cache, so part of its traffic came from the cache, "
        "not memory"
    )
    beyond = roofline_flag(104.4, 3 * 2**30, 50 * 2**20, "bf16")
    assert beyond == "104% of roofline: faster than the run's measured bf16 peak, which understates this device"
