"""The papers' tables, recomputed from quant.memory beside the figures the papers print.

- LoRA (Hu et al., 2021), GPT-3 175B with Wq and Wv adapted: trainable parameters r·(d+d) per matrix over 96
  layers (table 4: 4.7M at r = 1 and 37.7M at r = 8; §7.1: the 18M budget at r = 4, "roughly 35MB" in fp16;
  table 15: 301.9M at r = 64), and checkpoints: 350 GB for the full model against ~35 MB for r = 4 (§4.2).
- QLoRA (Dettmers et al., 2023): bits per parameter of NF4 with 64-blocks, 4.5 without and 4.127 with double
  quantization (§3: 32/64 = 0.5 bits of constants, 8/64 + 32/(64·256) = 0.127 with it), and the memory to
  fine-tune LLaMA 7B..65B; the paper's claim is 65B from >780 GB (16-bit full fine-tuning) to <48 GB (QLoRA).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["lora_gpt3", "qlora_bits", "qlora_memory"]

LORA_PAPER = {1: "4.7M (table 4)", 4: "18M budget, ~35 MB (§7.1)", 8: "37.7M (table 4)", 64: "301.9M (table 15)"}
QLORA_BITS_PAPER = {False: "4.5 (0.5 bits of constants)", True: "4.127 (0.127 bits of constants)"}
QLORA_MEMORY_PAPER = {"llama-65b": {"full": ">780 GB", "qlora": "<48 GB"}}


def lora_gpt3() -> pd.DataFrame:
    """LoRA on GPT-3 175B, Wq and Wv: rank, trainable parameters, fp16 checkpoint, and what the paper prints."""
    import pandas as pd

    from quant.memory import MODELS, lora_checkpoint_bytes, lora_params

    gpt3 = MODELS["gpt3-175b"]
    rows = [
        {
            "adapted": "LoRA on Wq, Wv",
            "rank": r,
            "trainable params": lora_params(gpt3, r, ("q_proj", "v_proj")),
            "trainable (M)": lora_params(gpt3, r, ("q_proj", "v_proj")) / 1e6,
            "checkpoint (MB, fp16)": lora_checkpoint_bytes(gpt3, r, ("q_proj", "v_proj")) / 1e6,
            "paper": LORA_PAPER[r],
        }
        for r in LORA_PAPER
    ]
    full = {
        "adapted": "every weight (full fine-tuning)",
        "rank": None,
        "trainable params": gpt3.n_params,
        "trainable (M)": gpt3.n_params / 1e6,
        "checkpoint (MB, fp16)": 2 * gpt3.n_params / 1e6,
        "paper": "175B, 350 GB (§4.2)",
    }
    return pd.DataFrame([full, *rows])


def qlora_bits() -> pd.DataFrame:
    """Bits per parameter of NF4 (blocksize 64) with and without double quantization, beside int8 and bf16."""
    import pandas as pd

    from quant.memory import bits_per_param

    rows = [
        {
            "format": "nf4" + (" + double quant" if dq else ""),
            "bits per parameter": bits_per_param("nf4", 64, double_quant=dq),
            "constants (bits)": bits_per_param("nf4", 64, double_quant=dq) - 4,
            "paper": QLORA_BITS_PAPER[dq],
        }
        for dq in (False, True)
    ]
    rows += [
        {"format": fmt, "bits per parameter": bits_per_param(fmt), "constants (bits)": 0.0, "paper": ""}
        for fmt in ("int8", "bf16")
    ]
    return pd.DataFrame(rows)


def qlora_memory(models: tuple[str, ...] = ("llama-7b", "llama-13b", "llama-33b", "llama-65b")) -> pd.DataFrame:
    """Memory (GB, weights + gradients + AdamW states + adapters, no activations) to fine-tune each model with
    full fine-tuning (16-bit, 32-bit AdamW), LoRA (16-bit base) and QLoRA (NF4 + double quant), r = 64 on all
    linear layers (QLoRA's setting)."""
    import pandas as pd

    from quant.memory import MODELS, training_memory

    rows = []
    for name in models:
        spec = MODELS[name]
        row: dict[str, object] = {"model": name, "params (B)": spec.n_params / 1e9}
        for method in ("full", "lora", "qlora"):
            row[f"{method} (GB)"] = training_memory(spec, method, rank=64, targets="all").total / 1e9
        paper = QLORA_MEMORY_PAPER.get(name, {})
        row["paper"] = ", ".join(f"{m}: {v}" for m, v in paper.items())
        rows.append(row)
    return pd.DataFrame(rows)
