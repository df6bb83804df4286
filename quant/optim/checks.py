"""PagedAdamW's checks: hyper-parameters, parameters and their gradients, saved steps and states.

Each check raises a ValueError naming the field, its value and what was expected, and changes nothing: the
optimizer runs every check of a step (or of a state dict) before it touches a parameter, a state or a page.

Hyper-parameters PagedAdamW implements: lr, betas, eps, weight_decay and maximize. torch.optim.AdamW's other
flags name behaviours it does not implement, so a group (or a loaded torch state dict) may carry them only at
the value that means "not used" (`FLAGS`): amsgrad, capturable, differentiable False; foreach, fused None or
False; decoupled_weight_decay True (AdamW's own decay). Any other key of a group (e.g. an LR scheduler's
initial_lr) is the caller's and is kept as it is.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from typing import Any

import torch

__all__ = [
    "FLAGS",
    "HYPER",
    "PARAM_DTYPES",
    "check_flags",
    "check_grad",
    "check_group",
    "check_state",
    "check_step",
    "param_name",
]

HYPER = ("lr", "betas", "eps", "weight_decay")  # every group has them; maximize defaults to False
PARAM_DTYPES = (torch.float32, torch.float16, torch.bfloat16)  # parameters and gradients

# flag -> (the values PagedAdamW accepts: torch's "not used", why it refuses any other)
FLAGS: dict[str, tuple[tuple[object, ...], str]] = {
    "amsgrad": ((False,), "PagedAdamW does not implement AMSGrad (no max_exp_avg_sq state)"),
    "capturable": ((False,), "PagedAdamW's step is not CUDA-graph capturable (a host-side step count)"),
    "differentiable": ((False,), "PagedAdamW's step runs under no_grad"),
    "foreach": ((None, False), "PagedAdamW updates one tensor at a time (no multi-tensor implementation)"),
    "fused": (
        (None, False),
        "PagedAdamW takes its update from `update=`; the fused Triton one is kernels.adamw.paged_adamw(fused=True)",
    ),
    "decoupled_weight_decay": ((True,), "PagedAdamW's weight decay is AdamW's, decoupled (no L2 penalty)"),
}


def _finite(value: Any) -> bool:
    """A real Python number (not a bool, not a tensor) that is finite."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return False
    return isinstance(value, numbers.Integral) or math.isfinite(value)


def check_flags(flags: Mapping[str, Any], where: str) -> None:
    """Raise ValueError for the first flag of `FLAGS` in `flags` at a value PagedAdamW does not implement."""
    for name, (accepted, why) in FLAGS.items():
        if name in flags and not any(flags[name] is value for value in accepted):
            expected = " or ".join(repr(v) for v in accepted)
            raise ValueError(f"{where}{name}: {flags[name]!r}; {why}, expected {expected}")


def check_group(group: Mapping[str, Any], where: str) -> None:
    """Raise ValueError naming the first bad or missing hyper-parameter or flag of a param group (or defaults).

    lr, eps, weight_decay: finite and >= 0; betas: a pair, each finite in [0, 1); maximize (if present): a bool;
    the `FLAGS` (if present): their "not used" values. `where` prefixes each name, e.g. "param_groups[1].".
    """
    missing = [k for k in HYPER if k not in group]
    if missing:
        raise ValueError(f"{where.rstrip('.') or 'defaults'}: missing {missing}; expected lr, betas, eps, weight_decay")
    for name in ("lr", "eps", "weight_decay"):
        value = group[name]
        if not _finite(value) or value < 0:
            raise ValueError(f"{where}{name}: {value!r}; expected a finite float >= 0")
    betas = group["betas"]
    if not isinstance(betas, tuple | list) or len(betas) != 2:
        raise ValueError(f"{where}betas: {betas!r}; expected a pair (beta1, beta2)")
    for i, beta in enumerate(betas):
        if not _finite(beta) or not 0.0 <= beta < 1.0:
            raise ValueError(f"{where}betas[{i}]: {beta!r}; expected 0 <= beta < 1")
    maximize = group.get("maximize", False)
    if not isinstance(maximize, bool):
        raise ValueError(f"{where}maximize: {maximize!r}; expected True or False")
    check_flags(group, where)


def param_name(g: int, i: int, p: torch.Tensor) -> str:
    """How errors name a parameter: "param_groups[1].params[0] (shape (16, 96))"."""
    return f"param_groups[{g}].params[{i}] (shape {tuple(p.shape)})"


