"""Memory accounting against the papers' published numbers (typed in from the papers, not computed here)."""

from __future__ import annotations

import pytest

from quant.memory import MODELS, lora_checkpoint_bytes, lora_params, training_memory, weight_bytes


@pytest.mark.parametrize(("rank", "published"), [(1, 4.7e6), (4, 18.9e6), (8, 37.7e6), (64, 301.9e6)])
def test_lora_paper_gpt3_trainable_parameters(rank, published) -> None:
    """LoRA paper, table 4 (GPT-3 175B, Wq and Wv adapted)."""
    # printed to 0.1M, sometimes rounded (18,874,368 -> 18.9M), sometimes truncated (301,989,888 -> 301.9M)
    assert abs(lora_params(MODELS["gpt3-175b"], rank, ("q_proj", "v_proj")) - published) < 0.1e6


def test_lora_paper_checkpoint_size() -> None:
    """LoRA paper §4.2: the r = 4 (Wq, Wv) checkpoint is about 35 MB, from 350 GB for the full model."""
    assert lora_checkpoint_bytes(MODELS["gpt3-175b"], 4) == pytest.approx(35e6, rel=0.1)
    assert weight_bytes(MODELS["gpt3-175b"], "fp16") == pytest.approx(350e9, rel=0.01)


@pytest.mark.parametrize(
    ("name", "published"),
    [("llama-7b", 6.7e9), ("llama-13b", 13.0e9), ("llama-33b", 32.5e9), ("llama-65b", 65.2e9),
     ("llama2-70b", 69.0e9), ("llama3-8b", 8.03e9), ("llama3-70b", 70.6e9), ("gpt3-175b", 175e9)],
)  # fmt: skip
def test_parameter_counts_match_published(name, published) -> None:
    assert MODELS[name].n_params == pytest.approx(published, rel=0.01)


def test_qlora_65b_fits_48gb_and_full_needs_780gb() -> None:
    """QLoRA abstract and §1: 65B full 16-bit fine-tuning needs > 780 GB; QLoRA fits a 48 GB GPU."""
    spec = MODELS["llama-65b"]
    assert training_memory(spec, "full").total > 780e9
    assert training_memory(spec, "qlora").total < 48e9


def test_method_ordering_and_components() -> None:
    spec = MODELS["llama2-7b"]
    full, lora, qlora = (training_memory(spec, m) for m in ("full", "lora", "qlora"))
    assert full.total > lora.total > qlora.total
    assert lora.weights == weight_bytes(spec, "bf16") and qlora.weights == weight_bytes(spec, "nf4", 64, True)
    assert training_memory(spec, "full", optimizer_bits=8).optimizer < full.optimizer / 3


def test_bad_arguments_are_named() -> None:
    spec = MODELS["llama2-7b"]
    with pytest.raises(ValueError, match="targets"):
        lora_params(spec, 8, ("wq",))
    with pytest.raises(ValueError, match="rank"):
        lora_params(spec, 0)
    with pytest.raises(ValueError, match="method"):
        training_memory(spec, "prefix")  # type: ignore[arg-type]
