"""quant.optim: PagedAdamW refuses bad steps, state dicts and arguments before changing anything, and implements
`maximize` (against torch.optim.AdamW for 32-bit states, bitsandbytes' AdamW8bit for 8-bit ones) (CPU)."""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from typing import Any

import bitsandbytes as bnb  # a declared dependency: these comparisons run in CI, never skipped
import pytest
import torch

from quant.optim import PagedAdamW

LR = 1e-3
SHAPES = ((96, 64), (96,), (16, 96), (16,), (8,))  # 6144 elements: 8-bit states at state_bits=8; the rest 32-bit
BUDGET = {8: 14_000, 32: 50_000}  # bytes: at least the largest state, below the total (25,728 | 62,400): steps page


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: a second intra-op thread only contends for a shared CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _params(seed: int = 0) -> list[torch.nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(s, generator=g) * 0.1) for s in SHAPES]


def _groups(params: list[torch.nn.Parameter]) -> list[dict[str, Any]]:
    """Two groups: the 3rd parameter is param_groups[1].params[0], the 5th param_groups[1].params[2]."""
    return [{"params": params[:2]}, {"params": params[2:], "lr": 2 * LR, "weight_decay": 0.0}]


def _grads(params: list[torch.nn.Parameter], seed: int, skip: tuple[int, ...] = ()) -> None:
    g = torch.Generator().manual_seed(seed)
    for i, p in enumerate(params):
        p.grad = None if i in skip else torch.randn(p.shape, generator=g)


def _trained(bits: int, steps: int = 2, paged: bool = True) -> tuple[PagedAdamW, list[torch.nn.Parameter]]:
    """An optimizer after `steps` (paged) steps; the 5th parameter never had a gradient (it has no state)."""
    params = _params()
    opt = PagedAdamW(_groups(params), lr=LR, state_bits=bits, budget_bytes=BUDGET[bits] if paged else None)
    for t in range(steps):
        _grads(params, seed=10 + t, skip=(4,))
        opt.step()
    return opt, params


def _snapshot(opt: PagedAdamW, params: list[torch.nn.Parameter]) -> dict[str, Any]:
    """Everything a step may change: parameters, states (tensors, steps), groups, pager residency and counters."""
    return {
        "params": [(p.detach().clone(), p.dtype, p.device, tuple(p.shape)) for p in params],
        "state": opt.state_dict(),
        "keys": len(opt.state),
        "pager": opt.stats(),
        "resident": [opt.pager.is_resident(k) for k in range(len(params)) if k in opt.pager],
        "lru": list(opt.pager._entries),
    }


def _assert_same(a: dict[str, Any], b: dict[str, Any]) -> None:
    for (x, *meta_x), (y, *meta_y) in zip(a["params"], b["params"], strict=True):
        assert meta_x == meta_y and (x.is_meta or torch.equal(x, y))  # a meta tensor has no values to compare
    assert a["state"]["param_groups"] == b["state"]["param_groups"]
    assert a["state"]["state"].keys() == b["state"]["state"].keys()
    for k, entry in a["state"]["state"].items():
        other = b["state"]["state"][k]
        assert entry.keys() == other.keys()
        for name, value in entry.items():
            assert torch.equal(value, other[name]) if isinstance(value, torch.Tensor) else value == other[name]
    assert (a["keys"], a["pager"], a["resident"], a["lru"]) == (b["keys"], b["pager"], b["resident"], b["lru"])


# ---------------------------------------------------------------------------------------------------
# A refused step changes nothing
# ---------------------------------------------------------------------------------------------------


def _sparse_grad(p: torch.nn.Parameter) -> None:
    p.grad = p.grad.to_sparse()


def _fp64_grad(p: torch.nn.Parameter) -> None:
    p.grad_dtype = None  # torch allows a gradient dtype other than the parameter's
    p.grad = p.grad.double()


def _grad_shape(p: torch.nn.Parameter) -> None:
    p.grad.data = torch.zeros((*p.shape[::-1], 2))  # torch's .grad setter checks the size; .data does not


def _grad_shape_same_numel(p: torch.nn.Parameter) -> None:
    p.grad.data = torch.zeros(p.shape[::-1])


