"""Paged AdamW with fp32 or blockwise 8-bit states (QLoRA's paged optimizers, Dettmers et al. 2021/2023).

states.py   the update math (torch reference), StateFormat with a subclass per width (Fp32States,
            Blockwise8States), exact state bytes
pager.py    StatePager: LRU residency under a byte budget, host backing, side-stream prefetch, counters
adamw.py    PagedAdamW: the torch.optim.Optimizer (param groups, maximize, step, state_dict)
checks.py   what PagedAdamW refuses (hyper-parameters, torch flags it does not implement, gradients, saved
            steps and states), each checked before anything changes

The fused Triton update lives in kernels/adamw.py (`kernels.adamw.paged_adamw(...)`); quant/ never imports it.
"""

from quant.optim.adamw import PagedAdamW
from quant.optim.pager import PagerStats, StatePager
from quant.optim.states import (
    OPTIM_BLOCKSIZE,
    AdamWHyper,
    AdamWUpdate,
    Blockwise8State,
    Blockwise8States,
    Fp32States,
    StateFormat,
    TorchAdamWUpdate,
    adamw_8bit_ref,
    adamw_fp32_ref,
    state_bytes,
    state_bytes_per_param,
)

__all__ = [
    "OPTIM_BLOCKSIZE",
    "AdamWHyper",
    "AdamWUpdate",
    "Blockwise8State",
    "Blockwise8States",
    "Fp32States",
    "PagedAdamW",
    "PagerStats",
    "StateFormat",
    "StatePager",
    "TorchAdamWUpdate",
    "adamw_8bit_ref",
    "adamw_fp32_ref",
    "state_bytes",
    "state_bytes_per_param",
]
