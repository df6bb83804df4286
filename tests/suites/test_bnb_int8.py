"""bitsandbytes' int8 cases hand its int8 path fp16 on every device: its CUDA kernels refuse anything else ("A
must be float16"), its CPU backend does not, so here a stand-in as strict as CUDA's wraps the real op."""

from __future__ import annotations

from typing import Any

import bitsandbytes.functional as bnb_functional
import pytest
import torch

from suites.bench_matmul import _bnb
from suites.bench_quantize import _bnb_quantize
from suites.measure import error


@pytest.fixture
def seen(monkeypatch: pytest.MonkeyPatch) -> list[torch.dtype]:
    """The dtypes int8_vectorwise_quant was given, refusing all but fp16 as bitsandbytes' CUDA backend does."""
    real, dtypes = bnb_functional.int8_vectorwise_quant, []

    def as_on_cuda(a: torch.Tensor, threshold: float = 0.0) -> Any:
        dtypes.append(a.dtype)
        if a.dtype != torch.float16:
            raise ValueError(f"A must be float16, got {a.dtype}")
        return real(a, threshold)

    monkeypatch.setattr(bnb_functional, "int8_vectorwise_quant", as_on_cuda)
    return dtypes


def test_the_int8_matmul_quantizes_fp16_and_answers_in_the_activations_dtype(seen: list[torch.dtype]) -> None:
    gen = torch.Generator().manual_seed(0)
    w = (torch.randn(256, 512, generator=gen) / 512**0.5).to(torch.bfloat16)
    x = torch.randn(16, 512, generator=gen).to(torch.bfloat16)
    op = _bnb(x, w, "int8")
    y = op()
    assert seen == [torch.float16, torch.float16]  # W once when built, x in the call
    assert y.dtype == torch.bfloat16 and y.shape == (16, 256)
    err_max, err_rel = error(y, x.float() @ w.float().T)  # the suite's reference: the original W in fp32
    assert err_rel < 0.02  # int8's quantization error (and bf16's rounding of y), nothing larger
    assert err_max < 0.1


def test_the_int8_quantize_casts_its_fp32_source_to_fp16(seen: list[torch.dtype]) -> None:
    w = torch.randn(64, 128, generator=torch.Generator().manual_seed(0))
    q, stats, _ = _bnb_quantize(w, "int8")()
    assert seen == [torch.float16] and q.dtype == torch.int8 and q.shape == w.shape
    assert torch.allclose(q.float() * stats[:, None] / 127, w, atol=stats.max().item() / 127)