def _param_on_meta(p: torch.nn.Parameter) -> None:
    torch.utils.swap_tensors(p, torch.nn.Parameter(torch.zeros(p.shape, device="meta")))
    p.grad = torch.zeros(p.shape, device="meta")


def _param_fp64(p: torch.nn.Parameter) -> None:
    p.data = p.data.double()


def _param_reshaped(p: torch.nn.Parameter) -> None:
    p.data = p.data.reshape(p.shape[::-1]).clone()
    p.grad = torch.ones(p.shape)


def _param_grown(p: torch.nn.Parameter) -> None:
    p.data = torch.zeros(8000)  # 64,000 state bytes at 32 bits, 16,256 at 8: over either budget
    p.grad = torch.ones(8000)


FAULTS: dict[str, tuple[Callable[[torch.nn.Parameter], None], int, str]] = {
    # name: (fault, parameter index, what the message says)
    "sparse-grad": (_sparse_grad, 2, "grad: layout torch.sparse_coo"),
    "fp64-grad": (_fp64_grad, 2, "grad: dtype torch.float64"),
    "grad-shape": (_grad_shape, 2, "grad: shape (96, 16, 2)"),
    "grad-shape-same-numel": (_grad_shape_same_numel, 2, "grad: shape (96, 16)"),
    "param-on-meta": (_param_on_meta, 2, "on meta"),
    "fp64-param": (_param_fp64, 2, "dtype torch.float64"),
    "param-reshaped": (_param_reshaped, 2, "state was made for shape (16, 96)"),
    "new-state-over-budget": (_param_grown, 4, "state bytes, over budget_bytes: "),
}


@pytest.mark.parametrize("bits", [32, 8])
@pytest.mark.parametrize("fault", list(FAULTS))
def test_refused_step_changes_nothing(fault: str, bits: int) -> None:
    """A fault in a late parameter is found before the first one is updated: ValueError naming the parameter
    (group and index, shape), and every parameter, state, step count and pager page as before."""
    opt, params = _trained(bits)
    _grads(params, seed=20)
    make, index, says = FAULTS[fault]
    make(params[index])
    before = _snapshot(opt, params)
    where = {2: "param_groups[1].params[0]", 4: "param_groups[1].params[2]"}[index]
    with pytest.raises(ValueError, match=re.escape(where) + r" \(shape .*" + re.escape(says)):
        opt.step()
    _assert_same(_snapshot(opt, params), before)


def test_refused_step_then_fixed_step_matches_uninterrupted() -> None:
    """After a refused step, fixing the gradient and stepping gives what an optimizer that never saw the fault
    gives, bit for bit (the step counts did not move)."""
    opt, params = _trained(8)
    ref, ref_params = _trained(8)
    _grads(params, seed=20)
    _grads(ref_params, seed=20)
    good = params[2].grad
    params[2].grad = good.to_sparse()
    with pytest.raises(ValueError, match="sparse"):
        opt.step()
    params[2].grad = good
    opt.step()
    ref.step()
    for p, q in zip(params, ref_params, strict=True):
        assert torch.equal(p, q)
    assert opt.state_dict()["state"][0]["step"] == 3


def test_bad_group_hyperparameter_set_between_steps_refuses_the_step() -> None:
    opt, params = _trained(32)
    _grads(params, seed=20)
    opt.param_groups[1]["lr"] = float("inf")
    before = _snapshot(opt, params)
    with pytest.raises(ValueError, match=r"^param_groups\[1\]\.lr: inf"):
        opt.step()
    _assert_same(_snapshot(opt, params), before)


# ---------------------------------------------------------------------------------------------------
# maximize
# ---------------------------------------------------------------------------------------------------


