"""`LoRALinear`: a frozen (optionally quantized) linear layer with named low-rank adapters."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from kernels import ops
from kernels.lora.function import lora_linear
from kernels.lora.naive import LoRAAdapter, dense_base
from kernels.matmul import matmul
from quant import QuantizedTensor, quantize
from quant.blockwise import DoubleQuantState

__all__ = ["AdapterConfig", "LoRALinear", "quantized_from_state", "quantized_state"]

Init = Literal["kaiming", "gaussian"]
QUANTS = (None, "nf4", "int8")


@dataclass(frozen=True)
class AdapterConfig:
    """Hyperparameters of one named adapter; scale = alpha / rank, or alpha / sqrt(rank) with rsLoRA."""

    rank: int
    alpha: float
    dropout: float = 0.0
    rslora: bool = False

    @property
    def scale(self) -> float:
        return self.alpha / (math.sqrt(self.rank) if self.rslora else self.rank)


class LoRALinear(nn.Module):
    """y = x W^T + bias + s (dropout(x) A^T) B^T with W frozen, as peft's LoRA `Linear` defines it.

    The base weight W (N, K) is a buffer (dense) or a quant.QuantizedTensor attribute (QLoRA), never a
    Parameter; the bias (N,) is a frozen buffer. Each named adapter holds `lora_A[name]` (r, K) and
    `lora_B[name]` (N, r), Parameters in the layer dtype; only the active adapter's require grad. The
    forward runs the fused kernels (kernels.matmul forward, kernels.lora.bwd backward); on a merged
    layer it is the base matmul alone.
    """

    def __init__(self, weight: QuantizedTensor | torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype) -> None:
        super().__init__()
        self.out_features, self.in_features = int(weight.shape[0]), int(weight.shape[1])
        self.dtype = dtype
        self.quantized: QuantizedTensor | None = weight if isinstance(weight, QuantizedTensor) else None
        self.register_buffer("weight", weight.detach() if isinstance(weight, torch.Tensor) else None)
        self.register_buffer("bias", None if bias is None else bias.detach().to(dtype))
        self.lora_A = nn.ParameterDict()
        self.lora_B = nn.ParameterDict()
        self.configs: dict[str, AdapterConfig] = {}
        self.active_adapter: str | None = None
        self.merged_weight: torch.Tensor | None = None  # W + s B A while merged (dense)

    @classmethod
    def from_linear(
        cls,
        linear: nn.Linear,
        rank: int,
        alpha: float,
        quant: Literal["nf4", "int8"] | None = None,
        dropout: float = 0.0,
        rslora: bool = False,
        init: Init = "kaiming",
        *,
        name: str = "default",
    ) -> LoRALinear:
        """Wrap `linear` (weight (N, K) fp32|fp16|bf16) with one adapter `name`, its base optionally
        quantized: "nf4" (blocksize 64, double quantization, as QLoRA) or "int8" (row-wise).

        Raises:
            ValueError: `linear` is not an nn.Linear, or a bad `quant`, `rank`, `alpha`, `dropout` or `init`.
        """
        if not isinstance(linear, nn.Linear):
            raise ValueError(f"linear: {type(linear).__name__}; expected a torch.nn.Linear")
        if quant not in QUANTS:
            raise ValueError(f"quant: {quant!r}; expected None, 'nf4' or 'int8'")
        weight = linear.weight.detach()
        base: QuantizedTensor | torch.Tensor = weight.clone()
        if quant == "nf4":
            base = quantize(weight, "nf4", blocksize=64, double_quant=True)
        elif quant == "int8":
            base = quantize(weight, "int8")
        bias = None if linear.bias is None else linear.bias.detach().clone()
        layer = cls(base, bias, weight.dtype).to(weight.device)
        layer.add_adapter(name, rank, alpha, dropout=dropout, rslora=rslora, init=init)
        return layer

    # -- adapters -------------------------------------------------------------------------------------

    @property
    def adapters(self) -> list[str]:
        """Names of the adapters, in the order they were added."""
        return list(self.configs)

    def add_adapter(
        self,
        name: str,
        rank: int,
        alpha: float,
        *,
        dropout: float = 0.0,
        rslora: bool = False,
        init: Init = "kaiming",
        activate: bool = True,
    ) -> None:
        """Add adapter `name`: A (rank, K) Kaiming-uniform (a = sqrt(5), peft's default) or Gaussian
        (std 1 / rank), B (N, rank) zeros, so the layer output is unchanged; make it active by default.

        Raises:
            ValueError: `name` exists or is not an identifier, `rank` < 1, `alpha` not finite or <= 0, `dropout` outside
                [0, 1), an unknown `init`, or `activate` while another adapter is merged.
        """
        if not isinstance(name, str) or not name.isidentifier():
            raise ValueError(f"name: {name!r}; expected a Python identifier")
        if name in self.configs:
            raise ValueError(f"name: adapter {name!r} exists; expected a new name (have {self.adapters})")
        if not isinstance(rank, int) or rank < 1:
            raise ValueError(f"rank: {rank!r}; expected an int >= 1")
        if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not (math.isfinite(alpha) and alpha > 0):
            raise ValueError(f"alpha: {alpha!r}; expected a finite number > 0")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout: {dropout!r}; expected 0 <= dropout < 1")
        if init not in ("kaiming", "gaussian"):
            raise ValueError(f"init: {init!r}; expected 'kaiming' or 'gaussian'")
        if activate and self.merged_weight is not None:
            raise ValueError(f"activate: True while {self.active_adapter!r} is merged; unmerge first or pass False")
        device = self.bias.device if self.bias is not None else self._base().device
        a = torch.empty(rank, self.in_features, device=device, dtype=self.dtype)
        if init == "kaiming":
            nn.init.kaiming_uniform_(a, a=math.sqrt(5))
        else:
            nn.init.normal_(a, std=1.0 / rank)
        self.lora_A[name] = nn.Parameter(a)
        self.lora_B[name] = nn.Parameter(torch.zeros(self.out_features, rank, device=device, dtype=self.dtype))
        self.configs[name] = AdapterConfig(rank, float(alpha), float(dropout), rslora)
        if activate or self.active_adapter is None:
            self.set_adapter(name)
        else:
            self.lora_A[name].requires_grad_(False)
            self.lora_B[name].requires_grad_(False)

    def set_adapter(self, name: str) -> None:
        """Make `name` the active adapter: the forward uses it, and only its A and B require grad.

        Raises:
            ValueError: unknown `name`, or the layer is merged (unmerge first).
        """
        if name not in self.configs:
            raise ValueError(f"name: {name!r} is not an adapter; expected one of {self.adapters}")
        if self.merged_weight is not None and name != self.active_adapter:
            raise ValueError(f"name: cannot switch to {name!r} while {self.active_adapter!r} is merged; unmerge first")
        for other in self.configs:
            self.lora_A[other].requires_grad_(other == name)
            self.lora_B[other].requires_grad_(other == name)
        self.active_adapter = name

    def adapter(self, name: str | None = None) -> LoRAAdapter:
        """The (A, B, scale, dropout) of adapter `name` (default: the active one).

        Raises:
            ValueError: unknown `name`, or no adapter at all.
        """
        name = self.active_adapter if name is None else name
        if name is None or name not in self.configs:
            raise ValueError(f"name: {name!r} is not an adapter; expected one of {self.adapters}")
        cfg = self.configs[name]
        return LoRAAdapter(self.lora_A[name], self.lora_B[name], cfg.scale, cfg.dropout)

    # -- base weight, merge ---------------------------------------------------------------------------

    def _base(self) -> QuantizedTensor | torch.Tensor:
        return self.quantized if self.quantized is not None else self.weight

    @property
    def merged(self) -> bool:
        return self.merged_weight is not None

    def base_weight(self) -> torch.Tensor:
        """The effective base weight (N, K) as a dense tensor in the layer dtype: W (dequantized when
        quantized), or W + s B A while merged."""
        if self.merged_weight is not None:
            return self.merged_weight
        return dense_base(self._base(), self.dtype)

    @torch.no_grad()
    def merge(self) -> None:
        """Fold the active adapter into the base: W' = W + s B A (computed in fp32, stored in the layer dtype).

        A quantized base is dequantized and the merged weight is kept dense (the original QuantizedTensor is
        kept too, for unmerge): re-quantizing W' would be lossy, since W' no longer sits on the quantization
        grid of W and rounding it again adds a second quantization error on top of the first. The dense
        merged weight costs N K elements of the layer dtype. Merging twice is a no-op.

        Raises:
            ValueError: no active adapter.
        """
        if self.merged_weight is not None:
            return
        ad = self.adapter()
        w = dense_base(self._base(), torch.float32)
        self.merged_weight = (w + ad.scale * (ad.b.float() @ ad.a.float())).to(self.dtype)

    @torch.no_grad()
    def unmerge(self) -> None:
        """Undo merge(): the base is the original W again, exactly (the dense W or the QuantizedTensor was
        kept, not recovered by subtraction, which would round). A no-op when not merged."""
        self.merged_weight = None

    # -- forward --------------------------------------------------------------------------------------

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (..., K) in the layer dtype -> (..., N).

        Raises:
            ValueError: x's last dimension or dtype does not match the layer.
        """
        if x.shape[-1] != self.in_features or x.dtype != self.dtype:
            raise ValueError(f"x: {x.dtype} {tuple(x.shape)}; expected {self.dtype} (..., {self.in_features})")
        if torch.compiler.is_compiling():  # the same kernels as custom ops (kernels/ops.py): no graph break
            if self.merged_weight is not None:
                return ops.matmul(x, self.merged_weight, self.bias)
            return ops.lora_linear(x, self._base(), self.adapter(), bias=self.bias, training=self.training)
        if self.merged_weight is not None:  # one fused matmul, differentiable in x (as peft's merged layer)
            return _MergedLinear.apply(x, self.merged_weight, self.bias)
        return lora_linear(x, self._base(), self.adapter(), bias=self.bias, training=self.training)

    def _apply(self, fn, recurse=True):  # type: ignore[no-untyped-def]
        # .to() / .cuda() / .bfloat16(): the QuantizedTensor and the merged weight are neither Parameters nor
        # buffers, so move them here, and let the layer dtype follow a dtype change
        probe = fn(torch.empty(0, dtype=self.dtype, device=self._base().device))
        out = super()._apply(fn, recurse)
        self.dtype = probe.dtype
        if self.quantized is not None and probe.device != self.quantized.device:
            self.quantized = self.quantized.to(probe.device)
        if self.merged_weight is not None:
            self.merged_weight = fn(self.merged_weight)
        return out

    # -- state dict: the quantized base travels with the adapters --------------------------------------

    def _save_to_state_dict(self, destination, prefix, keep_vars):  # type: ignore[no-untyped-def]
        super()._save_to_state_dict(destination, prefix, keep_vars)
        if self.quantized is not None:
            for key, t in quantized_state(self.quantized).items():
                destination[f"{prefix}quantized.{key}"] = t

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing, unexpected, errors):  # type: ignore[no-untyped-def]
        # The base is what the state dict holds: `quantized.*` keys (any format) or a dense `weight`, whichever
        # this layer had; shapes must match (in_features, out_features). Nothing changes on an error.
        qprefix = prefix + "quantized."
        parts = {k[len(qprefix) :]: v for k, v in state_dict.items() if k.startswith(qprefix)}
        rest = {k: v for k, v in state_dict.items() if not k.startswith(qprefix)}
        if self.merged_weight is not None:
            errors.append(f"{prefix or 'layer'}: cannot load into a merged LoRALinear; unmerge() first")
            return
        device, shape = self._base().device, (self.out_features, self.in_features)
        dense = rest.get(prefix + "weight")
        if parts:
            try:
                qt = quantized_from_state(parts, device)
            except (KeyError, ValueError, TypeError) as e:
                errors.append(f"{qprefix}*: {e}")
                return
            if tuple(qt.shape) != shape:
                errors.append(f"{qprefix}shape: {tuple(qt.shape)}; expected {shape}")
                return
            self.quantized, self.weight = qt, None
        elif dense is not None and self.quantized is not None:
            if tuple(dense.shape) != shape:
                errors.append(f"{prefix}weight: shape {tuple(dense.shape)}; expected {shape}")
                return
            self.quantized, self.weight = None, torch.empty(shape, dtype=dense.dtype, device=device)
        elif self.quantized is not None:
            missing.append(qprefix + "data")
        super()._load_from_state_dict(rest, prefix, local_metadata, strict, missing, unexpected, errors)

    def extra_repr(self) -> str:
        base = repr(self.quantized) if self.quantized is not None else f"dense {self.dtype}"
        adapters = ", ".join(f"{k}: r={c.rank}" for k, c in self.configs.items())
        shape = f"in={self.in_features}, out={self.out_features}"
        return f"{shape}, base={base}, adapters=[{adapters}], active={self.active_adapter!r}"


