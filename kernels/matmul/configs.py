"""Which kernel and config `kernels.matmul` runs for a shape: named configs per path and `plan()`.

The suites record `plan(...).path` and `.config` beside each measurement.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton

from kernels.device import INTERPRET
from quant import QuantizedTensor

__all__ = ["CONFIGS", "GEMV_MAX_M", "LORA_MAX_FUSED_R", "MatmulConfig", "Plan", "plan"]

GEMV_MAX_M = 16
LORA_MAX_FUSED_R = 64  # xa (BLOCK_M, R_PAD) fp32 lives in registers beside the output tile
_TARGET_PROGRAMS = 264  # about two waves on an H100 (132 SMs): split K until N tiles x splits reach this


@dataclass(frozen=True)
class MatmulConfig:
    """Tile sizes and launch settings of one path."""

    block_m: int
    block_n: int
    block_k: int
    num_warps: int
    num_stages: int

    @property
    def name(self) -> str:
        c = self
        return f"BM{c.block_m}-BN{c.block_n}-BK{c.block_k}-w{c.num_warps}-s{c.num_stages}"


# The named configs per path (all audited). Under the interpreter the launcher uses the first of each path.
# gemm: "small" for modest M or N, "large" for big M and N, "lora-wide" when the LoRA rank pads past 16 (the
# (BLOCK_M, R_PAD) xa accumulator needs the registers of 8 warps and a narrower N tile). Every config here compiles
# for sm_80 and sm_90 without spills (python -m kernels.audit).
CONFIGS: dict[str, dict[str, MatmulConfig]] = {
    "gemv": {"narrow": MatmulConfig(16, 64, 64, 4, 3), "wide": MatmulConfig(16, 128, 64, 8, 3)},
    "gemm": {
        "small": MatmulConfig(64, 64, 32, 4, 3),
        "large": MatmulConfig(128, 64, 32, 8, 2),
        "lora-wide": MatmulConfig(64, 32, 32, 8, 2),
    },
}


@dataclass(frozen=True)
class Plan:
    """What `matmul` runs for a shape: the path, the config name (with the split-K factor) and the config."""

    path: str
    config: str
    tiles: MatmulConfig
    split_k: int = 1


def plan(m: int, n: int, k: int, w: QuantizedTensor | torch.Tensor, rank: int = 0) -> Plan:
    """The path and config `matmul` uses for x (M, K) @ W^T (N, K), with a LoRA epilogue of `rank` (0: none).

    A fixed rule, no timing; under the interpreter the first config of each path, so CPU tests stay fast.
    """
    # a 4-bit W with K not a multiple of its blocksize gathers a scale per element: the narrow gemv tile only
    unaligned = isinstance(w, QuantizedTensor) and w.fmt in ("nf4", "fp4") and k % w.blocksize != 0
    if m <= GEMV_MAX_M and not rank:
        name = "narrow" if INTERPRET or n <= 4096 or unaligned else "wide"
        cfg = CONFIGS["gemv"][name]
        n_tiles, k_tiles = triton.cdiv(n, cfg.block_n), triton.cdiv(k, cfg.block_k)
        split = 1
        while n_tiles * split * 2 <= _TARGET_PROGRAMS and split * 2 <= k_tiles and split < 16:
            split *= 2
        return Plan("gemv", f"{name}-{cfg.name}-split{split}", cfg, split)
    big = not INTERPRET and m > 128 and n > 1024
    name = "lora-wide" if rank > 16 else "large" if big else "small"
    cfg = CONFIGS["gemm"][name]
    return Plan("gemm", f"{name}-{cfg.name}", cfg)