def test_maximize_32bit_matches_torch_adamw() -> None:
    """20 steps with param groups, maximize=True on one group: within 1e-6 of torch.optim.AdamW."""
    ours, theirs = _params(), _params()

    def groups(ps: list[torch.nn.Parameter]) -> list[dict[str, Any]]:
        return [{"params": ps[:2], "maximize": True}, {"params": ps[2:], "weight_decay": 0.1}]

    opt = PagedAdamW(groups(ours), lr=LR, state_bits=32)
    ref = torch.optim.AdamW(groups(theirs), lr=LR, foreach=False)
    for t in range(20):
        _grads(ours, seed=t)
        _grads(theirs, seed=t)
        opt.step()
        ref.step()
    for p, q in zip(ours, theirs, strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-6)
    assert not torch.equal(ours[0], _params()[0])  # it moved


def test_maximize_8bit_matches_bnb_on_the_negated_gradient() -> None:
    """bitsandbytes' AdamW8bit has no maximize; AdamW maximizing g is AdamW minimizing -g (torch's definition),
    so one 8-bit step from fresh states agrees with bnb's step on -g to fp32 rounding (as the update-order test
    in test_optim.py)."""
    torch.manual_seed(0)
    ours = torch.nn.Parameter(torch.randn(40, 256) * 0.1)
    p0 = ours.detach().clone()
    theirs = torch.nn.Parameter(ours.detach().clone())
    g = torch.randn(40, 256)
    ours.grad, theirs.grad = g.clone(), -g
    PagedAdamW([ours], lr=LR, weight_decay=0.01, state_bits=8, maximize=True).step()
    bnb.optim.AdamW8bit([theirs], lr=LR, weight_decay=0.01).step()
    torch.testing.assert_close(ours.detach(), theirs.detach(), rtol=1e-6, atol=1e-9)
    assert ((ours.detach() - p0 * (1 - LR * 0.01)) * g > 0).all()  # each element moved along its gradient


def test_torch_maximize_state_dict_loads_and_continues() -> None:
    """torch.optim.AdamW(maximize=True)'s state dict: maximize is carried over; 5 more steps stay within 1e-6."""
    ours, theirs = _params(), _params()
    ref = torch.optim.AdamW(theirs, lr=LR, maximize=True, foreach=False)
    for t in range(3):
        _grads(theirs, seed=t)
        ref.step()
    for p, q in zip(ours, theirs, strict=True):
        p.data.copy_(q.detach())
    opt = PagedAdamW(ours, lr=0.5, state_bits=32)
    opt.load_state_dict(ref.state_dict())
    assert opt.param_groups[0]["maximize"] is True
    for t in range(3, 8):
        _grads(ours, seed=t)
        _grads(theirs, seed=t)
        opt.step()
        ref.step()
    for p, q in zip(ours, theirs, strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-6)


# ---------------------------------------------------------------------------------------------------
# load_state_dict refuses and keeps the live state
# ---------------------------------------------------------------------------------------------------


def _set(path: tuple[Any, ...], value: Any) -> Callable[[dict[str, Any]], None]:
    def tamper(sd: dict[str, Any]) -> None:
        target = sd
        for key in path[:-1]:
            target = target[key]
        if value is _DELETE:
            del target[path[-1]]
        else:
            target[path[-1]] = value(target[path[-1]]) if callable(value) else value

    return tamper


_DELETE = object()
_NAN = float("nan")

