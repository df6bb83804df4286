"""PagedAdamW: AdamW with fp32 or blockwise 8-bit states that live in a byte-budgeted pager.

    opt = PagedAdamW(model.parameters(), lr=1e-4, state_bits=8, budget_bytes=64 << 20)
    loss.backward(); opt.step(); opt.zero_grad()
    opt.stats()                         # PagerStats: resident/peak bytes, page-ins/outs, bytes moved

The update math and the state formats are in `quant.optim.states`; the pager in `quant.optim.pager`. The
per-tensor update is injected (`update=`): the default is the plain-torch reference, and
`kernels.adamw.paged_adamw(...)` builds this same class with the fused Triton update (the default there on
CUDA). quant/ never imports kernels/, so the choice of kernels is made on the kernels side.

State dict: torch's layout (`{"state": {index: {...}}, "param_groups": [...]}`, indices in parameter
order), with the state tensors as CPU copies (a paged state may not fit on the device) and "step" an int.
8-bit entries hold `exp_avg`/`exp_avg_sq` uint8 codes and `exp_avg_absmax`/`exp_avg_sq_absmax` fp32.
"""

from __future__ import annotations

import functools
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import torch

from quant.optim.pager import PagerStats, StatePager
from quant.optim.states import (
    AdamWHyper,
    AdamWUpdate,
    Blockwise8States,
    Fp32States,
    StateFormat,
    TorchAdamWUpdate,
    state_bytes,
    state_format,
)

__all__ = ["PagedAdamW"]


def _check_hyper(group: Mapping[str, Any], where: str) -> None:
    """Raise ValueError naming the first bad (or missing) hyper-parameter of a param group (or the defaults)."""
    missing = [k for k in ("lr", "betas", "eps", "weight_decay") if k not in group]
    if missing:
        raise ValueError(f"{where}: missing {missing}; expected lr, betas, eps and weight_decay")
    lr, betas, eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
    if isinstance(lr, bool) or not isinstance(lr, int | float) or not lr >= 0.0:
        raise ValueError(f"{where}lr: {lr!r}; expected a float >= 0")
    if not isinstance(betas, tuple | list) or len(betas) != 2:
        raise ValueError(f"{where}betas: {betas!r}; expected a pair (beta1, beta2)")
    for i, beta in enumerate(betas):
        if isinstance(beta, bool) or not isinstance(beta, int | float) or not 0.0 <= beta < 1.0:
            raise ValueError(f"{where}betas[{i}]: {beta!r}; expected 0 <= beta < 1")
    if isinstance(eps, bool) or not isinstance(eps, int | float) or not eps >= 0.0:
        raise ValueError(f"{where}eps: {eps!r}; expected a float >= 0")
    if isinstance(wd, bool) or not isinstance(wd, int | float) or not wd >= 0.0:
        raise ValueError(f"{where}weight_decay: {wd!r}; expected a float >= 0")


