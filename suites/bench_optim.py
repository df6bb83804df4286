"""AdamW step time, state memory and paging traffic on LoRA adapter sets.

Providers and precisions ("adamw32", "adamw8": state width; "-paged": a budget of half the states' bytes):
- torch: torch.optim.AdamW (fused on CUDA, foreach on the CPU), the reference provider;
- qkbench: `kernels.adamw.paged_adamw` (PagedAdamW; the fused Triton update on CUDA, the torch reference update
  on the CPU), unpaged and paged;
- bitsandbytes: AdamW (32-bit), AdamW8bit, PagedAdamW8bit (bitsandbytes pages on CUDA only; on the CPU it falls
  back to unpaged and says so).
The parameters are 128 fp32 tensors (the A and B matrices of a LoRA adapter set) with fixed gradients; a round is
one `step()`. The error is the first step's first tensor against torch's AdamW from the same start.
"""

from __future__ import annotations

from typing import Any

import torch

from kernels.device import DEVICE
from quant.optim import state_bytes_per_param
from suites.measure import Case, Meter
from suites.metrics import adamw_cost
from suites.shapes import Grid, sweep

TENSORS = 128
HYPER: dict[str, Any] = {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.01}
PROVIDERS = {
    "torch": ("adamw32",),
    "qkbench": ("adamw32", "adamw8", "adamw32-paged", "adamw8-paged"),
    "bitsandbytes": ("adamw32", "adamw8", "adamw8-paged"),
}


def optim_cases(grid: Grid) -> list[dict[str, Any]]:
    return [
        {"impl": impl, "precision": precision, "shape": label}
        for label, _ in grid.optim_params
        for impl, precisions in PROVIDERS.items()
        for precision in precisions
    ]


def _params(numel: int) -> list[torch.nn.Parameter]:
    gen = torch.Generator(device=DEVICE).manual_seed(0)
    size = max(1, numel // TENSORS)
    params = []
    for _ in range(TENSORS):
        p = torch.nn.Parameter(torch.randn(size, generator=gen, device=DEVICE) * 0.02)
        p.grad = torch.randn(size, generator=gen, device=DEVICE) * 1e-3
        params.append(p)
    return params


def _optimizer(impl: str, precision: str, params: list[torch.nn.Parameter]) -> Any:
    bits = 8 if precision.startswith("adamw8") else 32
    paged = precision.endswith("-paged")
    if impl == "torch":
        return torch.optim.AdamW(params, **HYPER, fused=DEVICE.type == "cuda", foreach=DEVICE.type != "cuda" or None)
    if impl == "bitsandbytes":
        import bitsandbytes as bnb

        kind = bnb.optim.PagedAdamW8bit if paged else bnb.optim.AdamW8bit if bits == 8 else bnb.optim.AdamW
        return kind(params, **HYPER)
    from kernels.adamw import paged_adamw

    budget = None
    if paged:
        state = sum(p.numel() for p in params) * state_bytes_per_param(bits)
        budget = max(int(state // 2), max(p.numel() for p in params) * 8)  # one tensor's states must fit
    return paged_adamw(params, state_bits=bits, budget_bytes=budget, **HYPER)


@sweep(optim_cases)
def test_adamw_step(benchmark: Any, meter: Meter, grid: Grid, impl: str, precision: str, shape: str) -> None:
    numel = dict(grid.optim_params)[shape]
    numel = numel // TENSORS * TENSORS
    bits = 8 if precision.startswith("adamw8") else 32
    flops, nbytes = adamw_cost(numel, bits)
    case = Case("optim", "adamw_step", impl, precision, shape, shape.split(".")[-1], flops=flops, bytes=nbytes)
    case.baseline = impl == "torch"
    case.extra["state_bytes_per_param"] = state_bytes_per_param(bits)
    if impl == "qkbench" and precision.endswith("-paged"):  # page-outs run on the pager's own (non-blocking)
        case.timer = "perf_counter"  # CUDA stream, which an event on the current stream does not wait for
    held: dict[str, Any] = {}

    def build() -> Any:
        params = _params(numel)
        held["start"] = params[0].detach().clone()
        opt = _optimizer(impl, precision, params)
        held["opt"] = opt

        def step() -> torch.Tensor:
            opt.step()
            return params[0]

        return step

    def reference() -> torch.Tensor:
        p = torch.nn.Parameter(held["start"].clone())
        p.grad = _params(numel)[0].grad
        torch.optim.AdamW([p], **HYPER).step()
        return p.detach()

    def pager() -> dict[str, Any]:
        """The pager's counters over every step the case ran (qkbench only)."""
        opt = held["opt"]
        if impl != "qkbench":
            return {}
        stats = opt.stats()
        return {
            "page_ins": stats.page_ins,
            "page_outs": stats.page_outs,
            "bytes_moved": stats.bytes_moved,
            "peak_resident_bytes": stats.peak_resident_bytes,
            "budget_bytes": stats.budget_bytes,
        }

    meter.run(benchmark, case, build, reference, after=pager)
