"""Memory accounting: the one place that says how many bytes a model, an adapter or a training run needs.

Exact storage per tensor follows the formats (`tensor_bytes` equals `quant.quantize(...).nbytes`); model
totals sum it over the real layer shapes. Suites and reports call these functions; nothing else recomputes
them. Conventions (QLoRA §2-3 and the LoRA paper §4):

- Linear layers of the transformer blocks take the weight format; embeddings, the LM head and norms stay
  16-bit (as QLoRA keeps them).
- Full fine-tuning: 16-bit weights and gradients, AdamW states per `optimizer_bits` (32-bit: m and v in fp32,
  8 bytes a parameter) — 12 bytes a parameter in all, QLoRA's ">780 GB for 65B".
- LoRA / QLoRA: the base is frozen (no gradients, no states); adapters are 16-bit with 16-bit gradients and
  AdamW states. Activations are not modelled here (they depend on batch, sequence and checkpointing):
  `activations` is what the caller passes in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from quant.optim.states import state_bytes

__all__ = [
    "MODELS",
    "ModelSpec",
    "TrainingMemory",
    "bits_per_param",
    "lora_checkpoint_bytes",
    "lora_params",
    "optimizer_state_bytes",
    "tensor_bytes",
    "training_memory",
    "weight_bytes",
]

Method = Literal["full", "lora", "qlora"]
LLAMA_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
DOUBLE_QUANT_BLOCKSIZE = 256


@dataclass(frozen=True)
class ModelSpec:
    """A decoder-only transformer by its hyper-parameters (published configs)."""

    name: str
    n_layers: int
    d_model: int
    d_ff: int
    n_heads: int
    n_kv_heads: int
    vocab: int
    gated_mlp: bool = True  # LLaMA's SwiGLU (gate, up, down); GPT-3 has fc1/fc2 (named up/down here)
    positions: int = 0  # learned position embeddings (GPT-3: 2048)
    tied_embeddings: bool = False

    def linears(self) -> dict[str, tuple[int, int]]:
        """Per-layer projections: name -> (N out features, K in features)."""
        d, kv = self.d_model, self.d_model // self.n_heads * self.n_kv_heads
        shapes = {"q_proj": (d, d), "k_proj": (kv, d), "v_proj": (kv, d), "o_proj": (d, d)}
        if self.gated_mlp:
            shapes["gate_proj"] = (self.d_ff, d)
        shapes["up_proj"] = (self.d_ff, d)
        shapes["down_proj"] = (d, self.d_ff)
        return shapes

    @property
    def linear_params(self) -> int:
        return self.n_layers * sum(n * k for n, k in self.linears().values())

    @property
    def other_params(self) -> int:
        """Embeddings, LM head, position embeddings and norms (kept 16-bit)."""
        embed = self.vocab * self.d_model * (1 if self.tied_embeddings else 2)
        norms = (2 * self.n_layers + 1) * self.d_model
        return embed + self.positions * self.d_model + norms

    @property
    def n_params(self) -> int:
        return self.linear_params + self.other_params


def _llama(name: str, layers: int, d: int, d_ff: int, heads: int, kv: int | None = None, vocab: int = 32000):
    return ModelSpec(name, layers, d, d_ff, heads, kv or heads, vocab)


MODELS: dict[str, ModelSpec] = {
    m.name: m
    for m in (
        # GPT-3 175B (Brown et al. 2020, table 2.1): 96 layers, d 12288, 96 heads, fc 4d, 2048 positions, tied
        ModelSpec(
            "gpt3-175b", 96, 12288, 4 * 12288, 96, 96, 50257, gated_mlp=False, positions=2048, tied_embeddings=True
        ),
        _llama("llama-7b", 32, 4096, 11008, 32),
        _llama("llama-13b", 40, 5120, 13824, 40),
        _llama("llama-33b", 60, 6656, 17920, 52),
        _llama("llama-65b", 80, 8192, 22016, 64),
        _llama("llama2-7b", 32, 4096, 11008, 32),
        _llama("llama2-13b", 40, 5120, 13824, 40),
        _llama("llama2-70b", 80, 8192, 28672, 64, kv=8),
        _llama("llama3-8b", 32, 4096, 14336, 32, kv=8, vocab=128256),
        _llama("llama3-70b", 80, 8192, 28672, 64, kv=8, vocab=128256),
    )
}


def tensor_bytes(numel: int, fmt: str, blocksize: int = 64, double_quant: bool = False, rows: int = 1) -> int:
    """Exact storage of one tensor in `fmt`, as `quant.quantize(t, fmt, blocksize, double_quant).nbytes`.

    rows: the number of rows (numel // last dim) for row-wise int8, whose scales are one fp32 per row.
    """
    if fmt in ("fp16", "bf16"):
        return 2 * numel
    if fmt == "fp32":
        return 4 * numel
    if fmt == "int8":
        return numel + 4 * rows
    if fmt in ("nf4", "fp4"):
        blocks = math.ceil(numel / blocksize)
        if not double_quant:
            return math.ceil(numel / 2) + 4 * blocks
        return math.ceil(numel / 2) + blocks + 4 * math.ceil(blocks / DOUBLE_QUANT_BLOCKSIZE) + 4
    raise ValueError(f"fmt: {fmt!r}; expected one of nf4, fp4, int8, fp16, bf16, fp32")


def bits_per_param(fmt: str, blocksize: int = 64, double_quant: bool = False) -> float:
    """Asymptotic storage bits a parameter: NF4 at 64 is 4.5; with double quantization 4 + 8/64 + 32/(64*256)."""
    if fmt in ("nf4", "fp4"):
        if double_quant:
            return 4 + 8 / blocksize + 32 / (blocksize * DOUBLE_QUANT_BLOCKSIZE)
        return 4 + 32 / blocksize
    return {"int8": 8.0, "fp16": 16.0, "bf16": 16.0, "fp32": 32.0}[fmt]


def weight_bytes(spec: ModelSpec, fmt: str, blocksize: int = 64, double_quant: bool = False) -> int:
    """Bytes of a model's weights: the block linears in `fmt`, everything else 16-bit."""
    linear = sum(
        tensor_bytes(n * k, fmt, blocksize, double_quant, rows=n) for n, k in spec.linears().values()
    )  # one layer
    return spec.n_layers * linear + 2 * spec.other_params


def _targets(spec: ModelSpec, targets: tuple[str, ...] | str) -> dict[str, tuple[int, int]]:
    shapes = spec.linears()
    names = tuple(shapes) if targets == "all" else tuple(targets)
    unknown = [t for t in names if t not in shapes]
    if unknown:
        raise ValueError(f"targets: {unknown} are not projections of {spec.name}; expected some of {tuple(shapes)}")
    return {t: shapes[t] for t in names}


def lora_params(spec: ModelSpec, rank: int, targets: tuple[str, ...] | str = ("q_proj", "v_proj")) -> int:
    """Trainable LoRA parameters: r (N + K) for each adapted projection of every layer (A: r x K, B: N x r).

    GPT-3 175B with Wq and Wv at r = 4: 96 * 2 * 4 * (12288 + 12288) = 18.9M (LoRA paper, table 4).
    """
    if rank < 1:
        raise ValueError(f"rank: {rank!r}; expected a positive integer")
    return spec.n_layers * sum(rank * (n + k) for n, k in _targets(spec, targets).values())


def lora_checkpoint_bytes(
    spec: ModelSpec, rank: int, targets: tuple[str, ...] | str = ("q_proj", "v_proj"), bytes_per_param: int = 2
) -> int:
    """Bytes of an adapter checkpoint (the LoRA parameters alone, 16-bit by default)."""
    return lora_params(spec, rank, targets) * bytes_per_param


def optimizer_state_bytes(numel: int, state_bits: int = 32, min_8bit_size: int = 4096) -> int:
    """AdamW state bytes for one tensor, as quant.optim's pager holds them (`quant.optim.state_bytes`, the one
    formula): m and v in fp32 (8 bytes/param), or blockwise 8-bit (1 byte each plus one fp32 absmax per block
    of 256 per state) for tensors of at least `min_8bit_size` elements."""
    return state_bytes(numel, state_bits, min_8bit_size)


@dataclass(frozen=True)
class TrainingMemory:
    """Bytes for one training setup; `total` is their sum."""

    weights: int
    gradients: int
    optimizer: int
    adapters: int
    activations: int

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer + self.adapters + self.activations


def training_memory(
    spec: ModelSpec,
    method: Method,
    rank: int = 64,
    targets: tuple[str, ...] | str = "all",
    optimizer_bits: int = 32,
    blocksize: int = 64,
    activations: int = 0,
) -> TrainingMemory:
    """Memory to fine-tune `spec` with `method` ("full", "lora" on a 16-bit base, "qlora" on NF4 with double
    quantization); `adapters` counts adapter weights, their gradients sit in `gradients`."""
    if method == "full":
        params = spec.n_params
        states = spec.n_layers * sum(optimizer_state_bytes(n * k, optimizer_bits) for n, k in spec.linears().values())
        states += optimizer_state_bytes(spec.other_params, optimizer_bits)
        return TrainingMemory(2 * params, 2 * params, states, 0, activations)
    if method not in ("lora", "qlora"):
        raise ValueError(f"method: {method!r}; expected 'full', 'lora' or 'qlora'")
    base = weight_bytes(spec, "bf16") if method == "lora" else weight_bytes(spec, "nf4", blocksize, double_quant=True)
    shapes = _targets(spec, targets)
    adapter_params = lora_params(spec, rank, tuple(shapes))
    states = spec.n_layers * sum(
        optimizer_state_bytes(rank * k, optimizer_bits) + optimizer_state_bytes(n * rank, optimizer_bits)
        for n, k in shapes.values()
    )
    return TrainingMemory(base, 2 * adapter_params, states, 2 * adapter_params, activations)