# name: (tamper, message pattern); state[0] is the 8-bit (96, 64) weight, state[2] a 32-bit (16, 96) weight
TAMPERS: dict[str, tuple[Callable[[dict[str, Any]], None], str]] = {
    "step=-1": (_set(("state", 2, "step"), -1), r"parameter 2 of .*step: -1; expected a non-negative integer"),
    "step=2.5": (_set(("state", 2, "step"), 2.5), r"step: 2\.5; expected"),
    "step='3'": (_set(("state", 2, "step"), "3"), r"step: '3'; expected"),
    "step=True": (_set(("state", 2, "step"), True), r"step: True; expected"),
    "step=nan": (_set(("state", 2, "step"), _NAN), r"step: nan; expected"),
    "step=None": (_set(("state", 2, "step"), None), r"step: None; expected"),
    "step=tensor(2.5)": (_set(("state", 2, "step"), torch.tensor(2.5)), r"step: tensor\(2\.5"),
    "step=tensor(-1.)": (_set(("state", 2, "step"), torch.tensor(-1.0)), r"step: tensor\(-1\."),
    "step=tensor(nan)": (_set(("state", 2, "step"), torch.tensor(_NAN)), r"step: tensor\(nan"),
    "step=tensor([3.])": (_set(("state", 2, "step"), torch.tensor([3.0])), r"step: tensor\(\[3\.\]"),
    "step=meta-tensor": (_set(("state", 2, "step"), torch.tensor(3.0, device="meta")), "step: tensor"),
    "no-step": (_set(("state", 2, "step"), _DELETE), r"parameter 2 of .*: no 'step'"),
    "exp_avg=list": (_set(("state", 2, "exp_avg"), lambda t: t.tolist()), r"exp_avg: a list; expected"),
    "entry=list": (_set(("state", 2), lambda e: list(e.values())), r"parameter 2 of .*: a list; expected a mapping"),
    "exp_avg=shape": (_set(("state", 2, "exp_avg"), lambda t: t.T), r"exp_avg: shape \(96, 16\)"),
    "exp_avg=fp16": (_set(("state", 2, "exp_avg"), lambda t: t.half()), r"exp_avg: .*torch\.float16; expected"),
    "codes=fp32": (_set(("state", 0, "exp_avg"), lambda t: t.float()), r"parameter 0 of .*8-bit.*exp_avg: .*float32"),
    "absmax=short": (_set(("state", 0, "exp_avg_absmax"), lambda t: t[:-1]), r"exp_avg_absmax: shape \(23,\)"),
    "exp_avg=sparse": (_set(("state", 2, "exp_avg"), lambda t: t.to_sparse()), r"exp_avg: layout torch\.sparse"),
    "exp_avg=meta": (_set(("state", 2, "exp_avg"), lambda t: t.to("meta")), r"exp_avg: .*on meta"),
    "exp_avg=nan": (_set(("state", 2, "exp_avg"), lambda t: t.index_fill(0, torch.tensor([3]), _NAN)), "not finite"),
    "exp_avg_sq<0": (_set(("state", 2, "exp_avg_sq"), lambda t: -t - 1), r"exp_avg_sq: .*expected .*>= 0"),
    "absmax<0": (_set(("state", 0, "exp_avg_sq_absmax"), lambda t: -t - 1), r"exp_avg_sq_absmax: .*>= 0"),
    "extra-key": (_set(("state", 2, "max_exp_avg_sq"), torch.zeros(16, 96)), "max_exp_avg_sq"),
    "index=99": (_set(("state", 99), {}), r"state_dict state: key 99; expected"),
    "index='0'": (_set(("state", "0"), {}), r"state_dict state: key '0'; expected"),
    "state=list": (_set(("state",), lambda s: list(s.values())), r"state_dict\['state'\]: a list; expected"),
    "groups=dict": (_set(("param_groups",), lambda g: dict(enumerate(g))), r"param_groups'\]: a dict; expected"),
    "group=list": (_set(("param_groups", 1), lambda g: list(g.items())), r"param_groups\[1\]: a list; expected"),
    "group-no-params": (_set(("param_groups", 1, "params"), _DELETE), r"param_groups\[1\]\.params: missing"),
    "group-params=dup": (_set(("param_groups", 1, "params"), [2, 2, 3]), r"param_groups\[1\]\.params: \[2, 2, 3\]"),
    "lr=-1": (_set(("param_groups", 1, "lr"), -1.0), r"param_groups\[1\]\.lr: -1\.0; expected"),
    "lr=inf": (_set(("param_groups", 1, "lr"), float("inf")), r"param_groups\[1\]\.lr: inf; expected"),
    "lr=nan": (_set(("param_groups", 1, "lr"), _NAN), r"param_groups\[1\]\.lr: nan; expected"),
    "lr='0.1'": (_set(("param_groups", 1, "lr"), "0.1"), r"param_groups\[1\]\.lr: '0\.1'; expected"),
    "betas=1": (_set(("param_groups", 0, "betas"), (0.9, 1.0)), r"param_groups\[0\]\.betas\[1\]: 1\.0"),
    "betas=nan": (_set(("param_groups", 0, "betas"), (_NAN, 0.9)), r"param_groups\[0\]\.betas\[0\]: nan"),
    "eps=-1": (_set(("param_groups", 0, "eps"), -1e-8), r"param_groups\[0\]\.eps: -1e-08"),
    "eps=inf": (_set(("param_groups", 0, "eps"), float("inf")), r"param_groups\[0\]\.eps: inf"),
    "weight_decay=-1": (_set(("param_groups", 0, "weight_decay"), -0.1), r"\.weight_decay: -0\.1"),
    "weight_decay=inf": (_set(("param_groups", 0, "weight_decay"), float("inf")), r"\.weight_decay: inf"),
    "maximize='yes'": (_set(("param_groups", 0, "maximize"), "yes"), r"param_groups\[0\]\.maximize: 'yes'"),
    "amsgrad": (_set(("param_groups", 0, "amsgrad"), True), r"param_groups\[0\]\.amsgrad: True; .*expected False"),
    "capturable": (_set(("param_groups", 0, "capturable"), True), r"\.capturable: True; .*expected False"),
    "differentiable": (_set(("param_groups", 0, "differentiable"), True), r"\.differentiable: True; .*False"),
    "foreach": (_set(("param_groups", 0, "foreach"), True), r"\.foreach: True; .*expected None or False"),
    "fused": (_set(("param_groups", 0, "fused"), True), r"\.fused: True; .*expected None or False"),
    "decoupled_weight_decay": (_set(("param_groups", 0, "decoupled_weight_decay"), False), r"decay: False; .*True"),
}


