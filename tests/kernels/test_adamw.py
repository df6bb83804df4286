"""kernels.adamw: the fused updates against quant.optim's torch reference, on DEVICE (the GPU when there is one,
else the CPU under the Triton interpreter): every tensor a kernel reads is made there.

Under the interpreter the 8-bit update equals the reference bit for bit: parameter, absmax and codes (codes only
where the block's absmax is not NaN: a NaN absmax decodes every code to NaN, and which code a NaN takes follows
NaN sign bits that differ between libraries). The reference takes its sqrt correctly rounded
(float64, rounded once: torch's CPU fp32 sqrt is not, about 0.6% of results an ulp off on this build,
`test_torch_cpu_sqrt_is_faithful`) and divides by a tensor (CUDA turns a division by a Python scalar into a multiply
by its reciprocal), as the kernels compute IEEE's sqrt and divide.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np
import pytest
import torch
import triton
import triton.language as tl

from kernels import adamw as A
from kernels.adamw import (
    CodeSearch,
    adamw_8bit,
    adamw_fp32,
    audit_workloads,
    code_search,
    paged_adamw,
    plan_8bit,
)
from kernels.device import DEVICE
from quant.blockwise import quantize_8bit
from quant.codebooks import SIGNED_DYNAMIC, UNSIGNED_DYNAMIC, sorted_with_order
from quant.optim import AdamWHyper, Blockwise8State, PagedAdamW, adamw_8bit_ref, adamw_fp32_ref
from quant.optim.states import dynamic_maps, state_bytes

SIGNED, UNSIGNED = dynamic_maps(DEVICE)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
HP = AdamWHyper(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.01, t=7)
EXACT = DEVICE.type == "cpu"  # the interpreter: bit for bit


def test_torch_cpu_sqrt_is_faithful() -> None:
    """Why the reference (quant.optim.states) takes its sqrt in float64: torch's CPU fp32 sqrt differs from the
    correctly rounded one (numpy's, IEEE, the kernels') by an ulp for some inputs; the double-precision route never
    does."""
    x = torch.rand(1 << 18) * torch.logspace(-30, 30, 1 << 18)
    ieee = torch.from_numpy(np.sqrt(x.numpy()))
    assert torch.equal(torch.sqrt(x.double()).float(), ieee)
    off = torch.sqrt(x) != ieee
    if not off.any():
        pytest.skip("this torch build's CPU sqrt is correctly rounded")
    assert ((torch.sqrt(x)[off].view(torch.int32) - ieee[off].view(torch.int32)).abs() == 1).all()


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


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(torch.uint8)


def _assert_codes_close(got: Blockwise8State, want: Blockwise8State) -> None:
    """absmax equal (NaN where the reference's is), codes equal where absmax is not NaN; on a GPU absmax to
    1e-6 and at most 0.1% of codes one apart."""
    nan = want.absmax.isnan()
    assert torch.equal(got.absmax.isnan(), nan)
    finite = ~nan.repeat_interleave(256)[: want.codes.numel()]
    got_codes, want_codes = got.codes.view(-1)[finite], want.codes.view(-1)[finite]
    if EXACT:
        assert torch.equal(_bits(got.absmax[~nan]), _bits(want.absmax[~nan]))
        assert torch.equal(got_codes, want_codes), f"{int((got_codes != want_codes).sum())} codes differ"
        return
    torch.testing.assert_close(got.absmax[~nan], want.absmax[~nan], rtol=1e-6, atol=0)
    diff = (got_codes.int() - want_codes.int()).abs()
    assert diff.max() <= 1 and (diff > 0).float().mean() <= 1e-3


def _assert_param_close(got: torch.Tensor, want: torch.Tensor, ulps: int = 1) -> None:
    if EXACT:
        assert torch.equal(_bits(got), _bits(want)), f"{(_bits(got) != _bits(want)).sum()} bytes differ"
        return
    tol = ulps * torch.finfo(want.dtype).eps
    torch.testing.assert_close(got, want, rtol=tol, atol=ulps * 1e-9, equal_nan=True)


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


def _run_8bit(
    p: torch.Tensor, g: torch.Tensor, m32: torch.Tensor, v32: torch.Tensor, hp: AdamWHyper, blocks: int | None
) -> None:
    """One update by the kernel and by the reference from the same start; asserts they agree."""
    want_p, want_m, want_v = p.clone(), _blockwise(m32, SIGNED), _blockwise(v32, UNSIGNED)
    adamw_8bit_ref(want_p, g, want_m, want_v, hp)
    m, v = _blockwise(m32, SIGNED), _blockwise(v32, UNSIGNED)
    adamw_8bit(p, g, m, v, hp, blocks_per_program=blocks)
    _assert_param_close(p, want_p)
    _assert_codes_close(m, want_m)
    _assert_codes_close(v, want_v)


CASES_8BIT = [
    (1000, "fp32", True, 1),
    (1000, "fp32", False, 1),
    (4097, "fp32", False, 2),
    (4097, "bf16", False, 1),
    (4097, "fp16", False, 2),
    (1000, "bf16", True, 2),
    (300, "fp16", False, 1),
    (255, "bf16", False, None),  # a single short block
    (256 * 5, "fp32", False, 2),  # whole blocks, an odd count: a half-empty last program
    (256 * 6 + 1, "bf16", False, 2),  # a one-element last block
]


@pytest.mark.parametrize(
    "n,dtype,zero,blocks",
    [pytest.param(*c, id=f"N{c[0]}-{c[1]}-{'t1' if c[2] else 't7'}-B{c[3]}") for c in CASES_8BIT],
)
def test_8bit_states_match_reference(n: int, dtype: str, zero: bool, blocks: int | None) -> None:
    """Ragged sizes (a short last block, a short last program) and both blocks-per-program configs."""
    p, g = _randn(n, dtype=DTYPES[dtype]), _randn(n, dtype=DTYPES[dtype])
    m32, v32 = _states(n, zero)
    hp = AdamWHyper(HP.lr, HP.beta1, HP.beta2, HP.eps, HP.weight_decay, 1 if zero else HP.t)
    _run_8bit(p, g, m32, v32, hp, blocks)


def _extreme(p: torch.Tensor, g: torch.Tensor, m: torch.Tensor, v: torch.Tensor) -> None:
    """A block of 256 for each edge of fp32: tiny (subnormal states), huge (v near overflow), all zero; an inf
    gradient beside a large finite one (an inf absmax), NaN and -inf gradients (a NaN absmax), a gradient whose
    square overflows (sqrt(v) = inf, the states finite), an infinite state (decoding to inf and NaN)."""
    g[:256] *= 1e-30
    m[:256] *= 1e-35
    v[:256] *= 1e-38
    g[256:512] *= 1e18
    m[256:512] *= 1e30
    v[256:512] *= 3e37
    g[512:768] = m[512:768] = v[512:768] = 0.0
    g[800], g[801], g[1030], g[1100], g[1300], v[1600] = (
        float("inf"),
        1e17,
        float("nan"),
        -float("inf"),
        1e20,
        float("inf"),
    )


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_8bit_extreme_values_match_reference(dtype: str) -> None:
    """`_row_divisor`'s scaling (absmax below 2**-40, above 2**60, 0, inf, NaN) and the inf guard of
    sqrt(v) / sqrt(1 - beta2**t), against the reference, bit for bit."""
    n = 256 * 7
    p, g = _randn(n), _randn(n)
    m32, v32 = _states(n, zero=False)
    _extreme(p, g, m32, v32)
    _run_8bit(p.to(DTYPES[dtype]), g.to(DTYPES[dtype]), m32, v32, HP, None)


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


# ---------------------------------------------------------------------------------------------------
# The code search and the divisions, on their own
# ---------------------------------------------------------------------------------------------------


@triton.jit
def _index_kernel(x_ptr, out_ptr, table_ptr, shift, dlo, dhi, N, SIGNED: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    x = tl.load(x_ptr + offs, mask=offs < N, other=0.0)
    tl.store(out_ptr + offs, A._code_index(x, table_ptr, shift, dlo, dhi, SIGNED), mask=offs < N)


def _code_index(x: torch.Tensor, search: CodeSearch) -> torch.Tensor:
    """The kernel's `_code_index` of each x (fp32, on DEVICE)."""
    out = torch.empty(x.shape, dtype=torch.int32, device=DEVICE)
    block = 1 << 16
    args = search.args("s")
    _index_kernel[(triton.cdiv(x.numel(), block),)](
        x, out, args["s_table_ptr"], search.shift, search.dlo, search.dhi, x.numel(), SIGNED=search.signed,
        BLOCK=block, enable_fp_fusion=False,
    )  # fmt: skip
    return out


def _patterns(keys: np.ndarray) -> torch.Tensor:
    """fp32 values of monotone int keys (the inverse of the key map: a negative key's magnitude bits flipped)."""
    keys = keys.astype(np.int64)
    bits = np.where(keys < 0, keys ^ 0x7FFFFFFF, keys).astype(np.int32)
    return torch.from_numpy(bits.view(np.float32).copy())


def _nearest(x: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
    """quant's rule: #{midpoints < x} (torch.bucketize on the fp32 midpoints, a tie to the lower value); a NaN is
    above every midpoint with its sign bit clear, below with it set (as quant's CPU bit-pattern table)."""
    want = torch.bucketize(x, sorted_with_order(code)[0]).to(torch.int32)
    nan_sign = x.view(torch.int32) < 0
    return torch.where(x.isnan(), torch.where(nan_sign, 0, 255).to(torch.int32), want)


@pytest.mark.parametrize("signed", [True, False], ids=["signed", "unsigned"])
def test_code_index_is_nearest_on_every_pattern(signed: bool) -> None:
    """`_code_index` equals quant's rule on every one of the 2**32 fp32 patterns, shown on a checkpoint set.

    In key order (monotone: a < b exactly when key(a) < key(b)) both sides are non-decreasing and change only at
    a threshold: quant's count by definition (NaNs sit above +inf and below -inf), the kernel's because within a
    bin (entry + low bits) >> (shift + 1) grows with the low bits. So they agree everywhere if they agree on the
    first and last key of every bin and on each threshold's key and its two neighbours: between two adjacent
    checkpoints both are constant (equal at both ends, monotone in between).
    """
    code = SIGNED_DYNAMIC if signed else UNSIGNED_DYNAMIC
    search = A.DYNAMIC_SEARCH[0 if signed else 1]
    s = search.shift
    first = np.arange(-(1 << (31 - s)), 1 << (31 - s), dtype=np.int64) << s
    t_keys = A._keys(sorted_with_order(code)[0].numpy())
    keys = np.unique(np.concatenate([first, first + (1 << s) - 1, t_keys - 1, t_keys, t_keys + 1]))
    x = _patterns(keys)
    got = _code_index(x.to(DEVICE), search.to(DEVICE)).cpu()
    want = _nearest(x, code)
    assert torch.equal(got, want), f"{int((got != want).sum())} of {len(keys)} checkpoints differ"


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("QKBENCH_EXHAUSTIVE"), reason="QKBENCH_EXHAUSTIVE=1: ~30 min, 2 cores")
@pytest.mark.parametrize("signed", [True, False], ids=["signed", "unsigned"])
def test_code_index_every_pattern_exhaustively(signed: bool) -> None:
    """The same on all 2**32 patterns, one by one (the checkpoint test's claim, checked without its argument)."""
    code = SIGNED_DYNAMIC if signed else UNSIGNED_DYNAMIC
    search = A.DYNAMIC_SEARCH[0 if signed else 1].to(DEVICE)
    step = 1 << 24
    for start in range(-(1 << 31), 1 << 31, step):
        x = torch.arange(start, start + step, dtype=torch.int64).to(torch.int32).view(torch.float32)
        assert torch.equal(_code_index(x.to(DEVICE), search).cpu(), _nearest(x, code)), f"chunk at {start}"


def test_code_search_matches_quant_table_for_dynamic_maps() -> None:
    """Built from the maps, the tables are quant's: same shift; and code_search rejects what it cannot serve."""
    from quant.blockwise import _DYNAMIC_8BIT  # quant's CPU tables (the reference's own)

    for search, book in zip(A.DYNAMIC_SEARCH, _DYNAMIC_8BIT, strict=True):
        assert search.shift == book.table.shift and search.table.dtype == torch.int32
    assert A.DYNAMIC_SEARCH[0].signed and not A.DYNAMIC_SEARCH[1].signed
    with pytest.raises(ValueError, match="strictly increasing"):
        code_search(SIGNED_DYNAMIC.flip(0))
    with pytest.raises(ValueError, match=r"\(256,\) fp32"):
        code_search(SIGNED_DYNAMIC[:16])
    with pytest.raises(ValueError, match="too near 0"):
        code_search(torch.linspace(-1e-12, 1e-12, 256))
    with pytest.raises(ValueError, match=r"bin of 1\.0"):
        code_search(torch.cat([torch.linspace(-1.0, 0.5, 254), torch.tensor([1 - 2**-24, 1.0])]))


@triton.jit
def _div_kernel(x_ptr, out_ptr, d, r, N, INF_X: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    x = tl.load(x_ptr + offs, mask=offs < N, other=0.0)
    tl.store(out_ptr + offs, A._div_by(x, d, r, INF_X), mask=offs < N)


def _div_by(x: np.ndarray, d: np.float32, inf_x: bool = False) -> np.ndarray:
    out = torch.empty(len(x), device=DEVICE)
    block = 1 << 16
    r = np.float32(1.0) / d
    _div_kernel[(triton.cdiv(len(x), block),)](
        torch.from_numpy(x).to(DEVICE), out, float(d), float(r), len(x), INF_X=inf_x, BLOCK=block,
        enable_fp_fusion=False,
    )  # fmt: skip
    return out.cpu().numpy()


def _mantissas(lo: int, count: int, step: int = 1) -> np.ndarray:
    """fp32 values of [1, 2): `count` mantissas from `lo`, every `step`-th."""
    return (
        ((np.arange(lo, lo + count * step, step, dtype=np.int64) % (1 << 23)) + (127 << 23))
        .astype(np.int32)
        .view(np.float32)
    )


def test_div_by_is_correctly_rounded() -> None:
    """`_div_by` (x * RN(1/d) and two Markstein corrections) equals the IEEE quotient: every dividend mantissa
    for the divisors whose reciprocal rounds worst and for 2 - 2**-23 (where x * RN(1/d) alone is 2 ulps off);
    quotients are exact up to a power of 2 when nothing underflows, so one binade of x stands for all. Then
    random x and d over the ranges the kernel uses, and 0 and inf."""
    d_all = _mantissas(0, 1 << 23)
    err = np.abs((np.float32(1) / d_all).astype(np.float64) - 1 / d_all.astype(np.float64))
    worst = d_all[np.argsort(-err / np.spacing(np.float32(1) / d_all))[:2]]
    x = _mantissas(0, 1 << 23, 1 if DEVICE.type == "cuda" else 4)  # every 4th on the interpreter (time)
    for d in (*worst, np.float32(2 - 2**-23), np.float32(1.5)):
        assert np.array_equal(_div_by(x, d), x / d), f"d = {d!r}"
    rng = np.random.default_rng(0)
    x = (rng.uniform(1, 2, 1 << 16) * 2.0 ** rng.integers(-89, 64, 1 << 16)).astype(np.float32)
    for d in (rng.uniform(1, 2, 8) * 2.0 ** rng.integers(-49, 64, 8)).astype(np.float32):
        q = x / d
        keep = (q >= 2**-40) & (q <= 1)  # the normalization's quotients that reach a code
        assert np.array_equal(_div_by(x[keep], d), q[keep])
    root = np.array([0.0, 2**-75, 1.0, 2.0**64, np.inf], dtype=np.float32)
    for d in np.array([2**-27, 0.0316, 1.0], dtype=np.float32):
        assert np.array_equal(_div_by(root, d, inf_x=True), root / d)


# ---------------------------------------------------------------------------------------------------
# Launchers, plans, optimizer, audit
# ---------------------------------------------------------------------------------------------------


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


def test_update_builds_each_search_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """TritonAdamWUpdate keeps the CodeSearch of each map it meets: two updates, two maps, two builds."""
    built: list[torch.Tensor] = []
    real: Callable[[torch.Tensor], CodeSearch] = A.search_for
    monkeypatch.setattr(A, "search_for", lambda code: built.append(code) or real(code))
    update = A.TritonAdamWUpdate()
    p, g = _randn(512), _randn(512)
    m, v = _blockwise(torch.zeros(512, device=DEVICE), SIGNED), _blockwise(torch.zeros(512, device=DEVICE), UNSIGNED)
    update.blockwise8(p, g, m, v, HP)
    update.blockwise8(p, g, m, v, HP)
    assert [c is SIGNED for c in built] == [True, False]


def test_launcher_checks() -> None:
    p, g = _randn(512), _randn(512)
    zeros = torch.zeros(512, device=DEVICE)
    m, v = _blockwise(zeros, SIGNED), _blockwise(zeros, UNSIGNED)
    with pytest.raises(ValueError, match="blocks_per_program"):
        adamw_8bit(p, g, m, v, HP, blocks_per_program=4)
    with pytest.raises(ValueError, match=r"m\.codes"):
        adamw_8bit(p, g, Blockwise8State(m.codes.float(), m.absmax, SIGNED), v, HP)
    with pytest.raises(ValueError, match=r"v\.absmax"):
        adamw_8bit(p, g, m, Blockwise8State(v.codes, v.absmax[:1], UNSIGNED), HP)
    with pytest.raises(ValueError, match="beta2"):
        adamw_8bit(p, g, m, v, AdamWHyper(1e-3, 0.9, 1.0, 1e-8, 0.0, 3))
    with pytest.raises(ValueError, match="searches"):
        adamw_8bit(p, g, m, v, HP, searches=(A.DYNAMIC_SEARCH[0].to("meta"), A.DYNAMIC_SEARCH[1].to("meta")))
    with pytest.raises(ValueError, match="grad"):
        adamw_fp32(p, g[:10], zeros.clone(), zeros.clone(), HP)
    with pytest.raises(ValueError, match="grad: dtype"):
        adamw_fp32(p, g.double(), zeros.clone(), zeros.clone(), HP)
    with pytest.raises(ValueError, match="exp_avg_sq"):
        adamw_fp32(p, g, zeros.clone(), zeros.half(), HP)
    with pytest.raises(ValueError, match="p: dtype"):
        adamw_fp32(p.double(), g.double(), zeros.clone(), zeros.clone(), HP)
    with pytest.raises(ValueError, match="update"):
        paged_adamw([torch.zeros(2, requires_grad=True)], update=None)


def _meta_states(n: int) -> tuple[torch.Tensor, Blockwise8State]:
    p = torch.empty(n, dtype=torch.bfloat16, device="meta")
    codes = torch.empty(n, dtype=torch.uint8, device="meta")
    absmax = torch.empty(triton.cdiv(n, 256), device="meta")
    return p, Blockwise8State(codes, absmax, torch.empty(256, device="meta"))


@pytest.mark.parametrize("n", [256 * 8192, 256 * 8193 + 7, (1 << 31) + 5], ids=["B1", "B2-tail", "2^31+5"])
def test_8bit_plan_covers_every_block(n: int) -> None:
    """The whole blocks in programs of BLOCKS, then the short last block on its own; past 2**31 elements the
    sizes go to the kernel as int64 (its offsets are int64 throughout)."""
    p, m = _meta_states(n)
    searches = (A.DYNAMIC_SEARCH[0].to("meta"), A.DYNAMIC_SEARCH[1].to("meta"))
    launches = plan_8bit(p, p, m, m, HP, searches)
    full, tail = divmod(n, 256)
    main = launches[0]
    assert main.args["BLOCKS"] == (1 if full <= 8192 else 2) and not main.args["RAGGED"]
    assert main.grid == (triton.cdiv(full, main.args["BLOCKS"]),) and main.args["n_rows"] == full
    assert main.elements == 256 * main.args["BLOCKS"] and main.num_warps == 1
    assert main.options == {"enable_fp_fusion": False}
    if tail:
        last = launches[1]
        assert last.grid == (1,) and last.args["RAGGED"] and last.args["row0"] == full and last.args["N"] == n
    assert len(launches) == 1 + (tail > 0)
    assert np.float32(main.args["inv_sqrt_correction2"]) == np.float32(1) / np.float32(HP.sqrt_correction2)


def test_default_follows_the_parameters_device() -> None:
    """The factory's default update follows where the parameters are: fused only for parameters on a CUDA device
    with compiled kernels (DEVICE is CUDA), so CPU parameters keep the torch reference also on a GPU machine, and
    so does everything under the interpreter."""
    cpu = paged_adamw(iter([torch.zeros(2, requires_grad=True)]))  # a one-shot iterator, as module.parameters()
    assert isinstance(cpu, PagedAdamW) and type(cpu.update).__name__ == "TorchAdamWUpdate"
    on_device = paged_adamw([{"params": [torch.zeros(2, device=DEVICE, requires_grad=True)]}])
    want = "TritonAdamWUpdate" if DEVICE.type == "cuda" else "TorchAdamWUpdate"
    assert type(on_device.update).__name__ == want
    forced = paged_adamw([torch.zeros(2, requires_grad=True)], fused=True)
    assert type(forced.update).__name__ == "TritonAdamWUpdate"


def test_audit_workloads() -> None:
    """Every set x state width, planned by the launchers' functions; bytes by hand for the LoRA set."""
    workloads = {(w.shape, w.precision): w for w in audit_workloads()}
    assert {p for _, p in workloads} == {"adamw8", "adamw32"}
    lora = workloads["lora-r8.llama2-7b", "adamw8"]
    n = 32768
    assert (lora.m, lora.n, lora.op) == (128, n, "adamw") and len(lora.launches) == 128
    assert lora.bytes == 128 * (3 * 4 * n + 2 * 2 * (n + 4 * n // 256)) == 128 * (3 * 4 * n + 2 * state_bytes(n, 8))
    assert workloads["lora-r8.llama2-7b", "adamw32"].bytes == 128 * (12 + 16) * n
    big = workloads["param-16.7M", "adamw8"]
    assert [launch.args["RAGGED"] for launch in big.launches] == [False, True]
    assert all(launch.args["p_ptr"].device.type == "meta" for w in workloads.values() for launch in w.launches)
    bf16 = workloads["param-4096x4096.bf16", "adamw8"]
    assert bf16.bytes == 3 * 2 * 4096**2 + 2 * state_bytes(4096**2, 8)


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
