"""suites/metrics.py: the FLOP and byte models, checked against arithmetic written out by hand."""

from __future__ import annotations

import math

import pytest

from suites.metrics import (
    adamw_cost,
    dequantize_cost,
    lora_cost,
    matmul_cost,
    quantize_cost,
    roofline_pct,
    weight_bytes,
)

N = K = 4096


def test_weight_bytes_per_format() -> None:
    n = N * K
    assert weight_bytes("bf16", N, K) == 2 * n
    assert weight_bytes("fp32", N, K) == 4 * n
    assert weight_bytes("int8", N, K) == n + 4 * N  # one fp32 scale per row
    assert weight_bytes("nf4", N, K) == n // 2 + 4 * (n // 64)
    # double quantization: an 8-bit code per block, an fp32 absmax per 256 blocks, one fp32 mean
    assert weight_bytes("nf4-dq", N, K) == n // 2 + n // 64 + 4 * math.ceil(n / 64 / 256) + 4
    assert weight_bytes("fp4-dq", N, K) == weight_bytes("nf4-dq", N, K)


@pytest.mark.parametrize("m", [1, 16, 4096])
def test_matmul_cost(m: int) -> None:
    flops, nbytes = matmul_cost(m, N, K, "nf4-dq", act="bf16")
    assert flops == 2 * m * N * K
    assert nbytes == weight_bytes("nf4-dq", N, K) + 2 * m * K + 2 * m * N


def test_lora_forward_adds_the_adapter_path() -> None:
    m, r = 4096, 16
    base = matmul_cost(m, N, K, "bf16")
    assert lora_cost(m, N, K, 0, "bf16") == base
    flops, nbytes = lora_cost(m, N, K, r, "bf16")
    assert flops == 2 * m * N * K + 2 * m * r * (K + N)
    assert nbytes == base[1] + 2 * r * (K + N)


def test_lora_backward_flops_and_bytes() -> None:
    m, r = 8, 4
    flops, nbytes = lora_cost(m, N, K, r, "nf4-dq", backward=True)
    # forward 2MNK + 2MR(K+N); dx 2MNK + 2MR(N+K); dA 2MRK; dB 2MNR
    assert flops == 4 * m * N * K + 6 * m * r * (K + N)
    w, adapters = weight_bytes("nf4-dq", N, K), 2 * r * (K + N)
    forward = w + adapters + 2 * m * (K + N)
    assert nbytes == forward + w + 2 * adapters + 2 * m * (N + 2 * K)


def test_quantize_and_dequantize_costs() -> None:
    flops, nbytes = quantize_cost(N, K, "nf4", source="fp32")
    assert flops == 4 * N * K and nbytes == 4 * N * K + weight_bytes("nf4", N, K)
    flops, nbytes = dequantize_cost(N, K, "int8", out="bf16")
    assert flops == 2 * N * K and nbytes == weight_bytes("int8", N, K) + 2 * N * K


def test_adamw_cost_uses_the_state_bytes() -> None:
    numel = 1 << 20
    assert adamw_cost(numel, 32) == (12 * numel, 3 * 4 * numel + 2 * 8 * numel)
    state8 = 2 * (numel + 4 * numel // 256)  # codes + one fp32 absmax per block of 256, for m and v
    assert adamw_cost(numel, 8) == (12 * numel, 3 * 4 * numel + 2 * state8)


def test_roofline_pct() -> None:
    # memory-bound: 1 GB at 1000 GB/s takes 1 ms at best; 2 ms taken is 50 %
    assert roofline_pct(1e9, 1e9, 2e-3, peak_tflops=100, peak_gbps=1000) == pytest.approx(50.0)
    # compute-bound: 1 TFLOP at 100 TFLOP/s is 10 ms at best; 10 ms taken is 100 %
    assert roofline_pct(1e12, 1e6, 1e-2, peak_tflops=100, peak_gbps=1000) == pytest.approx(100.0)
    assert roofline_pct(1e9, 1e9, 0.0, 100, 1000) is None
    assert roofline_pct(1e9, 1e9, 1e-3, 0.0, 1000) is None