@pytest.mark.parametrize("tamper", list(TAMPERS))
def test_bad_state_dict_raises_and_keeps_live_state(tamper: str) -> None:
    """Each tampered field is refused with a ValueError naming it, its value and what was expected; the
    optimizer keeps its parameters, states, steps, hyper-parameters and pages."""
    opt, params = _trained(8)
    saved = copy.deepcopy(opt.state_dict())
    change, pattern = TAMPERS[tamper]
    change(saved)
    before = _snapshot(opt, params)
    with pytest.raises(ValueError, match=pattern):
        opt.load_state_dict(saved)
    _assert_same(_snapshot(opt, params), before)


@pytest.mark.parametrize(
    "step",
    [3, torch.tensor(3.0), torch.tensor(3, dtype=torch.int64), 0],
    ids=["int", "fp32-tensor", "int64-tensor", "zero"],
)
def test_integer_steps_load_as_ints(step: Any) -> None:
    """A step is an int or an integer-valued 0-d tensor (torch.optim.AdamW saves an fp32 0-d tensor)."""
    opt, _ = _trained(32)
    saved = copy.deepcopy(opt.state_dict())
    saved["state"][2]["step"] = step
    opt.load_state_dict(saved)
    loaded = opt.state_dict()["state"][2]["step"]
    assert type(loaded) is int and loaded == int(step)


def test_loaded_non_contiguous_state_steps_like_the_contiguous_one() -> None:
    """A state tensor of the right shape but other strides (e.g. a transposed copy) loads and steps exactly as
    the contiguous one (unpaged: a page-out would copy it into a contiguous host buffer)."""
    opt, params = _trained(32, paged=False)
    ref, ref_params = _trained(32, paged=False)
    saved = copy.deepcopy(opt.state_dict())
    saved["state"][2]["exp_avg"] = saved["state"][2]["exp_avg"].T.contiguous().T
    assert not saved["state"][2]["exp_avg"].is_contiguous()
    opt.load_state_dict(saved)
    _grads(params, seed=20)
    _grads(ref_params, seed=20)
    opt.step()
    ref.step()
    for p, q in zip(params, ref_params, strict=True):
        assert torch.equal(p, q)


def test_state_keys_follow_the_saved_groups_parameter_ids() -> None:
    """torch maps state keys through the saved groups' "params" lists; ids other than 0..n-1 map the same way."""
    opt, _ = _trained(32)
    saved = copy.deepcopy(opt.state_dict())
    renumbered = copy.deepcopy(saved)
    renumbered["param_groups"][0]["params"] = [10, 11]
    renumbered["param_groups"][1]["params"] = [12, 13, 14]
    renumbered["state"] = {k + 10: v for k, v in saved["state"].items()}
    fresh = PagedAdamW(_groups(_params()), lr=LR, state_bits=32, budget_bytes=BUDGET[32])
    fresh.load_state_dict(renumbered)
    got = fresh.state_dict()
    assert got["state"].keys() == saved["state"].keys()
    for k, entry in saved["state"].items():
        for name, value in entry.items():
            mine = got["state"][k][name]
            assert torch.equal(value, mine) if name != "step" else value == mine