def _text(s: str) -> torch.Tensor:
    return torch.tensor(list(s.encode()), dtype=torch.uint8)


def _untext(t: torch.Tensor) -> str:
    return bytes(t.to(torch.uint8).tolist()).decode()


def quantized_state(qt: QuantizedTensor) -> dict[str, torch.Tensor]:
    """A QuantizedTensor as tensors only (safetensors stores nothing else): its codes, scales, codebooks, double-
    quant state and outliers, and its metadata as small tensors: fmt and dtype (uint8 ASCII), shape (int64),
    blocksize (int64), state2.offset (fp64, the Python float exactly) and state2.blocksize (int64). Codebooks are
    copied (shared by every tensor of a format, and safetensors refuses shared storage)."""
    out: dict[str, torch.Tensor] = {
        "fmt": _text(qt.fmt),
        "dtype": _text(str(qt.dtype).removeprefix("torch.")),
        "shape": torch.tensor(list(qt.shape), dtype=torch.int64),
        "blocksize": torch.tensor(qt.blocksize, dtype=torch.int64),
        "data": qt.data,
    }
    for key in ("absmax", "outlier_cols", "outliers"):
        if getattr(qt, key) is not None:
            out[key] = getattr(qt, key)
    if qt.code is not None:
        out["code"] = qt.code.clone()
    if qt.state2 is not None:
        s2 = qt.state2
        out.update({"state2.data": s2.data, "state2.absmax": s2.absmax, "state2.code": s2.code.clone()})
        out["state2.offset"] = torch.tensor(s2.offset, dtype=torch.float64)
        out["state2.blocksize"] = torch.tensor(s2.blocksize, dtype=torch.int64)
    return out