def check_grad(p: torch.Tensor, device: torch.device, g: int, i: int) -> None:
    """Raise ValueError, naming param_groups[g].params[i] and its shape, if the update would refuse p or its
    gradient: p fp32|fp16|bf16 on the optimizer's `device`; p.grad dense, fp32|fp16|bf16 (torch's grad_dtype
    may let it differ from p's), on p's device, of p's shape."""
    grad = p.grad
    assert grad is not None
    if p.dtype not in PARAM_DTYPES:
        raise ValueError(f"{param_name(g, i, p)}: dtype {p.dtype}; expected fp32|fp16|bf16")
    if p.device != device:
        raise ValueError(f"{param_name(g, i, p)}: on {p.device}; expected on {device}, where its state is kept")
    if grad.layout != torch.strided:
        raise ValueError(f"{param_name(g, i, p)} grad: layout {grad.layout}; expected a dense (strided) gradient")
    if grad.dtype not in PARAM_DTYPES:
        raise ValueError(f"{param_name(g, i, p)} grad: dtype {grad.dtype}; expected fp32|fp16|bf16")
    if grad.device != p.device:
        raise ValueError(f"{param_name(g, i, p)} grad: on {grad.device}; expected on the parameter's device {p.device}")
    if grad.shape != p.shape:
        shape = tuple(grad.shape)
        raise ValueError(f"{param_name(g, i, p)} grad: shape {shape}; expected the parameter's {tuple(p.shape)}")


def check_step(value: Any, where: str) -> int:
    """A saved step count as an int: a non-negative int, or an integer-valued 0-d tensor (torch.optim.AdamW
    saves an fp32 0-d tensor).

    Raises:
        ValueError: anything else (a bool, a float, a string, NaN, a negative or fractional value, a tensor
            with more than one element or no data).
    """
    if isinstance(value, torch.Tensor):
        usable = value.dim() == 0 and not value.is_meta and value.dtype != torch.bool and not value.is_complex()
        number = value.item() if usable else None
        if number is not None and math.isfinite(number) and number >= 0 and number == int(number):
            return int(number)
    elif isinstance(value, numbers.Integral) and not isinstance(value, bool) and int(value) >= 0:
        return int(value)
    raise ValueError(f"{where} step: {value!r}; expected a non-negative integer (an int or an integer 0-d tensor)")


def check_state(
    entry: Any,
    layout: Mapping[str, tuple[tuple[int, ...], torch.dtype]],
    non_negative: tuple[str, ...],
    where: str,
) -> tuple[int, dict[str, torch.Tensor]]:
    """(step, tensors) of one saved state entry, checked against the state format's `layout` (key -> (shape,
    dtype)); floating tensors must be finite, and those named in `non_negative` >= 0.

    Raises:
        ValueError: not a mapping, no or a bad step, other keys, a non-tensor, a sparse or meta tensor, another
            shape or dtype, or a non-finite or negative value; the message names the key.
    """
    names = sorted(layout)
    if not isinstance(entry, Mapping):
        raise ValueError(f"{where}: a {type(entry).__name__}; expected a mapping of 'step' and {names}")
    if "step" not in entry:
        raise ValueError(f"{where}: no 'step' (keys {sorted(map(str, entry))}); expected 'step' and {names}")
    step = check_step(entry["step"], where)
    tensors = {k: v for k, v in entry.items() if k != "step"}
    if set(tensors) != set(layout):
        got = sorted(map(str, tensors))
        raise ValueError(f"{where}: state keys {got}; expected {names} (another model or setting?)")
    for key, (shape, dtype) in layout.items():
        t = tensors[key]
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{where} {key}: a {type(t).__name__}; expected a {dtype} tensor of shape {shape}")
        if t.layout != torch.strided:
            raise ValueError(f"{where} {key}: layout {t.layout}; expected a dense (strided) tensor")
        if t.is_meta:
            raise ValueError(f"{where} {key}: a tensor on meta (no values); expected a tensor with values")
        if tuple(t.shape) != shape or t.dtype != dtype:
            raise ValueError(
                f"{where} {key}: shape {tuple(t.shape)} {t.dtype}; expected shape {shape} {dtype} "
                "(another model or setting?)"
            )
        if t.is_floating_point():
            bad = int((~torch.isfinite(t)).sum())
            if bad:
                raise ValueError(f"{where} {key}: not finite ({bad} NaN/Inf values); expected finite values")
            if key in non_negative and t.numel() and t.min() < 0:
                raise ValueError(f"{where} {key}: min {t.min().item():g}; expected values >= 0")
    return step, tensors