def test_default_flags_of_a_torch_state_dict_load() -> None:
    """torch.optim.AdamW's defaults (amsgrad/capturable/differentiable False, foreach/fused None, decoupled
    weight decay) load; a saved group without maximize (an older PagedAdamW state dict) loads as False."""
    params = _params()
    donor = torch.optim.AdamW(params, lr=LR)
    _grads(params, seed=0)
    donor.step()
    opt = PagedAdamW(params, lr=0.5, maximize=True)
    opt.load_state_dict(donor.state_dict())
    assert opt.param_groups[0]["maximize"] is False
    saved = opt.state_dict()
    del saved["param_groups"][0]["maximize"]
    opt.param_groups[0]["maximize"] = True
    opt.load_state_dict(saved)
    assert opt.param_groups[0]["maximize"] is False


# ---------------------------------------------------------------------------------------------------
# The constructor
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs,pattern",
    [
        ({"lr": float("inf")}, r"^lr: inf; expected"),
        ({"lr": "0.1"}, r"^lr: '0\.1'; expected"),
        ({"eps": float("inf")}, r"^eps: inf; expected"),
        ({"weight_decay": float("nan")}, r"^weight_decay: nan; expected"),
        ({"weight_decay": float("inf")}, r"^weight_decay: inf; expected"),
        ({"betas": (0.9, float("nan"))}, r"^betas\[1\]: nan; expected"),
        ({"maximize": 1}, r"^maximize: 1; expected True or False"),
        ({"amsgrad": True}, r"^amsgrad: True; .*expected False"),
        ({"capturable": True}, r"^capturable: True; .*expected False"),
        ({"differentiable": True}, r"^differentiable: True; .*expected False"),
        ({"foreach": True}, r"^foreach: True; .*expected None or False"),
        ({"fused": True}, r"^fused: True; .*paged_adamw\(fused=True\).*expected None or False"),
        ({"state_bits": 8.0}, r"^state_bits: 8\.0; expected 8 or 32"),
        ({"budget_bytes": 1e6}, r"^budget_bytes: 1000000\.0; expected"),
        ({"update": object()}, r"^update: <object .*; expected an AdamWUpdate"),
    ],
)
def test_bad_arguments_raise_naming_them(kwargs: dict[str, Any], pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        PagedAdamW(_params(), **kwargs)


def test_default_flags_are_accepted() -> None:
    opt = PagedAdamW(_params(), amsgrad=False, capturable=False, differentiable=False, foreach=False, fused=None)
    assert opt.param_groups[0]["maximize"] is False


@pytest.mark.parametrize(
    "group,pattern",
    [
        ({"amsgrad": True}, r"^param_groups\[1\]\.amsgrad: True"),
        ({"maximize": "no"}, r"^param_groups\[1\]\.maximize: 'no'"),
        ({"lr": float("inf")}, r"^param_groups\[1\]\.lr: inf"),
    ],
)
def test_bad_param_group_raises_naming_it(group: dict[str, Any], pattern: str) -> None:
    params = _params()
    with pytest.raises(ValueError, match=pattern):
        PagedAdamW([{"params": params[:2]}, {"params": params[2:], **group}])


def test_bad_parameters_raise_naming_them() -> None:
    params = _params()
    with pytest.raises(ValueError, match=r"^param_groups\[0\]\.params\[1\] \(shape \(3,\)\): dtype torch\.float64"):
        PagedAdamW([params[0], torch.zeros(3, dtype=torch.float64, requires_grad=True)])
    with pytest.raises(ValueError, match=r"^param_groups\[0\]\.params\[2\] \(shape \(96,\)\): the same tensor as"):
        PagedAdamW([params[0], params[1], params[1]])