def quantized_from_state(parts: dict[str, torch.Tensor], device: torch.device | str) -> QuantizedTensor:
    """The QuantizedTensor `quantized_state` wrote, on `device`, checked as any QuantizedTensor is.

    Raises:
        KeyError: a required part (fmt, dtype, shape, blocksize, data) is missing.
        ValueError: an unknown dtype name, or a part that does not fit the format (quant.FieldError).
    """
    for key in ("fmt", "dtype", "shape", "blocksize", "data"):
        if key not in parts:
            raise KeyError(f"{key!r} missing; expected fmt, dtype, shape, blocksize and data at least")
    dtype = getattr(torch, _untext(parts["dtype"]), None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"dtype: {_untext(parts['dtype'])!r}; expected a torch dtype name such as 'bfloat16'")

    def get(key: str) -> torch.Tensor | None:
        t = parts.get(key)
        return None if t is None else t.to(device).contiguous()

    state2 = None
    if "state2.data" in parts:
        data2, absmax2, code2 = get("state2.data"), get("state2.absmax"), get("state2.code")
        offset, blocksize2 = parts.get("state2.offset"), parts.get("state2.blocksize")
        if absmax2 is None or code2 is None or offset is None or blocksize2 is None:
            raise KeyError("state2: expected data, absmax, code, offset and blocksize together")
        state2 = DoubleQuantState(data2, absmax2, float(offset.item()), code2, int(blocksize2.item()))  # type: ignore[arg-type]
    data = get("data")
    shape = torch.Size(int(d) for d in parts["shape"].tolist())
    return QuantizedTensor(
        _untext(parts["fmt"]), shape, dtype, data, get("absmax"), int(parts["blocksize"].item()), get("code"),  # type: ignore[arg-type]
        state2, get("outlier_cols"), get("outliers"),
    )  # fmt: skip


class _MergedLinear(torch.autograd.Function):
    """y = x W'^T + bias with the merged W' = W + s B A frozen: dx = dy W' (W' and the bias get no gradient)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(w)
        return matmul(x, w, bias=bias)  # type: ignore[return-value]

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor) -> tuple[torch.Tensor | None, None, None]:  # type: ignore[override]
        (w,) = ctx.saved_tensors
        return (dy @ w if ctx.needs_input_grad[0] else None), None, None
