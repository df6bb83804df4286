"""Fused LoRA/QLoRA: y = x W^T + s (d(x) A^T) B^T + bias with W frozen (dense, NF4/FP4 or int8).

naive.py     lora_ref (plain torch), LoRAAdapter (A, B, scale, dropout)
bwd.py       backward kernels dy B, dx, dA, dB and their launchers (the forward is kernels.matmul's)
function.py  LoRAFunction (autograd; the derivation) and lora_linear
layer.py     LoRALinear: from_linear, named adapters, merge/unmerge, state dict with the quantized base
interop.py   peft <-> LoRALinear, adapters saved and loaded in peft's format
"""

from kernels.lora.bwd import audit_workloads, lora_da, lora_db, lora_dx, lora_dyb
from kernels.lora.function import LoRAFunction, lora_linear
from kernels.lora.interop import from_peft, load_adapters, save_adapters, to_peft
from kernels.lora.layer import AdapterConfig, LoRALinear
from kernels.lora.naive import LoRAAdapter, lora_ref

__all__ = [
    "AdapterConfig",
    "LoRAAdapter",
    "LoRAFunction",
    "LoRALinear",
    "audit_workloads",
    "from_peft",
    "load_adapters",
    "lora_da",
    "lora_db",
    "lora_dx",
    "lora_dyb",
    "lora_linear",
    "lora_ref",
    "save_adapters",
    "to_peft",
]
