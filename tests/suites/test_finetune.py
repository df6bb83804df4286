"""The fine-tuning suite's stacks: qkbench's QLoRA against peft + bitsandbytes on a tiny Llama (the loss trajectories
agree), the cases it sweeps, and the memory parts it records against quant.memory's model."""

from __future__ import annotations

import pytest
import torch

import quant
from quant.memory import optimizer_state_bytes
from suites.shapes import GRIDS

pytest.importorskip("peft")
pytest.importorskip("transformers")
bnb = pytest.importorskip("bitsandbytes")

from kernels.adamw import paged_adamw  # noqa: E402  (after the skips: the suite needs peft and transformers)
from kernels.lora import LoRALinear  # noqa: E402
from suites.bench_finetune import (  # noqa: E402
    HYPER,
    FinetuneModel,
    Trainer,
    adapter_pairs,
    build_model,
    build_stack,
    finetune_cases,
    memory_parts,
    synthetic_batches,
    train_flops,
)

TINY = FinetuneModel("llama-tiny", 2, 64, 128, 4, 4, 128, 16, 2)  # M = 32 rows: the interpreter runs it in seconds
STEPS = 4


def _peft_linears(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    return {
        name.removeprefix("base_model.model."): m.get_base_layer()
        for name, m in model.named_modules()
        if hasattr(m, "get_base_layer") and hasattr(m, "lora_A")
    }


def _same_start(ours, theirs) -> None:  # type: ignore[no-untyped-def]
    """Give qkbench's stack bitsandbytes' NF4 bases and peft's adapters, and both 8-bit AdamW states from 256
    elements on (the tiny adapters are below the default 4096, where both keep 32-bit states)."""
    bases = _peft_linears(theirs.model)
    for name, layer in ours.model.named_modules():
        if isinstance(layer, LoRALinear):
            w = bases[name].weight
            qt = quant.from_bnb(w.data, w.quant_state)
            assert layer.quantized is not None and torch.equal(layer.quantized.data, qt.data), name  # NF4 codes
            # bitsandbytes' CPU 8-bit quantizer rounds an absmax code one step off now and then
            # (tests/quant/test_bnb_conformance.py): take its double-quant state as it is
            layer.quantized = qt
    ours_ab, theirs_ab = adapter_pairs(ours.model), adapter_pairs(theirs.model)
    assert sorted(ours_ab) == sorted(theirs_ab) and len(ours_ab) == 7 * TINY.layers
    with torch.no_grad():
        for path, (a, b) in ours_ab.items():
            assert torch.equal(a, theirs_ab[path][0])  # init_adapters gave both the same start already
            a.copy_(theirs_ab[path][0])
            b.copy_(theirs_ab[path][1])
    ours.optimizer = paged_adamw(ours.trainable, state_bits=8, min_8bit_size=256, **HYPER)
    theirs.optimizer = bnb.optim.PagedAdamW8bit(theirs.trainable, min_8bit_size=256, **HYPER)


def _fp64_loss(theirs, batch: torch.Tensor) -> float:  # type: ignore[no-untyped-def]
    """The first step's loss in fp64: the same Llama with every target's weight the fp64 value of its NF4 codes
    (B = 0 at the start, so the adapters add nothing)."""
    model = build_model(TINY, torch.float64)
    with torch.no_grad():
        for name, base in _peft_linears(theirs.model).items():
            w = quant.from_bnb(base.weight.data, base.weight.quant_state)
            model.get_submodule(name).weight.copy_(w.dequantize(torch.float32).double())
        return float(model(input_ids=batch, labels=batch).loss)


def test_qkbench_qlora_loss_follows_peft_bitsandbytes() -> None:
    """Same weights (NF4 codes byte-identical), same adapters, same data and hyper-parameters, fp32: the stacks
    differ only in the order of their fp32 sums. Tolerance: the first loss may differ by what fp32 rounding does
    to it, twice |L32 - L64| (fp32 against fp64, STYLE §5) plus one fp32 rounding of L; each step can add at most
    as much again (AdamW's update is bounded by lr a parameter, so rounding-sized gradient differences move the
    next loss by rounding-sized amounts), so step t allows (t + 1) times that."""
    dtype = torch.float32
    theirs = build_stack("peft-bnb", TINY, 8, dtype)
    ours = build_stack("qkbench", TINY, 8, dtype)
    _same_start(ours, theirs)
    batches = synthetic_batches(TINY)
    t_ours, t_theirs = Trainer(ours, batches), Trainer(theirs, batches)
    for _ in range(STEPS):
        t_ours.step()
        t_theirs.step()
    l64 = _fp64_loss(theirs, batches[0])
    l_ours, l_theirs = [float(x) for x in t_ours.losses], [float(x) for x in t_theirs.losses]
    per_step = 2 * abs(l_theirs[0] - l64) + 2**-23 * abs(l64)
    for t, (a, b) in enumerate(zip(l_ours, l_theirs, strict=True)):
        assert abs(a - b) <= (t + 1) * per_step, (t, l_ours, l_theirs, per_step)
    # the trajectories move by far more than the tolerance: the steps (8-bit states included) are compared
    assert abs(l_theirs[-1] - l_theirs[0]) > 100 * STEPS * per_step
    assert any(s["state1"].dtype == torch.uint8 for s in theirs.optimizer.state.values())


def test_cases_cover_four_providers_and_two_ranks() -> None:
    rows = finetune_cases(GRIDS["quick"])
    assert {(r["impl"], r["rank"]) for r in rows} == {
        ("qkbench", 8), ("qkbench", 64), ("peft-bnb", 8), ("peft-bnb", 64), ("peft", 8), ("peft", 64), ("torch", None),
    }  # fmt: skip
    assert {r["shape"] for r in finetune_cases(GRIDS["full"])} == {"llama2-7b-2l", "llama3-8b-2l"}


def test_flops_by_method() -> None:
    spec = TINY.spec()
    p = spec.linear_params + spec.vocab * spec.d_model  # the linears and the LM head
    adapters = 2 * 8 * ((64 + 64) * 4 + (128 + 64) * 3)  # r (N + K): q, k, v, o are 64 x 64; gate, up, down 128 x 64
    assert train_flops(TINY, "full", None) == 6 * p * TINY.tokens
    assert train_flops(TINY, "qlora", 8) == (4 * p + 6 * adapters) * TINY.tokens


def test_memory_parts_match_the_tensors_held() -> None:
    """After a step of qkbench's stack: weights are the quantized bases' exact bytes plus the dense rest, adapters
    r (N + K) fp32 values a projection, optimizer states quant.memory's byte count of each adapter tensor."""
    stack = build_stack("qkbench", TINY, 8, torch.float32)
    trainer = Trainer(stack, synthetic_batches(TINY))
    trainer.step()
    parts = memory_parts(stack)
    layers = [m for m in stack.model.modules() if isinstance(m, LoRALinear)]
    quantized = sum(m.quantized.nbytes - 4 for m in layers if m.quantized is not None)  # the offset: a Python float
    codebooks = 4 * (16 + 256)  # the NF4 and the 8-bit dynamic maps, one copy each (nbytes leaves shared ones out)
    dense = sum(p.numel() * 4 for p in stack.model.parameters() if not p.requires_grad)
    buffers = sum(b.numel() * b.element_size() for b in stack.model.buffers())
    assert parts["weights_bytes"] == quantized + codebooks + dense + buffers
    assert parts["adapters_bytes"] == 4 * sum(p.numel() for p in stack.trainable) == trainer.gradients_bytes
    assert parts["optimizer_bytes"] == sum(optimizer_state_bytes(p.numel(), 8) for p in stack.trainable)
    assert trainer.activations_bytes is not None and trainer.activations_bytes > 0
