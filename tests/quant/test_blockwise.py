"""The CPU fast path of 4-bit quantization (threshold table) against the readable rule (bucketize)."""

from __future__ import annotations

import pytest
import torch

from quant import blockwise
from quant.blockwise import CODEBOOKS_4BIT


@pytest.mark.parametrize("fmt", ["nf4", "fp4"])
def test_threshold_table_equals_bucketize_at_every_threshold(fmt) -> None:
    """Values within a few ulps of each decision threshold (where a wrong bin would show) and a dense sweep."""
    book = CODEBOOKS_4BIT[fmt]
    near = [book.thresholds]
    for _ in range(4):
        near.append(torch.nextafter(near[-1], torch.full_like(near[-1], 2.0)))
        near.insert(0, torch.nextafter(near[0], torch.full_like(near[0], -2.0)))
    edges = torch.tensor([-1.0, 1.0, 0.0, -0.0])
    values = torch.cat([*near, edges, torch.linspace(-1, 1, 200_001), torch.rand(100_000) * 2 - 1])
    assert torch.equal(book.table.lookup(values).long(), torch.bucketize(values, book.thresholds))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("blocksize", [32, 256, 4096])
@pytest.mark.parametrize("fmt", ["nf4", "fp4"])
def test_chunked_cpu_path_equals_generic_path(fmt, blocksize, dtype) -> None:
    """Chunks of whole blocks pack independently: across chunk edges, a short last block and an odd count."""
    flat = torch.randn(3 * (1 << 20) + 12345).to(dtype)
    flat[5 * blocksize : 6 * blocksize] = 0.0  # an all-zero block
    book = CODEBOOKS_4BIT[fmt]
    packed, absmax = blockwise._quantize_4bit_cpu(flat, book, blocksize)
    ref_packed, ref_absmax = blockwise._quantize_4bit_generic(flat, book, blocksize)
    assert torch.equal(absmax, ref_absmax)
    assert torch.equal(packed, ref_packed)


def test_all_zero_blocks_code_zero() -> None:
    x = torch.zeros(256)
    x[200] = 1.0
    packed, absmax = blockwise.quantize_4bit(x, "nf4", 64)
    assert absmax[:3].eq(0).all() and absmax[3] == 1.0
    out = blockwise.dequantize_4bit(packed, absmax, CODEBOOKS_4BIT["nf4"].code, 64, 256, torch.float32)
    assert torch.equal(out, x)


@pytest.mark.parametrize("signed", [True, False], ids=["signed", "unsigned"])
def test_bits_table_equals_bucketize_for_the_dynamic_maps(signed) -> None:
    """The 8-bit CPU path: near every threshold (a few ulps each side), ±0, ±1, tiny magnitudes and a sweep."""
    from quant.codebooks import dynamic_map, sorted_with_order

    thresholds, _ = sorted_with_order(dynamic_map(signed=signed))
    table = blockwise._BitsTable(thresholds)
    near = [thresholds]
    for _ in range(3):
        near.append(torch.nextafter(near[-1], torch.full_like(near[-1], 2.0)))
        near.insert(0, torch.nextafter(near[0], torch.full_like(near[0], -2.0)))
    tiny = torch.logspace(-12, 0, 20_000)
    edges = torch.tensor([-1.0, 1.0, 0.0, -0.0, 1e-45, -1e-45])
    values = torch.cat([*near, edges, tiny, -tiny, torch.linspace(-1, 1, 100_001), torch.randn(100_000).clamp(-1, 1)])
    assert torch.equal(table.lookup(values).long(), torch.bucketize(values, thresholds))


def test_quantize_8bit_cpu_table_path_equals_bucketize_path() -> None:
    """Large inputs take the table (in chunks), small ones bucketize: the same codes either way."""
    from quant.codebooks import dynamic_map

    x = torch.randn(2 * (1 << 20) + 77) * torch.logspace(-6, 0, 2 * (1 << 20) + 77)  # magnitudes over 6 decades
    code = dynamic_map(signed=True)
    codes, absmax = blockwise.quantize_8bit(x, code, 256)
    pieces = [blockwise.quantize_8bit(x[i : i + 256 * 200], code, 256) for i in range(0, x.numel(), 256 * 200)]
    assert torch.equal(codes, torch.cat([p[0] for p in pieces]))  # each piece < _TABLE_MIN: bucketize
    assert torch.equal(absmax, torch.cat([p[1] for p in pieces]))
