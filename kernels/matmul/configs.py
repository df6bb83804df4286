"""Which path and config `kernels.matmul` runs for a shape: `plan()`, one fixed rule (no timing), used both to
launch and to audit (kernels.audit compiles what `matmul_launches` builds from the same plan).

Paths, by M (rows of x) and W:
- "gemv"     M <= GEMV_MAX_M and W row-aligned (4-bit: K a multiple of the blocksize): kernels/matmul/gemv.py, a
             program per BLOCK_N rows of W over all of K; BLOCK_N is the largest power of two <= 16 that still
             gives >= MIN_PROGRAMS programs (two waves on 132 SMs), down to 1.
- "gemm"     GEMV_MAX_M < M <= GEMM_MAX_M[kind], or a 4-bit W whose rows are not block-aligned (any M): the fused
             tensor-core kernel (fwd.py), W decoded in registers per tile.
- "dequant"  M > GEMM_MAX_M[kind] with a quantized W: dequantize W once to x's dtype (kernels.dequant), then
             torch.matmul (cuBLAS): the bf16 copy of W costs 2 bytes a weight written and read once.
- "torch"    M > GEMM_MAX_M["dense"] with a dense W: torch.matmul alone.
The thresholds are where kernels.audit's model (H100, sm_90 machine code) has the fused kernel stop beating
dequantize + cuBLAS on the audit's Llama shapes: a 4-bit tile decode costs about one warp instruction a weight per
M tile, so the fused kernel loses from M = 64 on (predicted 0.14-0.25 of cuBLAS there, dequantize + cuBLAS about
the same at 64 and ahead from 128); int8 decodes in a multiply and keeps up to M = 256 (0.8-0.95 of cuBLAS).
With LoRA (rank R), xa = x A^T is computed once, by cuBLAS (a thin M x R x K product), then the path's kernel adds
s xa B^T in its epilogue (gemv, gemm) or torch adds it (dequant, torch).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton

from kernels.device import INTERPRET
from kernels.weight import row_aligned
from quant import QuantizedTensor

__all__ = ["CONFIGS", "GEMM_MAX_M", "GEMV_MAX_M", "LORA_MAX_FUSED_R", "MIN_PROGRAMS", "MatmulConfig", "Plan", "plan"]

GEMV_MAX_M = 16
GEMM_MAX_M = {"4bit": 64, "int8": 256, "dense": 256}  # above: dequantize once + cuBLAS (the module docstring)
LORA_MAX_FUSED_R = 64  # the epilogue's xa tile (BLOCK_M, R_PAD) lives in registers beside the output tile
MIN_PROGRAMS = 264  # two waves on an H100/H200 (132 SMs)
GEMV_THREAD_BYTES = 64  # gemv: W bytes each thread loads a step (four 128-bit loads)
CHUNK = 32  # gemv: bytes of a 4-bit row that lie in one quantization block (blocksize >= 64); 16 for blocksize 32


@dataclass(frozen=True)
class MatmulConfig:
    """Tile sizes and launch settings of the gemm path."""

    block_m: int
    block_n: int
    block_k: int
    num_warps: int
    num_stages: int

    @property
    def name(self) -> str:
        c = self
        return f"BM{c.block_m}-BN{c.block_n}-BK{c.block_k}-w{c.num_warps}-s{c.num_stages}"


# gemm: "small" for modest M or N, "large" for big M and N, "lora-wide" when the LoRA rank pads past 16.
CONFIGS: dict[str, MatmulConfig] = {
    "small": MatmulConfig(64, 64, 32, 4, 3),
    "small-n32": MatmulConfig(64, 32, 32, 4, 3),  # mid M on a narrow W: more N tiles, >= 2 programs an SM
    "small-n16": MatmulConfig(64, 16, 32, 4, 3),
    "large": MatmulConfig(128, 64, 32, 8, 2),
    "lora-wide": MatmulConfig(64, 32, 32, 8, 2),
}


@dataclass(frozen=True)
class Plan:
    """What `matmul` runs: path, a readable name of its settings, and the settings.

    gemv: block_m (1: FMA, 16: tl.dot), block_n (rows of W a program), step (storage elements a row per step),
    chunk (4-bit bytes per scale), num_warps; gemm: config (a MatmulConfig of tiles)."""

    path: str
    name: str
    config: MatmulConfig | None = None
    block_m: int = 0
    block_n: int = 0
    step: int = 0
    chunk: int = 0
    num_warps: int = 4


def _kind(w: QuantizedTensor | torch.Tensor) -> str:
    if not isinstance(w, QuantizedTensor):
        return "dense"
    return "int8" if w.fmt == "int8" else "4bit"


def _element_bytes(w: QuantizedTensor | torch.Tensor) -> int:
    if isinstance(w, QuantizedTensor):
        return 1  # 4-bit: a step counts bytes; int8: one byte an element
    return w.element_size()


def plan(m: int, n: int, k: int, w: QuantizedTensor | torch.Tensor, rank: int = 0) -> Plan:
    """The path and config `matmul` uses for x (M, K) @ W^T (N, K), with a LoRA epilogue of `rank` (0: none)."""
    quantized = isinstance(w, QuantizedTensor)
    if m > GEMM_MAX_M[_kind(w)] and row_aligned(w):
        return Plan("dequant", "dequant-cublas") if quantized else Plan("torch", "cublas")
    if m <= GEMV_MAX_M and row_aligned(w):
        block_m = 1 if m == 1 else 16
        block_n = 16
        while block_n > 1 and triton.cdiv(n, block_n) < MIN_PROGRAMS:
            block_n //= 2
        if block_m > 1:
            block_n = 16  # tl.dot's smallest N tile
        chunk = min(CHUNK, w.blocksize // 2) if isinstance(w, QuantizedTensor) and w.fmt != "int8" else 0
        # one warp a program: the codebook gather stays inside the warp (shuffles, no trip through shared memory)
        # and each thread keeps GEMV_THREAD_BYTES of W in flight a step, reusing its x values over its rows
        # (the 16-row tl.dot path holds x and the scaled W in registers too: half as many bytes, or it spills)
        per_thread = GEMV_THREAD_BYTES if block_m == 1 else GEMV_THREAD_BYTES // 2
        step = max(chunk, per_thread // _element_bytes(w) * 32 // block_n)
        if INTERPRET:  # CPU tests: the smallest tile that still covers every branch
            step = max(chunk, 16)
        name = f"M{block_m}-BN{block_n}-S{step}-C{chunk}-w1"
        return Plan("gemv", name, None, block_m, block_n, step, chunk, 1)
    big = not INTERPRET and m > 128 and n > 1024
    name = "lora-wide" if rank > 16 else "large" if big else "small"
    for narrower in ("small-n32", "small-n16"):  # too few tiles for two programs an SM: narrower N tiles
        cfg = CONFIGS[name]
        if (
            name.startswith("small")
            and not INTERPRET
            and triton.cdiv(m, cfg.block_m) * triton.cdiv(n, cfg.block_n) < MIN_PROGRAMS
        ):
            name = narrower
    return Plan("gemm", f"{name}-{CONFIGS[name].name}", CONFIGS[name])