class PagedAdamW(torch.optim.Optimizer):
    """AdamW (decoupled weight decay, bias correction, param groups) with paged fp32 or 8-bit states.

    params: tensors or param groups, floating point (fp32|fp16|bf16), all on one device.
    state_bits: 32 (fp32 m, v) or 8 (blockwise dynamic 8-bit, blocks of 256) for tensors of at least
    min_8bit_size elements; smaller tensors keep 32-bit states. budget_bytes: the most state bytes resident
    on the parameters' device (None: unlimited). update: the per-tensor update (default: the torch reference).

    Raises:
        ValueError: a bad hyper-parameter (named), non-floating or mixed-device parameters, or one
            parameter whose state alone exceeds budget_bytes.
    """

    pager: StatePager
    _formats: dict[int, StateFormat]

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.01,
        state_bits: int = 32,
        budget_bytes: int | None = None,
        min_8bit_size: int = 4096,
        update: AdamWUpdate | None = None,
    ) -> None:
        if state_bits not in (8, 32):
            raise ValueError(f"state_bits: {state_bits!r}; expected 8 or 32")
        if budget_bytes is not None and (isinstance(budget_bytes, bool) or not isinstance(budget_bytes, int)):
            raise ValueError(f"budget_bytes: {budget_bytes!r}; expected None (unlimited) or an int > 0")
        if budget_bytes is not None and budget_bytes <= 0:
            raise ValueError(f"budget_bytes: {budget_bytes!r}; expected None (unlimited) or an int > 0")
        if isinstance(min_8bit_size, bool) or not isinstance(min_8bit_size, int) or min_8bit_size < 0:
            raise ValueError(f"min_8bit_size: {min_8bit_size!r}; expected an int >= 0")
        defaults = {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay}
        _check_hyper(defaults, "")
        self.state_bits = state_bits
        self.min_8bit_size = min_8bit_size
        self.budget_bytes = budget_bytes
        self.update: AdamWUpdate = update if update is not None else TorchAdamWUpdate()
        self._device: torch.device | None = None
        super().__init__(params, defaults)
        assert self._device is not None  # torch rejects an empty parameter list
        self.pager = StatePager(self._device, budget_bytes)
        self._formats = {32: Fp32States(), 8: Blockwise8States(self._device)}

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """torch's add_param_group, then checks of the group's hyper-parameters, dtypes, device and budget."""
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        where = f"param_groups[{len(self.param_groups) - 1}]."
        device = self._device
        try:
            group["betas"] = tuple(group["betas"])
            _check_hyper(group, where)
            for p in group["params"]:
                if not p.is_floating_point():
                    raise ValueError(f"{where}params: a {p.dtype} tensor; expected fp32|fp16|bf16 parameters")
                self._device = self._device or p.device
                if p.device != self._device:
                    raise ValueError(f"{where}params: a tensor on {p.device}; expected all on {self._device}")
                need = state_bytes(p.numel(), self.state_bits, self.min_8bit_size)
                if self.budget_bytes is not None and need > self.budget_bytes:
                    raise ValueError(
                        f"budget_bytes: {self.budget_bytes}; a parameter of shape {tuple(p.shape)} needs {need} "
                        "state bytes, expected a budget of at least the largest parameter's state"
                    )
        except ValueError:
            self.param_groups.pop()
            self._device = device
            raise

    # -- the update ------------------------------------------------------------------------------------

    def _indexed(self) -> Iterator[tuple[int, dict[str, Any], torch.Tensor]]:
        """(index, group, param) in state-dict order; the index is also the pager key."""
        index = 0
        for group in self.param_groups:
            for p in group["params"]:
                yield index, group, p
                index += 1

    def _format(self, p: torch.Tensor) -> StateFormat:
        """The state format of p: 8-bit when state_bits=8 and p has at least min_8bit_size elements."""
        return self._formats[state_format(p.numel(), self.state_bits, self.min_8bit_size)]

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:  # type: ignore[override]  # torch's overloads on closure
        """One AdamW update of every parameter with a gradient; `closure` re-evaluates the loss first.

        Raises:
            ValueError: a sparse gradient.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        work = [(i, group, p) for i, group, p in self._indexed() if p.grad is not None]
        for j, (key, group, p) in enumerate(work):
            grad = p.grad
            assert grad is not None
            if grad.is_sparse:
                raise ValueError(f"params[{key}].grad: sparse; expected a dense gradient")
            state, fmt = self.state[p], self._format(p)
            if "step" not in state:
                state["step"] = 0
                nbytes = state_bytes(p.numel(), self.state_bits, self.min_8bit_size)
                self.pager.create(key, nbytes, functools.partial(fmt.zeros, p))
            tensors = self.pager.acquire(key)
            if j + 1 < len(work):
                self.pager.prefetch(work[j + 1][0])  # overlaps this update on CUDA
            state["step"] += 1
            beta1, beta2 = group["betas"]
            hp = AdamWHyper(group["lr"], beta1, beta2, group["eps"], group["weight_decay"], state["step"])
            fmt.apply(self.update, p, grad.contiguous(), tensors, hp)
        return loss

    def stats(self) -> PagerStats:
        """The pager's counters now (resident and peak bytes, page-ins/outs, bytes moved)."""
        return self.pager.stats()

    # -- state dict ------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """torch's layout; state tensors are CPU copies, "step" an int (see the module docstring)."""
        groups, state = [], {}
        for index, _, p in self._indexed():
            if "step" in self.state[p]:
                state[index] = {"step": int(self.state[p]["step"]), **self.pager.snapshot(index)}
        index = 0
        for group in self.param_groups:
            n = len(group["params"])
            hyper = {k: v for k, v in group.items() if k != "params"}
            groups.append({**hyper, "params": list(range(index, index + n))})
            index += n
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Replace hyper-parameters and states with `state_dict`'s, after checking all of it first.

        Raises:
            ValueError: the state dict does not fit this optimizer (group sizes, parameter indices, state keys,
                shapes or dtypes, hyper-parameters); the live state is then left untouched.
        """
        if not isinstance(state_dict, Mapping) or not {"state", "param_groups"} <= set(state_dict):
            raise ValueError("state_dict: expected a mapping with 'state' and 'param_groups'")
        saved_groups, saved_state = state_dict["param_groups"], state_dict["state"]
        sizes = [len(g["params"]) for g in self.param_groups]
        saved_sizes = [len(g["params"]) for g in saved_groups]
        if sizes != saved_sizes:
            raise ValueError(
                f"state_dict: param groups of sizes {saved_sizes}; this optimizer's groups have sizes {sizes}"
            )
        for i, g in enumerate(saved_groups):
            _check_hyper(g, f"state_dict param_groups[{i}].")
        params = {index: p for index, _, p in self._indexed()}
        loaded: dict[int, tuple[int, dict[str, torch.Tensor]]] = {}
        for raw_index, entry in saved_state.items():
            index = int(raw_index)
            if index not in params:
                raise ValueError(f"state_dict: state for parameter index {index}; this optimizer has {len(params)}")
            p = params[index]
            fmt = self._format(p)
            want = fmt.layout(p)
            tensors = {k: v for k, v in entry.items() if k != "step"}
            got = {k: (tuple(t.shape), t.dtype) if isinstance(t, torch.Tensor) else type(t) for k, t in tensors.items()}
            if got != want or "step" not in entry:
                raise ValueError(
                    f"state_dict: parameter {index} (shape {tuple(p.shape)}, {fmt.bits}-bit states) has state "
                    f"{got} with step={entry.get('step')!r}; expected {want} and a step (another model or setting?)"
                )
            loaded[index] = (int(entry["step"]), tensors)
        # everything checked: apply
        for group, saved in zip(self.param_groups, saved_groups, strict=True):
            group.update({k: (tuple(v) if k == "betas" else v) for k, v in saved.items() if k != "params"})
        for index in params:
            self.pager.remove(index)
        self.state = defaultdict(dict)
        for index, (step, tensors) in loaded.items():
            self.state[params[index]]["step"] = step
            self.pager.add(index, tensors)
