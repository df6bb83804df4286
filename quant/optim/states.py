"""AdamW state formats (fp32 and blockwise 8-bit), their reference update, and their exact bytes.

One update of one tensor (AdamW, Loshchilov & Hutter 2019; the order bitsandbytes' blockwise 8-bit update
uses, `optimizer_update_8bit_blockwise`), all in fp32 whatever the parameter dtype:

    m  = m * beta1 + g * (1 - beta1)
    v  = v * beta2 + g * g * (1 - beta2)
    p  = p * (1 - lr * weight_decay)                          decoupled weight decay
    p  = p - (lr / (1 - beta1**t)) * (m / (sqrt(v) / sqrt(1 - beta2**t) + eps))

32-bit states keep m and v in fp32 (8 bytes a parameter). 8-bit states (Dettmers et al. 2021, "8-bit
Optimizers via Block-wise Quantization") keep each moment as `quant.blockwise.quantize_8bit` codes in
blocks of 256 with one fp32 absmax per block: m against the signed dynamic map, v (never negative) against
the unsigned one; an update dequantizes, updates in fp32 and requantizes with the new block absmax
(2 + 8/256 bytes a parameter). Tensors smaller than `min_8bit_size` keep 32-bit states, as bitsandbytes does.

A `StateFormat` subclass per width (`Fp32States`, `Blockwise8States`) makes, describes and updates a
tensor's state. The update is injectable (`AdamWUpdate`): `TorchAdamWUpdate` here is the reference,
kernels/adamw.py holds the fused Triton one; both read and write the same state tensors, so a state dict
does not know which ran.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar, Protocol

import torch

from quant.blockwise import block_chunks, dequantize_8bit, quantize_8bit
from quant.codebooks import SIGNED_DYNAMIC, UNSIGNED_DYNAMIC, on_device

__all__ = [
    "OPTIM_BLOCKSIZE",
    "AdamWHyper",
    "AdamWUpdate",
    "Blockwise8State",
    "Blockwise8States",
    "Fp32States",
    "StateFormat",
    "TorchAdamWUpdate",
    "adamw_8bit_ref",
    "adamw_fp32_ref",
    "dynamic_maps",
    "state_bytes",
    "state_bytes_per_param",
    "state_format",
]

OPTIM_BLOCKSIZE = 256  # bitsandbytes' blockwise optimizers use 256 (`Optimizer2State.init_state`)
STATE_KEYS_32 = ("exp_avg", "exp_avg_sq")


@dataclass(frozen=True)
class AdamWHyper:
    """Hyper-parameters of one update of one tensor; `t` is the tensor's step count after this update (>= 1)."""

    lr: float
    beta1: float
    beta2: float
    eps: float
    weight_decay: float
    t: int

    @property
    def one_minus_beta1(self) -> float:
        return 1.0 - self.beta1  # in fp64, rounded once to fp32 where it is used (torch and Triton alike)

    @property
    def one_minus_beta2(self) -> float:
        return 1.0 - self.beta2

    @property
    def step_size(self) -> float:
        """lr / (1 - beta1**t): the bias-corrected step on m."""
        return self.lr / (1.0 - self.beta1**self.t)

    @property
    def sqrt_correction2(self) -> float:
        """sqrt(1 - beta2**t): divides sqrt(v)."""
        return math.sqrt(1.0 - self.beta2**self.t)

    @property
    def decay(self) -> float:
        """1 - lr * weight_decay: the decoupled weight-decay factor."""
        return 1.0 - self.lr * self.weight_decay


@dataclass(frozen=True)
class Blockwise8State:
    """One moment in blockwise 8-bit: value ≈ code[codes] * absmax[block]; the tensors are updated in place.

    codes: parameter's shape, uint8; absmax: (ceil(n / blocksize),) fp32; code: (256,) fp32, sorted.
    """

    codes: torch.Tensor
    absmax: torch.Tensor
    code: torch.Tensor
    blocksize: int = OPTIM_BLOCKSIZE


class AdamWUpdate(Protocol):
    """How one tensor is updated in place: the torch reference (below) or the fused Triton kernels."""

    def fp32(
        self, p: torch.Tensor, grad: torch.Tensor, exp_avg: torch.Tensor, exp_avg_sq: torch.Tensor, hp: AdamWHyper
    ) -> None: ...

    def blockwise8(
        self, p: torch.Tensor, grad: torch.Tensor, m: Blockwise8State, v: Blockwise8State, hp: AdamWHyper
    ) -> None: ...


