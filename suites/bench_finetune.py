"""A QLoRA fine-tuning step on a Hugging Face Llama: qkbench's stack against transformers + peft + bitsandbytes.

The model is `transformers.LlamaForCausalLM` built from a config with random weights (no download): on a CPU a small
one (`FINETUNE_GRIDS["quick"]`), on a GPU Llama-2-7B and Llama-3-8B layer sizes with 2 decoder layers (the `full`
profile). The data are synthetic token batches ("synthetic": uniform random ids from a fixed seed, labels = inputs,
cycled); every provider starts from the same weights (one seed), the same data and, for the LoRA providers, the same
adapter start (A Kaiming-uniform from one generator, B = 0). Providers (impl, method):
- qkbench (qlora): q, k, v, o, gate, up, down replaced by `LoRALinear(quant="nf4")` (NF4, blocksize 64, double
  quantization), `kernels.paged_adamw(state_bits=8)` (unbounded page budget: every state resident);
- peft-bnb (qlora), the reference stack: the same projections as bitsandbytes `Linear4bit` (NF4 + double quant,
  blocksize 64), peft `LoraConfig` on them, bitsandbytes `PagedAdamW8bit` (on a CPU bitsandbytes does not page and
  falls back to its unpaged 8-bit AdamW, as it warns; `optimizer_note` says so);
- peft (lora): peft LoRA on the dense base in the compute dtype, `torch.optim.AdamW`;
- torch (full): every parameter trained, `torch.optim.AdamW`.
Ranks 8 and 64 (the QLoRA paper's), alpha 16, adapters in the compute dtype (peft's fp32 upcast turned off, so the
stacks store the same bytes). The compute dtype is bf16 on a GPU, and on a CPU bf16 where it has bf16 instructions
(avx512_bf16 / amx_bf16 / bf16) and fp32 elsewhere (bf16 matmuls run ~100x slower without them); each case
records it. No gradient checkpointing anywhere.

One round is one training step: forward, loss, backward, optimizer step, zero_grad. Each case records the step time
(the Meter's), tokens/s, the loss of every step it ran in order (step i trains on batch i mod BATCHES), and the
memory in parts: frozen weights (quantized bases with their scales), adapters, gradients (measured after the first
backward), optimizer states, activations (the distinct tensors autograd saves for the backward in the first step,
parameters and weights excluded), and beside them `quant.memory.training_memory`'s prediction (which assumes 16-bit
weights, adapters and gradients, and does not model activations). Under the Triton interpreter (no GPU) the
qkbench cases are skipped as in the other suites (one step of the small model takes about a minute there);
tests/suites/test_finetune.py runs the qkbench stack on a tiny model against peft-bnb instead.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kernels.device import DEVICE, INTERPRET
from quant.memory import ModelSpec, training_memory
from suites.bench_matmul import INTERPRETED
from suites.measure import Case, Meter, tracked_bytes
from suites.shapes import GRIDS, Grid, sweep

TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
ALPHA = 16
RANKS = (8, 64)
HYPER: dict[str, Any] = {"lr": 2e-4, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0}
BATCHES = 4  # distinct synthetic batches, cycled
SEED = 0
METHODS = {"qkbench": "qlora", "peft-bnb": "qlora", "peft": "lora", "torch": "full"}
DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16"}


@dataclass(frozen=True)
class FinetuneModel:
    """A Llama by its config and the batch it trains on: `batch` sequences of `seq` tokens a step."""

    name: str
    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    vocab: int
    seq: int
    batch: int

    @property
    def tokens(self) -> int:
        return self.batch * self.seq

    def spec(self) -> ModelSpec:
        """The same model for `quant.memory`."""
        return ModelSpec(self.name, self.layers, self.hidden, self.intermediate, self.heads, self.kv_heads, self.vocab)

    def config(self) -> Any:
        from transformers import LlamaConfig

        return LlamaConfig(
            vocab_size=self.vocab, hidden_size=self.hidden, intermediate_size=self.intermediate,
            num_hidden_layers=self.layers, num_attention_heads=self.heads, num_key_value_heads=self.kv_heads,
            max_position_embeddings=max(self.seq, 128), use_cache=False, tie_word_embeddings=False,
        )  # fmt: skip


# quick: a CPU's (a few seconds a step in plain torch); full: a GPU's, real layer sizes, 2 decoder layers
FINETUNE_GRIDS: dict[str, tuple[FinetuneModel, ...]] = {
    "quick": (FinetuneModel("llama-2x256", 2, 256, 688, 4, 4, 1000, 128, 2),),
    "full": (
        FinetuneModel("llama2-7b-2l", 2, 4096, 11008, 32, 32, 32000, 512, 2),
        FinetuneModel("llama3-8b-2l", 2, 4096, 14336, 32, 8, 128256, 512, 2),
    ),
}


def _profile(grid: Grid) -> str:
    return next(name for name, g in GRIDS.items() if g is grid)


def finetune_cases(grid: Grid) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for model in FINETUNE_GRIDS[_profile(grid)]:
        for impl in ("qkbench", "peft-bnb", "peft"):
            rows += [{"impl": impl, "shape": model.name, "rank": r} for r in RANKS]
        rows.append({"impl": "torch", "shape": model.name, "rank": None})
    return rows


def _cpu_has_bf16() -> bool:
    cpuinfo = Path("/proc/cpuinfo")
    flags = set(cpuinfo.read_text().split()) if cpuinfo.exists() else set()
    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})


def compute_dtype() -> torch.dtype:
    """bf16 on a GPU or a CPU with bf16 instructions, fp32 on other CPUs (see the module docstring)."""
    return torch.bfloat16 if DEVICE.type == "cuda" or _cpu_has_bf16() else torch.float32


# -- model, data, providers ---------------------------------------------------------------------------------------


def build_model(model: FinetuneModel, dtype: torch.dtype, seed: int = SEED) -> nn.Module:
    """LlamaForCausalLM with transformers' random init from `seed`, on DEVICE in `dtype`."""
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    with torch.device(DEVICE):
        llama: nn.Module = LlamaForCausalLM(model.config())
    return llama.to(dtype)


