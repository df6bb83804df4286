"""Codebooks: NF4 from normal quantiles, FP4 and the dynamic maps, checked against the paper and bitsandbytes."""

from __future__ import annotations

import bitsandbytes.functional as bnbf
import torch

from quant.codebooks import FP4, NF4, dynamic_map, fp4_values, nf4_from_quantiles, sorted_with_order

# QLoRA, appendix E, as printed (the paper's table, typed in here; not produced by this code).
NF4_PAPER = [
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
    -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
    0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
    0.7229568362236023, 1.0,
]  # fmt: skip


def test_nf4_derivation_matches_the_paper_within_1e6() -> None:
    derived = nf4_from_quantiles()
    assert derived.shape == (16,)
    assert (derived - torch.tensor(NF4_PAPER)).abs().max() <= 1e-6
    assert int((derived == 0).sum()) == 1, "NF4 has exactly one zero"
    assert int((derived < 0).sum()) == 7 and int((derived > 0).sum()) == 8, "asymmetric: 7 negative, 8 positive"


def test_nf4_quantizer_table_is_the_published_one() -> None:
    assert torch.equal(NF4, torch.tensor(NF4_PAPER, dtype=torch.float32))
    assert torch.equal(NF4, bnbf.get_4bit_type("nf4", device="cpu"))


def test_fp4_equals_bitsandbytes() -> None:
    assert torch.equal(fp4_values(), bnbf.get_4bit_type("fp4", device="cpu"))
    assert FP4.abs().max() == 1.0


def test_dynamic_maps_equal_bitsandbytes() -> None:
    assert torch.equal(dynamic_map(signed=True), bnbf.create_dynamic_map(signed=True))
    assert torch.equal(dynamic_map(signed=False), bnbf.create_dynamic_map(signed=False))
    signed = dynamic_map(signed=True)
    assert signed.shape == (256,) and bool((signed[1:] > signed[:-1]).all()), "signed map strictly increasing"


def test_thresholds_sit_between_sorted_values() -> None:
    for code in (NF4, FP4):
        thresholds, order = sorted_with_order(code)
        values = code[order]
        assert bool((values[:-1] <= thresholds).all() and (thresholds <= values[1:]).all())  # FP4 has +0 and -0


def test_shared_codebooks_have_one_copy_per_device() -> None:
    """Quantized weights on a GPU share one codebook copy per device, as they share the CPU original ("meta"
    stands in for a second device here); any other tensor is simply moved."""
    from quant.codebooks import NF4, SIGNED_DYNAMIC, on_device

    copy = on_device(NF4, "meta")
    assert copy.device.type == "meta" and on_device(NF4, "meta") is copy
    assert on_device(SIGNED_DYNAMIC, "meta") is not copy
    assert on_device(copy, "cpu") is NF4 and on_device(NF4, "cpu") is NF4  # back home: the original
    other = NF4.clone()
    assert on_device(other, "meta") is not on_device(other, "meta")