def _adam_fp32_math(
    p32: torch.Tensor, g: torch.Tensor, m: torch.Tensor, v: torch.Tensor, hp: AdamWHyper
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The update on fp32 tensors of one shape, out of place: (p, m, v) new. Each step rounds once to fp32."""
    m = m * hp.beta1 + g * hp.one_minus_beta1
    v = v * hp.beta2 + g * g * hp.one_minus_beta2
    # sqrt correctly rounded (torch's CPU fp32 sqrt is off by an ulp for ~0.6% of inputs; a double sqrt rounded once
    # to fp32 is exact), divided by a tensor (CUDA turns `tensor / python float` into a multiply by the reciprocal):
    # the same bits as IEEE's sqrt and divide, which the fused kernels compute, on every device
    correction = torch.tensor(hp.sqrt_correction2, dtype=torch.float32, device=v.device)
    denom = torch.sqrt(v.double()).float() / correction + hp.eps
    p32 = p32 * hp.decay
    return p32 - hp.step_size * (m / denom), m, v


_CHUNK = 1 << 16  # elements of an update at a time on the CPU: its fp32 temporaries stay in L2


def _chunks(p: torch.Tensor, blocksize: int = 1) -> Iterator[tuple[slice, slice]]:
    """`block_chunks` of p: on the CPU chunks of _CHUNK elements (in cache); elsewhere the whole tensor at once
    (a GPU gains nothing from more launches)."""
    n = p.numel()
    return block_chunks(n, blocksize, _CHUNK if p.is_cpu else -(-n // blocksize) * blocksize)


@torch.no_grad()
def adamw_fp32_ref(
    p: torch.Tensor, grad: torch.Tensor, exp_avg: torch.Tensor, exp_avg_sq: torch.Tensor, hp: AdamWHyper
) -> None:
    """AdamW with fp32 states, in place. p, grad: any shape, fp32|fp16|bf16; exp_avg, exp_avg_sq: p's shape, fp32."""
    work = p if p.is_contiguous() else p.contiguous()
    flat_p, flat_g, m, v = work.view(-1), grad.reshape(-1), exp_avg.view(-1), exp_avg_sq.view(-1)
    for part, _ in _chunks(p):
        new_p, m[part], v[part] = _adam_fp32_math(flat_p[part].float(), flat_g[part].float(), m[part], v[part], hp)
        flat_p[part] = new_p
    if work is not p:
        p.copy_(work)


@torch.no_grad()
def adamw_8bit_ref(p: torch.Tensor, grad: torch.Tensor, m: Blockwise8State, v: Blockwise8State, hp: AdamWHyper) -> None:
    """AdamW with blockwise 8-bit states, in place: dequantize, update in fp32, requantize (new absmax).

    p, grad: any shape, fp32|fp16|bf16; m, v: `Blockwise8State`s of p's shape.
    """
    blocksize = m.blocksize
    work = p if p.is_contiguous() else p.contiguous()
    flat_p, flat_g = work.view(-1), grad.reshape(-1)
    for part, blocks in _chunks(p, blocksize):
        m32 = dequantize_8bit(m.codes.view(-1)[part], m.absmax[blocks], m.code, blocksize)  # fp32
        v32 = dequantize_8bit(v.codes.view(-1)[part], v.absmax[blocks], v.code, blocksize)
        new_p, m32, v32 = _adam_fp32_math(flat_p[part].float(), flat_g[part].float(), m32, v32, hp)
        flat_p[part] = new_p
        for state, value in ((m, m32), (v, v32)):
            codes, absmax = quantize_8bit(value, state.code, blocksize)
            state.codes.view(-1)[part] = codes
            state.absmax[blocks] = absmax
    if work is not p:
        p.copy_(work)


class TorchAdamWUpdate:
    """The reference `AdamWUpdate`: plain torch, any device."""

    def fp32(
        self, p: torch.Tensor, grad: torch.Tensor, exp_avg: torch.Tensor, exp_avg_sq: torch.Tensor, hp: AdamWHyper
    ) -> None:
        adamw_fp32_ref(p, grad, exp_avg, exp_avg_sq, hp)

    def blockwise8(
        self, p: torch.Tensor, grad: torch.Tensor, m: Blockwise8State, v: Blockwise8State, hp: AdamWHyper
    ) -> None:
        adamw_8bit_ref(p, grad, m, v, hp)


def state_format(numel: int, state_bits: int, min_8bit_size: int) -> int:
    """The state width (8 or 32) a tensor of `numel` elements gets: small tensors keep 32-bit states."""
    return 8 if state_bits == 8 and numel >= min_8bit_size else 32


def state_bytes(numel: int, state_bits: int = 32, min_8bit_size: int = 4096, blocksize: int = OPTIM_BLOCKSIZE) -> int:
    """Exact AdamW state bytes of one tensor, as the pager holds them (the step count is not a tensor).

    32-bit: m and v in fp32, 8 * numel. 8-bit (numel >= min_8bit_size): per moment numel uint8 codes plus one
    fp32 absmax per block, 2 * (numel + 4 * ceil(numel / blocksize)).

    Raises:
        ValueError: state_bits not 8 or 32, or a negative numel.
    """
    if state_bits not in (8, 32):
        raise ValueError(f"state_bits: {state_bits!r}; expected 8 or 32")
    if numel < 0:
        raise ValueError(f"numel: {numel!r}; expected >= 0")
    if state_format(numel, state_bits, min_8bit_size) == 32:
        return 8 * numel
    return 2 * (numel + 4 * math.ceil(numel / blocksize))


def state_bytes_per_param(state_bits: int, blocksize: int = OPTIM_BLOCKSIZE) -> float:
    """Asymptotic AdamW state bytes a parameter: 8.0 for 32-bit, 2 + 8 / blocksize (2.03125) for 8-bit.

    Raises:
        ValueError: state_bits not 8 or 32.
    """
    if state_bits == 32:
        return 8.0
    if state_bits == 8:
        return 2.0 + 8.0 / blocksize
    raise ValueError(f"state_bits: {state_bits!r}; expected 8 or 32")


def dynamic_maps(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(signed map for m, unsigned map for v), each (256,) fp32 sorted, on `device`."""
    return on_device(SIGNED_DYNAMIC, device), on_device(UNSIGNED_DYNAMIC, device)


class StateFormat:
    """How one tensor's AdamW state is stored and updated; a small subclass per state width.

    `zeros(p)` makes the fresh state (named tensors on p's device, `state_bytes` in all); `apply` runs one
    update of p in place through an `AdamWUpdate`; `layout(p)` is what a loaded state must look like, and
    `non_negative` names its tensors that hold no negative value (a second moment, a block absmax).
    """

    bits: ClassVar[int]
    non_negative: ClassVar[tuple[str, ...]]

    def zeros(self, p: torch.Tensor) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def apply(
        self, update: AdamWUpdate, p: torch.Tensor, grad: torch.Tensor, state: dict[str, torch.Tensor], hp: AdamWHyper
    ) -> None:
        raise NotImplementedError

    def layout(self, p: torch.Tensor) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        """State key -> (shape, dtype) of `zeros(p)`, computed on the meta device (no allocation)."""
        return {k: (tuple(t.shape), t.dtype) for k, t in self.zeros(p.detach().to("meta")).items()}


class Fp32States(StateFormat):
    """exp_avg, exp_avg_sq: p's shape, fp32 (8 bytes a parameter)."""

    bits = 32
    non_negative = ("exp_avg_sq",)

    def zeros(self, p: torch.Tensor) -> dict[str, torch.Tensor]:
        return {k: torch.zeros(p.shape, dtype=torch.float32, device=p.device) for k in STATE_KEYS_32}

    def apply(
        self, update: AdamWUpdate, p: torch.Tensor, grad: torch.Tensor, state: dict[str, torch.Tensor], hp: AdamWHyper
    ) -> None:
        update.fp32(p, grad, state["exp_avg"], state["exp_avg_sq"], hp)


class Blockwise8States(StateFormat):
    """exp_avg, exp_avg_sq: p's shape, uint8 codes (signed / unsigned dynamic map); exp_avg_absmax,
    exp_avg_sq_absmax: (ceil(n / blocksize),) fp32. A zero absmax decodes every code to 0 (the fresh state)."""

    bits = 8
    non_negative = ("exp_avg_absmax", "exp_avg_sq_absmax")

    def __init__(self, device: torch.device, blocksize: int = OPTIM_BLOCKSIZE) -> None:
        self.signed, self.unsigned = dynamic_maps(device)
        self.blocksize = blocksize

    def zeros(self, p: torch.Tensor) -> dict[str, torch.Tensor]:
        blocks = math.ceil(p.numel() / self.blocksize)
        codes = {k: torch.zeros(p.shape, dtype=torch.uint8, device=p.device) for k in ("exp_avg", "exp_avg_sq")}
        absmax = {f"{k}_absmax": torch.zeros(blocks, dtype=torch.float32, device=p.device) for k in codes}
        return {**codes, **absmax}

    def apply(
        self, update: AdamWUpdate, p: torch.Tensor, grad: torch.Tensor, state: dict[str, torch.Tensor], hp: AdamWHyper
    ) -> None:
        m = Blockwise8State(state["exp_avg"], state["exp_avg_absmax"], self.signed, self.blocksize)
        v = Blockwise8State(state["exp_avg_sq"], state["exp_avg_sq_absmax"], self.unsigned, self.blocksize)
        update.blockwise8(p, grad, m, v, hp)
