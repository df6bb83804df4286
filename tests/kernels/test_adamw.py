"""kernels.adamw: the fused updates against quant.optim's torch reference, on DEVICE (the GPU when there is one,
else the CPU under the Triton interpreter): every tensor a kernel reads is made there.

Tolerances: both sides compute the same fp32 operations in the same order with correctly rounded division
and sqrt (and no FMA contraction on a GPU), so the fp32 results agree to about an ulp; the parameter is
then within one ulp of its dtype (rtol = eps(dtype)), and the requantized states agree exactly except where
an fp32 ulp moves a value across a code midpoint: at most 0.1% of codes, by one code.
"""

from __future__ import annotations

import pytest
import torch

from kernels.adamw import adamw_8bit, adamw_fp32, audit_cases, paged_adamw
from kernels.device import DEVICE
from quant.blockwise import quantize_8bit
from quant.optim import AdamWHyper, Blockwise8State, PagedAdamW, adamw_8bit_ref, adamw_fp32_ref
from quant.optim.states import dynamic_maps

SIGNED, UNSIGNED = dynamic_maps(DEVICE)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
HP = AdamWHyper(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.01, t=7)


def _states(n: int, zero: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 moments on DEVICE: zero (a first step) or random with a spread of magnitudes within each block."""
    if zero:
        return torch.zeros(n, device=DEVICE), torch.zeros(n, device=DEVICE)
    scale = torch.logspace(-6, 0, n)[torch.randperm(n)]
    return (torch.randn(n) * scale * 0.1).to(DEVICE), (torch.rand(n) * scale * 0.01).to(DEVICE)


def _randn(*shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Standard normal values drawn on the CPU (the same values on every machine), moved to DEVICE."""
    return torch.randn(shape).to(DEVICE, dtype)


def _blockwise(x: torch.Tensor, code: torch.Tensor) -> Blockwise8State:
    codes, absmax = quantize_8bit(x, code, 256)
    return Blockwise8State(codes, absmax, code, 256)


def _assert_codes_close(got: Blockwise8State, want: Blockwise8State) -> None:
    torch.testing.assert_close(got.absmax, want.absmax, rtol=1e-6, atol=0)
    diff = (got.codes.int() - want.codes.int()).abs()
    assert diff.max() <= 1 and (diff > 0).float().mean() <= 1e-3


def _assert_param_close(got: torch.Tensor, want: torch.Tensor, ulps: int = 1) -> None:
    torch.testing.assert_close(got, want, rtol=ulps * torch.finfo(want.dtype).eps, atol=ulps * 1e-9)


@pytest.mark.parametrize("zero", [True, False], ids=["t1", "t7"])
@pytest.mark.parametrize("dtype", list(DTYPES), ids=list(DTYPES))
@pytest.mark.parametrize("n", [1000, 4097], ids=lambda n: f"N{n}")
def test_fp32_states_match_reference(n: int, dtype: str, zero: bool) -> None:
    p, g = _randn(n, dtype=DTYPES[dtype]), _randn(n, dtype=DTYPES[dtype])
    m, v = _states(n, zero)
    hp = AdamWHyper(HP.lr, HP.beta1, HP.beta2, HP.eps, HP.weight_decay, 1 if zero else HP.t)
    want_p, want_m, want_v = p.clone(), m.clone(), v.clone()
    adamw_fp32_ref(want_p, g, want_m, want_v, hp)
    adamw_fp32(p, g, m, v, hp)
    _assert_param_close(p, want_p)
    torch.testing.assert_close(m, want_m, rtol=2e-7, atol=0)
    torch.testing.assert_close(v, want_v, rtol=2e-7, atol=0)


CASES_8BIT = [
    (1000, "fp32", True, 1),
    (1000, "fp32", False, 1),
    (4097, "fp32", False, 4),
    (4097, "bf16", False, 1),
    (4097, "fp16", False, 4),
    (1000, "bf16", True, 4),
    (300, "fp16", False, 1),
]


@pytest.mark.parametrize(
    "n,dtype,zero,blocks",
    [pytest.param(*c, id=f"N{c[0]}-{c[1]}-{'t1' if c[2] else 't7'}-B{c[3]}") for c in CASES_8BIT],
)
def test_8bit_states_match_reference(n: int, dtype: str, zero: bool, blocks: int) -> None:
    """Ragged sizes (a short last block, a short last program) and both programs-per-block configs."""
    p, g = _randn(n, dtype=DTYPES[dtype]), _randn(n, dtype=DTYPES[dtype])
    m32, v32 = _states(n, zero)
    hp = AdamWHyper(HP.lr, HP.beta1, HP.beta2, HP.eps, HP.weight_decay, 1 if zero else HP.t)
    want_p, want_m, want_v = p.clone(), _blockwise(m32, SIGNED), _blockwise(v32, UNSIGNED)
    adamw_8bit_ref(want_p, g, want_m, want_v, hp)
    m, v = _blockwise(m32, SIGNED), _blockwise(v32, UNSIGNED)
    adamw_8bit(p, g, m, v, hp, blocks_per_program=blocks)
    _assert_param_close(p, want_p)
    _assert_codes_close(m, want_m)
    _assert_codes_close(v, want_v)


def test_8bit_2d_parameter_and_all_zero_block() -> None:
    """A (3, 300) parameter whose gradient and state are zero over the first block: codes for 0.0, absmax 0."""
    p, g = _randn(3, 300), _randn(3, 300)
    g.view(-1)[:256] = 0
    m32, v32 = _states(900, zero=True)
    want_p, want_m, want_v = p.clone(), _blockwise(m32, SIGNED), _blockwise(v32, UNSIGNED)
    m, v = _blockwise(m32, SIGNED), _blockwise(v32, UNSIGNED)
    adamw_8bit_ref(want_p, g, want_m, want_v, HP)
    adamw_8bit(
        p,
        g,
        Blockwise8State(m.codes.view(3, 300), m.absmax, SIGNED),
        v.__class__(v.codes.view(3, 300), v.absmax, UNSIGNED),
        HP,
    )
    _assert_param_close(p, want_p)
    assert m.absmax[0] == 0 and v.absmax[0] == 0
    _assert_codes_close(m, want_m)
    _assert_codes_close(v, want_v)


def test_fused_optimizer_matches_reference_optimizer() -> None:
    """paged_adamw(fused=True) wires the kernels into PagedAdamW: 3 steps, 8-bit and 32-bit tensors, paged."""
    torch.manual_seed(0)
    shapes = [(64, 80), (80,), (16, 64)]  # 5120 elements take 8-bit states, the others 32-bit
    a = [_randn(*s).requires_grad_() for s in shapes]
    b = [t.detach().clone().requires_grad_() for t in a]
    fused = paged_adamw(a, fused=True, lr=1e-2, state_bits=8, budget_bytes=12_000)
    ref = paged_adamw(b, fused=False, lr=1e-2, state_bits=8, budget_bytes=12_000)
    for _ in range(3):
        grads = [_randn(*s) for s in shapes]
        for x, y, g in zip(a, b, grads, strict=True):
            x.grad, y.grad = g.clone(), g.clone()
        fused.step()
        ref.step()
    for x, y in zip(a, b, strict=True):
        _assert_param_close(x.detach(), y.detach(), ulps=4)  # an ulp a step, as above
    assert fused.stats() == ref.stats() and fused.stats().page_outs > 0


def test_launcher_checks() -> None:
    p, g = _randn(512), _randn(512)
    zeros = torch.zeros(512, device=DEVICE)
    m, v = _blockwise(zeros, SIGNED), _blockwise(zeros, UNSIGNED)
    with pytest.raises(ValueError, match="blocks_per_program"):
        adamw_8bit(p, g, m, v, HP, blocks_per_program=2)
    with pytest.raises(ValueError, match=r"m\.codes"):
        adamw_8bit(p, g, Blockwise8State(m.codes.float(), m.absmax, SIGNED), v, HP)
    with pytest.raises(ValueError, match=r"v\.absmax"):
        adamw_8bit(p, g, m, Blockwise8State(v.codes, v.absmax[:1], UNSIGNED), HP)
    with pytest.raises(ValueError, match="grad"):
        adamw_fp32(p, g[:10], zeros.clone(), zeros.clone(), HP)
    with pytest.raises(ValueError, match="exp_avg_sq"):
        adamw_fp32(p, g, zeros.clone(), zeros.half(), HP)
    with pytest.raises(ValueError, match="p: dtype"):
        adamw_fp32(p.double(), g.double(), zeros.clone(), zeros.clone(), HP)
    with pytest.raises(ValueError, match="update"):
        paged_adamw([torch.zeros(2, requires_grad=True)], update=None)


def test_default_follows_the_parameters_device_and_audit_cases() -> None:
    """The factory's default update follows where the parameters are: fused only for parameters on a CUDA device
    with compiled kernels (DEVICE is CUDA), so CPU parameters keep the torch reference also on a GPU machine, and
    so does everything under the interpreter; the audit covers both kernels, every dtype, both 8-bit configs,
    with power-of-2 blocks."""
    cpu = paged_adamw(iter([torch.zeros(2, requires_grad=True)]))  # a one-shot iterator, as module.parameters()
    assert isinstance(cpu, PagedAdamW) and type(cpu.update).__name__ == "TorchAdamWUpdate"
    on_device = paged_adamw([{"params": [torch.zeros(2, device=DEVICE, requires_grad=True)]}])
    want = "TritonAdamWUpdate" if DEVICE.type == "cuda" else "TorchAdamWUpdate"
    assert type(on_device.update).__name__ == want
    forced = paged_adamw([torch.zeros(2, requires_grad=True)], fused=True)
    assert type(forced.update).__name__ == "TritonAdamWUpdate"
    cases = audit_cases()
    assert len(cases) == 3 * (1 + 2)
    for case in cases:
        for value in case.constexprs.values():
            assert value & (value - 1) == 0


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", list(DTYPES), ids=list(DTYPES))
def test_gpu_sweep(dtype: str) -> None:
    """On the GPU: a 1M-element tensor against the reference on the same device, then a paged fused optimizer
    (side-stream prefetch, pinned host pages) equal to an unpaged one, bit for bit, within its budget."""
    dev, n = DEVICE, (1 << 20) + 3
    p, g = torch.randn(n, device=dev).to(DTYPES[dtype]), torch.randn(n, device=dev).to(DTYPES[dtype])
    m32, v32 = (x.to(dev) for x in _states(n, zero=False))
    signed, unsigned = dynamic_maps(dev)
    want_p, got_p = p.clone(), p.clone()
    want_m, want_v = _blockwise(m32, signed), _blockwise(v32, unsigned)
    m, v = _blockwise(m32, signed), _blockwise(v32, unsigned)
    adamw_8bit_ref(want_p, g, want_m, want_v, HP)
    adamw_8bit(got_p, g, m, v, HP)
    _assert_param_close(got_p, want_p)
    _assert_codes_close(m, want_m)
    _assert_codes_close(v, want_v)
    want_p, got_p, mm, vv = p.clone(), p.clone(), m32.clone(), v32.clone()
    adamw_fp32_ref(want_p, g, m32, v32, HP)
    adamw_fp32(got_p, g, mm, vv, HP)
    _assert_param_close(got_p, want_p)

    shapes = [(1024, 1024), (1024,), (4096, 256), (64, 64)] * 3
    a = [torch.randn(s, device=dev, dtype=DTYPES[dtype], requires_grad=True) for s in shapes]
    b = [t.detach().clone().requires_grad_() for t in a]
    budget = 3 * (2 * (1 << 20) + 8 * 4096)  # three of the large 8-bit states
    paged = paged_adamw(a, fused=True, state_bits=8, budget_bytes=budget)
    unpaged = paged_adamw(b, fused=True, state_bits=8)
    for _ in range(4):
        for x, y in zip(a, b, strict=True):
            x.grad = torch.randn_like(x)
            y.grad = x.grad.clone()
        paged.step()
        unpaged.step()
        assert paged.stats().resident_bytes <= budget
    torch.cuda.synchronize()
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x, y)
    assert paged.stats().peak_resident_bytes <= budget and paged.stats().page_ins > 0
