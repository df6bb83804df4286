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
8-bit entries hold `exp_avg`/`exp_avg_sq` uint8 codes and `exp_avg_absmax`/`exp_avg_sq_absmax` fp32. A
group holds lr, betas, eps, weight_decay and maximize; torch.optim.AdamW's state dict loads (its fp32 0-d
step becomes an int) when its other flags are at their "not used" values (`quant.optim.checks.FLAGS`).

A step or a load checks everything first (`quant.optim.checks`): a refused one raises a ValueError naming the
group, parameter or state key and changes nothing.
"""

from __future__ import annotations

import functools
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import torch

from quant.optim.checks import PARAM_DTYPES, check_flags, check_grad, check_group, check_state, param_name
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


class PagedAdamW(torch.optim.Optimizer):
    """AdamW (decoupled weight decay, bias correction, param groups, maximize) with paged fp32 or 8-bit states.

    params: tensors or param groups, fp32|fp16|bf16, all on one device, each once. state_bits: 32 (fp32 m, v)
    or 8 (blockwise dynamic 8-bit, blocks of 256) for tensors of at least min_8bit_size elements; smaller
    tensors keep 32-bit states. budget_bytes: the most state bytes resident on the parameters' device (None:
    unlimited). update: the per-tensor update (default: the torch reference). maximize: ascend (AdamW on -grad,
    as torch). amsgrad, capturable, differentiable, foreach, fused: torch.optim.AdamW's flags, accepted only at
    their "not used" values (`quant.optim.checks.FLAGS`), so that passing one is an error, not ignored.

    Raises:
        ValueError: a bad argument or hyper-parameter (named), a flag this optimizer does not implement, a
            parameter that is not fp32|fp16|bf16, on another device or listed twice, or one parameter whose
            state alone exceeds budget_bytes.
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
        *,
        maximize: bool = False,
        amsgrad: bool = False,
        capturable: bool = False,
        differentiable: bool = False,
        foreach: bool | None = None,
        fused: bool | None = None,
    ) -> None:
        if isinstance(state_bits, bool) or not isinstance(state_bits, int) or state_bits not in (8, 32):
            raise ValueError(f"state_bits: {state_bits!r}; expected 8 or 32")
        if budget_bytes is not None and (isinstance(budget_bytes, bool) or not isinstance(budget_bytes, int)):
            raise ValueError(f"budget_bytes: {budget_bytes!r}; expected None (unlimited) or an int > 0")
        if budget_bytes is not None and budget_bytes <= 0:
            raise ValueError(f"budget_bytes: {budget_bytes!r}; expected None (unlimited) or an int > 0")
        if isinstance(min_8bit_size, bool) or not isinstance(min_8bit_size, int) or min_8bit_size < 0:
            raise ValueError(f"min_8bit_size: {min_8bit_size!r}; expected an int >= 0")
        if update is not None and not all(callable(getattr(update, m, None)) for m in ("fp32", "blockwise8")):
            raise ValueError(f"update: {update!r}; expected an AdamWUpdate (fp32 and blockwise8 methods) or None")
        flags = {"amsgrad": amsgrad, "capturable": capturable, "differentiable": differentiable}
        check_flags({**flags, "foreach": foreach, "fused": fused}, "")
        defaults = {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay, "maximize": maximize}
        check_group(defaults, "")
        defaults["betas"] = tuple(betas)
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
        """torch's add_param_group, then checks of the group's hyper-parameters and flags, and of each parameter's
        dtype, device, uniqueness and state bytes against the budget; a refused group is not added."""
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        g = len(self.param_groups) - 1
        where = f"param_groups[{g}]."
        device = self._device
        try:
            check_group(group, where)
            group["betas"] = tuple(group["betas"])
            first: dict[int, int] = {}
            for i, p in enumerate(group["params"]):
                named = param_name(g, i, p)
                if p.dtype not in PARAM_DTYPES:
                    raise ValueError(f"{named}: dtype {p.dtype}; expected fp32|fp16|bf16")
                if id(p) in first:
                    raise ValueError(f"{named}: the same tensor as params[{first[id(p)]}]; expected each once")
                first[id(p)] = i
                self._device = self._device or p.device
                if p.device != self._device:
                    raise ValueError(f"{named}: on {p.device}; expected all parameters on {self._device}")
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

    def _checked_work(self) -> list[tuple[int, dict[str, Any], torch.Tensor]]:
        """(index, group, param) of each parameter with a gradient, after checking all of them (and the groups'
        hyper-parameters) against what the update needs; reads the state and the pager, changes neither.

        Raises:
            ValueError: naming the group, the parameter (index and shape) and what is wrong.
        """
        work, index = [], 0
        for g, group in enumerate(self.param_groups):
            check_group(group, f"param_groups[{g}].")
            for i, p in enumerate(group["params"]):
                key, index = index, index + 1
                if p.grad is None:
                    continue
                check_grad(p, self.pager.device, g, i)
                state = self.state.get(p)
                if state is not None and "step" in state:
                    made = self.pager.layout(key)["exp_avg"][0]  # p's shape in both formats
                    if made != tuple(p.shape):
                        raise ValueError(
                            f"{param_name(g, i, p)}: its state was made for shape {made}; expected that shape "
                            "(load or reset the optimizer's state after reshaping a parameter)"
                        )
                else:
                    need = state_bytes(p.numel(), self.state_bits, self.min_8bit_size)
                    if self.budget_bytes is not None and need > self.budget_bytes:
                        raise ValueError(
                            f"{param_name(g, i, p)}: its state needs {need} state bytes, over budget_bytes: "
                            f"{self.budget_bytes}; expected a parameter whose state fits the budget"
                        )
                work.append((key, group, p))
        return work

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:  # type: ignore[override]  # torch's overloads on closure
        """One AdamW update of every parameter with a gradient; `closure` re-evaluates the loss first.

        Every parameter is checked before the first one is updated: a refused step changes no parameter, state,
        step count or page.

        Raises:
            ValueError: a bad hyper-parameter of a group, or a parameter or gradient the update cannot take
                (sparse, not fp32|fp16|bf16, on another device, another shape than the parameter or its state,
                a new state over the budget); the message names the group, the parameter and its shape.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        work = self._checked_work()
        for j, (key, group, p) in enumerate(work):
            state, fmt = self.state[p], self._format(p)
            if "step" not in state:
                nbytes = state_bytes(p.numel(), self.state_bits, self.min_8bit_size)
                self.pager.create(key, nbytes, functools.partial(fmt.zeros, p))
                state["step"] = 0
            tensors = self.pager.acquire(key)
            if j + 1 < len(work):
                self.pager.prefetch(work[j + 1][0])  # overlaps this update on CUDA
            grad = p.grad
            assert grad is not None
            if group.get("maximize", False):
                grad = -grad  # torch's maximize: AdamW on the negated gradient
            t = state["step"] + 1
            beta1, beta2 = group["betas"]
            hp = AdamWHyper(group["lr"], beta1, beta2, group["eps"], group["weight_decay"], t)
            fmt.apply(self.update, p, grad.contiguous(), tensors, hp)
            state["step"] = t
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

        As torch, the saved groups' "params" lists give the ids that the state is keyed by, in this optimizer's
        parameter order. A step is a non-negative int or an integer-valued 0-d tensor (torch's); a saved group
        without "maximize" (an older PagedAdamW state dict) loads as maximize=False.

        Raises:
            ValueError: the state dict does not fit this optimizer (its structure, group sizes, parameter ids,
                hyper-parameters or flags, a state entry's step, keys, types, shapes, dtypes or values); the
                message names the field, and the optimizer keeps its previous state.
        """
        saved_groups, saved_state = self._checked_layout(state_dict)
        params = {index: p for index, _, p in self._indexed()}
        ids = [i for g in saved_groups for i in g["params"]]
        id_map = dict(zip(ids, params, strict=True))
        loaded: dict[int, tuple[int, dict[str, torch.Tensor]]] = {}
        for key, entry in saved_state.items():
            if isinstance(key, bool) or key not in id_map:
                shown = ids if len(ids) <= 8 else f"{ids[:4]} ... {ids[-2:]}"
                raise ValueError(f"state_dict state: key {key!r}; expected one of the saved groups' ids {shown}")
            index = id_map[key]
            p = params[index]
            fmt = self._format(p)
            where = f"state_dict state[{key!r}] (parameter {index} of shape {tuple(p.shape)}, {fmt.bits}-bit states)"
            loaded[index] = check_state(entry, fmt.layout(p), fmt.non_negative, where)
        # everything checked: apply
        for group, saved in zip(self.param_groups, saved_groups, strict=True):
            hyper = {k: v for k, v in saved.items() if k != "params"}
            group.update({**hyper, "betas": tuple(hyper["betas"]), "maximize": hyper.get("maximize", False)})
        for index in params:
            self.pager.remove(index)
        self.state = defaultdict(dict)
        for index, (step, tensors) in loaded.items():
            self.state[params[index]]["step"] = step
            self.pager.add(index, {k: t.contiguous() for k, t in tensors.items()})  # the updates view(-1) them

    def _checked_layout(self, state_dict: Any) -> tuple[list[Mapping[str, Any]], Mapping[Any, Any]]:
        """(param groups, state) of a state dict whose structure, group sizes, parameter ids and
        hyper-parameters fit this optimizer (the state entries are checked by the caller).

        Raises:
            ValueError: naming the first field that does not fit.
        """
        if not isinstance(state_dict, Mapping) or not {"state", "param_groups"} <= set(state_dict):
            raise ValueError("state_dict: expected a mapping with 'state' and 'param_groups'")
        saved_groups, saved_state = state_dict["param_groups"], state_dict["state"]
        if not isinstance(saved_groups, list | tuple):
            raise ValueError(f"state_dict['param_groups']: a {type(saved_groups).__name__}; expected a list of groups")
        if not isinstance(saved_state, Mapping):
            kind = type(saved_state).__name__
            raise ValueError(f"state_dict['state']: a {kind}; expected a mapping of parameter id to state")
        seen: set[int] = set()
        for i, g in enumerate(saved_groups):
            where = f"state_dict param_groups[{i}]"
            if not isinstance(g, Mapping):
                raise ValueError(f"{where}: a {type(g).__name__}; expected a mapping of hyper-parameters and params")
            if "params" not in g:
                raise ValueError(f"{where}.params: missing; expected the group's parameter ids")
            ids = g["params"]
            if (
                not isinstance(ids, list | tuple)
                or not all(isinstance(x, int) and not isinstance(x, bool) for x in ids)
                or len(set(ids)) != len(ids)
                or not seen.isdisjoint(ids)
            ):
                raise ValueError(f"{where}.params: {ids!r}; expected int parameter ids, each in one group once")
            seen.update(ids)
        sizes = [len(g["params"]) for g in self.param_groups]
        saved_sizes = [len(g["params"]) for g in saved_groups]
        if sizes != saved_sizes:
            raise ValueError(
                f"state_dict: param groups of sizes {saved_sizes}; this optimizer's groups have sizes {sizes}"
            )
        for i, g in enumerate(saved_groups):
            check_group(g, f"state_dict param_groups[{i}].")
        return list(saved_groups), saved_state