def synthetic_batches(model: FinetuneModel, n: int = BATCHES, seed: int = SEED) -> list[torch.Tensor]:
    """n batches (batch, seq) of token ids, uniform over the vocabulary, from `seed` (the "synthetic" data set)."""
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(model.vocab, (model.batch, model.seq), generator=gen).to(DEVICE) for _ in range(n)]


def _targets(llama: nn.Module) -> list[tuple[str, nn.Linear]]:
    return [(n, m) for n, m in llama.named_modules() if n.rpartition(".")[2] in TARGETS and isinstance(m, nn.Linear)]


def _set(llama: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(llama.get_submodule(parent), child, module)


def adapter_pairs(model: nn.Module) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """(A, B) of the active "default" adapter of every LoRA layer (LoRALinear or peft's), by the module's path in
    the Llama (a PeftModel's prefix removed), so that two stacks can be given the same adapters."""
    from kernels.lora import LoRALinear

    pairs = {}
    for name, m in model.named_modules():
        path = name.removeprefix("base_model.model.")
        if isinstance(m, LoRALinear):
            pairs[path] = (m.lora_A["default"], m.lora_B["default"])
        elif hasattr(m, "lora_A") and isinstance(getattr(m, "lora_A", None), nn.ModuleDict) and "default" in m.lora_A:
            pairs[path] = (m.lora_A["default"].weight, m.lora_B["default"].weight)
    return pairs


@torch.no_grad()
def init_adapters(model: nn.Module, seed: int = SEED) -> None:
    """Every adapter's start from one generator, in path order: A Kaiming-uniform (a = sqrt(5), peft's and
    LoRALinear's default), B = 0."""
    gen = torch.Generator().manual_seed(seed)
    for _, (a, b) in sorted(adapter_pairs(model).items()):
        bound = 1.0 / math.sqrt(a.shape[1])  # kaiming_uniform_(a=sqrt(5)): gain sqrt(2 / 6), bound gain sqrt(3 / K)
        a.copy_((torch.rand(a.shape, generator=gen) * 2 - 1) * bound)
        b.zero_()


def _linear4bit(linear: nn.Linear, dtype: torch.dtype) -> nn.Module:
    """bitsandbytes Linear4bit, NF4 + double quantization at blocksize 64, quantized by bitsandbytes itself."""
    import bitsandbytes as bnb

    layer = bnb.nn.Linear4bit(
        linear.in_features, linear.out_features, bias=linear.bias is not None, compute_dtype=dtype,
        compress_statistics=True, quant_type="nf4", quant_storage=torch.uint8, device="meta",
    )  # fmt: skip
    layer.weight = bnb.nn.Params4bit(
        linear.weight.data, requires_grad=False, compress_statistics=True, quant_type="nf4", blocksize=64
    )
    if linear.bias is not None:
        layer.bias = nn.Parameter(linear.bias.data, requires_grad=False)
    return layer.to(DEVICE)  # quantizes


@dataclass
class Stack:
    """A model ready to train: its module, the trainable parameters and their optimizer, and notes to record."""

    method: str
    model: nn.Module
    trainable: list[nn.Parameter]
    optimizer: Any
    optimizer_name: str
    optimizer_note: str | None = None


def build_stack(impl: str, model: FinetuneModel, rank: int | None, dtype: torch.dtype) -> Stack:
    """The provider `impl` of the module docstring on a fresh Llama (same seed for every provider), adapters
    initialized by `init_adapters`.

    Raises:
        ValueError: an unknown impl, or a rank missing for a LoRA provider.
    """
    if impl not in METHODS:
        raise ValueError(f"impl: {impl!r}; expected one of {sorted(METHODS)}")
    if impl != "torch" and not rank:
        raise ValueError(f"rank: {rank!r}; expected a rank >= 1 for {impl}")
    llama = build_model(model, dtype)
    if impl == "torch":
        params = list(llama.parameters())
        return Stack("full", llama, params, _torch_adamw(params), "torch.optim.AdamW")
    assert rank is not None
    llama.requires_grad_(False)
    if impl == "qkbench":
        from kernels.adamw import paged_adamw
        from kernels.lora import LoRALinear

        for name, linear in _targets(llama):
            _set(llama, name, LoRALinear.from_linear(linear, rank, ALPHA, quant="nf4"))
        init_adapters(llama)
        params = [p for p in llama.parameters() if p.requires_grad]
        return Stack(
            "qlora", llama, params, paged_adamw(params, state_bits=8, **HYPER), "kernels.paged_adamw(state_bits=8)"
        )
    import peft

    if impl == "peft-bnb":
        for name, linear in _targets(llama):
            _set(llama, name, _linear4bit(linear, dtype))
    config = peft.LoraConfig(r=rank, lora_alpha=ALPHA, target_modules=list(TARGETS), lora_dropout=0.0, bias="none")
    wrapped = peft.get_peft_model(llama, config, autocast_adapter_dtype=False)
    params = [p for p in wrapped.parameters() if p.requires_grad]
    for p in params:  # peft makes adapters over a 4-bit base in fp32: the compute dtype, as the other stacks
        p.data = p.data.to(dtype)
    init_adapters(wrapped)
    if impl == "peft":
        return Stack("lora", wrapped, params, _torch_adamw(params), "torch.optim.AdamW")
    import bitsandbytes as bnb

    note = None if DEVICE.type == "cuda" else "bitsandbytes pages on CUDA only: on the CPU its unpaged 8-bit AdamW"
    return Stack(
        "qlora", wrapped, params, bnb.optim.PagedAdamW8bit(params, **HYPER), "bitsandbytes PagedAdamW8bit", note
    )


def _torch_adamw(params: list[nn.Parameter]) -> torch.optim.Optimizer:
    cuda = DEVICE.type == "cuda"
    return torch.optim.AdamW(params, **HYPER, fused=cuda or None, foreach=None if cuda else True)


# -- one step, its memory -----------------------------------------------------------------------------------------


@dataclass
class Trainer:
    """`step()`: one training step on the next synthetic batch; keeps each step's loss and measures the first one's
    gradients and saved activations. A dataclass, so that the Meter's peak-memory walk (`suites.measure`) reaches
    the model, the optimizer's states and the batches through the bound `step`."""

    stack: Stack
    batches: list[torch.Tensor]
    losses: list[torch.Tensor] = field(default_factory=list)
    gradients_bytes: int | None = None
    activations_bytes: int | None = None

    def step(self) -> torch.Tensor:
        batch = self.batches[len(self.losses) % len(self.batches)]
        opt = self.stack.optimizer
        if self.activations_bytes is None:
            saved: dict[int, int] = {}
            exclude = {t.untyped_storage().data_ptr() for t in _held_tensors(self.stack.model)}

            def pack(t: torch.Tensor) -> torch.Tensor:
                storage = t.untyped_storage()
                if storage.data_ptr() not in exclude:
                    saved[storage.data_ptr()] = storage.nbytes()
                return t

            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                loss = self.stack.model(input_ids=batch, labels=batch).loss
            self.activations_bytes = sum(saved.values())
        else:
            loss = self.stack.model(input_ids=batch, labels=batch).loss
        loss.backward()
        if self.gradients_bytes is None:
            self.gradients_bytes = tracked_bytes([p.grad for p in self.stack.trainable if p.grad is not None])
        opt.step()
        opt.zero_grad(set_to_none=True)
        self.losses.append(loss.detach())
        return loss.detach()


def _held_tensors(model: nn.Module) -> list[Any]:
    """The model's own tensors: parameters, buffers, LoRALinear's quantized bases, bitsandbytes' quant states."""
    out: list[Any] = [*model.parameters(), *model.buffers()]
    for m in model.modules():
        qt = getattr(m, "quantized", None)
        if qt is not None:  # a LoRALinear's QuantizedTensor
            s2 = qt.state2
            out += [qt.data, qt.absmax, qt.code, qt.outlier_cols, qt.outliers]
            out += [s2.data, s2.absmax, s2.code] if s2 is not None else []
        state = getattr(getattr(m, "weight", None), "quant_state", None)
        if state is not None:  # bitsandbytes QuantState: absmax, code, offset and its nested state
            inner = getattr(state, "state2", None)
            out += [state.absmax, state.code, getattr(state, "offset", None)]
            out += [inner.absmax, inner.code] if inner is not None else []
    return [t for t in out if t is not None]


def memory_parts(stack: Stack) -> dict[str, int]:
    """Bytes held by the stack after a step: frozen weights (with quantized bases' scales), adapters (the trainable
    parameters of a LoRA method; full fine-tuning counts its parameters as weights) and optimizer states."""
    trainable = {id(p) for p in stack.trainable}
    lora = stack.method != "full"
    frozen = [t for t in _held_tensors(stack.model) if id(t) not in trainable or not lora]
    opt = stack.optimizer
    states: Any = opt.pager if hasattr(opt, "pager") else list(opt.state.values())
    return {
        "weights_bytes": tracked_bytes(frozen),
        "adapters_bytes": tracked_bytes(stack.trainable) if lora else 0,
        "optimizer_bytes": tracked_bytes(states),
    }


def train_flops(model: FinetuneModel, method: str, rank: int | None) -> float:
    """Matmul FLOPs of one step (attention scores and elementwise work not counted), T = tokens a step:
    full fine-tuning 6 P T (forward 2 P T, input and weight gradients 4 P T) over the linears and the LM head;
    LoRA/QLoRA 4 P T over the frozen base (forward and input gradient; no weight gradient) plus 6 r (N + K) T per
    adapted projection."""
    spec = model.spec()
    p_base = spec.linear_params + spec.vocab * spec.d_model
    t = model.tokens
    if method == "full":
        return 6.0 * p_base * t
    assert rank is not None
    adapters = spec.n_layers * sum(rank * (n + k) for n, k in spec.linears().values())
    return 4.0 * p_base * t + 6.0 * adapters * t


# -- the case -----------------------------------------------------------------------------------------------------


@sweep(finetune_cases)
def test_finetune_step(benchmark: Any, meter: Meter, grid: Grid, impl: str, shape: str, rank: int | None) -> None:
    model = next(m for m in FINETUNE_GRIDS[_profile(grid)] if m.name == shape)
    dtype = compute_dtype()
    method = METHODS[impl]
    precision = "nf4-dq" if method == "qlora" else DTYPE_NAMES[dtype]
    case = Case("finetune", "train_step", impl, precision, shape, shape, M=model.tokens, rank=rank)
    case.flops, case.baseline = train_flops(model, method, rank), impl == "peft-bnb"
    case.extra.update(
        method=method, compute_dtype=DTYPE_NAMES[dtype], data="synthetic", seed=SEED, seq=model.seq,
        batch=model.batch, layers=model.layers, hidden=model.hidden, vocab=model.vocab, alpha=ALPHA,
        lr=HYPER["lr"],
    )  # fmt: skip
    held: dict[str, Any] = {}

    def build() -> Callable[[], torch.Tensor]:
        stack = build_stack(impl, model, rank, dtype)
        case.extra.update(optimizer=stack.optimizer_name, optimizer_note=stack.optimizer_note)
        trainer = Trainer(stack, synthetic_batches(model))
        held.update(stack=stack, trainer=trainer)
        return trainer.step

    def after() -> dict[str, Any]:
        trainer: Trainer = held["trainer"]
        stats = getattr(getattr(benchmark, "stats", None), "stats", None)
        median = getattr(stats, "median", None)
        predicted = training_memory(
            model.spec(),
            method,  # type: ignore[arg-type]  # one of METHODS' values
            rank=rank or 64,
            targets="all",
            optimizer_bits=8 if method == "qlora" else 32,
        )
        return {
            "tokens_per_s": model.tokens / median if median else None,
            "losses": [float(x) for x in trainer.losses],
            "steps": len(trainer.losses),
            **memory_parts(held["stack"]),
            "gradients_bytes": trainer.gradients_bytes,
            "activations_bytes": trainer.activations_bytes,
            "predicted_weights_bytes": predicted.weights,
            "predicted_adapters_bytes": predicted.adapters,
            "predicted_gradients_bytes": predicted.gradients,
            # quant.memory's 32-bit states are fp32; torch.optim.AdamW keeps m and v in the parameters' dtype
            "predicted_optimizer_bytes": predicted.optimizer
            if method == "qlora"
            else predicted.optimizer * dtype.itemsize // 4,
        }

    skip = INTERPRETED if impl == "qkbench" and INTERPRET else None
    meter.run(benchmark, case, build, skip=skip, after=after)
