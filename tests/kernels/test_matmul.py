"""kernels.matmul (gemv and gemm paths, the LoRA epilogue) against its plain-torch reference.

Tolerances are derived, not tuned (STYLE §5): max|kernel − ref32| ≤ 2·max|ref_lowp − ref32| + atol·max|ref32|,
ref32 the reference in fp32 on the same dequantized W, ref_lowp the reference in the activation dtype.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

import quant
from kernels.device import DEVICE
from kernels.matmul import (
    CONFIGS,
    GEMV_MAX_M,
    LORA_MAX_FUSED_R,
    LoRAEpilogue,
    audit_cases,
    lora_matmul_ref,
    matmul,
    matmul_ref,
    plan,
)

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
# tl.dot takes fp32 operands as tf32 (10-bit mantissa) on a GPU; the interpreter multiplies them exactly
ATOL = {"fp32": 4e-3 if DEVICE.type == "cuda" else 1e-5, "fp16": 1e-3, "bf16": 4e-3}
WEIGHTS = ("nf4", "nf4dq", "fp4", "fp4dq", "int8", "w-fp16", "w-bf16", "w-fp32")


@dataclass(frozen=True)
class Case:
    m: int
    n: int
    k: int
    weight: str  # a quantized format (dq = double quant) or w-<dtype> for a dense W
    act: str
    bias: bool = False
    rank: int = 0  # 0: no LoRA epilogue
    xa: bool = False  # return_xa

    @property
    def id(self) -> str:
        lora = f"-r{self.rank}{'-xa' if self.xa else ''}" if self.rank else ""
        return f"M{self.m}-N{self.n}-K{self.k}-{self.weight}-{self.act}{'-bias' if self.bias else ''}{lora}"


def _weight(name: str, n: int, k: int, blocksize: int = 64) -> quant.QuantizedTensor | torch.Tensor:
    w = torch.randn(n, k, device=DEVICE) / k**0.5
    if name.startswith("w-"):
        return w.to(DTYPES[name[2:]])
    if name.startswith("int8"):
        return quant.quantize(w, "int8", int8_scheme="tensor" if name == "int8-tensor" else "row")
    return quant.quantize(w, name[:3], blocksize=blocksize, double_quant=name.endswith("dq"))


def _close(name: str, got: torch.Tensor, lowp: torch.Tensor, ref32: torch.Tensor, act: str) -> None:
    got, lowp, ref32 = got.double(), lowp.double(), ref32.double()
    bound = 2 * (lowp - ref32).abs().max() + ATOL[act] * max(ref32.abs().max().item(), 1.0)
    err = (got - ref32).abs().max()
    assert err <= bound, f"{name}: max|kernel - ref32| = {err:.3g} > {bound:.3g}"


def _check(case: Case, w: quant.QuantizedTensor | torch.Tensor | None = None) -> None:
    dtype = DTYPES[case.act]
    w = _weight(case.weight, case.n, case.k) if w is None else w
    x = torch.randn(case.m, case.k, device=DEVICE).to(dtype)
    bias = torch.randn(case.n, device=DEVICE).to(dtype) if case.bias else None
    if not case.rank:
        y = matmul(x, w, bias=bias)
        assert y.dtype == dtype and y.shape == (case.m, case.n)
        _close("y", y, matmul_ref(x, w, bias), matmul_ref(x, w, bias, upcast=True), case.act)
        return
    r = case.rank
    lora = LoRAEpilogue(
        a=(torch.randn(r, case.k, device=DEVICE) / case.k**0.5).to(dtype),
        b=(torch.randn(case.n, r, device=DEVICE) / r**0.5).to(dtype),
        scale=16.0 / r,
    )
    y_lp, xa_lp = lora_matmul_ref(x, w, lora, bias)
    y32, xa32 = lora_matmul_ref(x, w, lora, bias, upcast=True)
    if case.xa:
        y, xa = matmul(x, w, bias=bias, lora=lora, return_xa=True)
        assert xa.dtype == dtype and xa.shape == (case.m, r)
        _close("xa", xa, xa_lp, xa32, case.act)
    else:
        y = matmul(x, w, bias=bias, lora=lora)
    assert y.dtype == dtype and y.shape == (case.m, case.n)
    _close("y", y, y_lp, y32, case.act)


def _cases() -> list[Case]:
    """Every M x weight format x activation dtype, with N, K and bias rotating (N ragged, K 64 or 128)."""
    out = []
    for i, (m, weight, act) in enumerate((m, w, a) for m in (1, 3, 16, 17, 64) for w in WEIGHTS for a in DTYPES):
        out.append(Case(m, (40, 72)[i % 2], (64, 128)[(i // 2) % 2], weight, act, bias=(i // 3) % 2 == 0))
    return out


def _lora_cases() -> list[Case]:
    """Every rank x activation dtype x a quantized and a dense W, with M, N, bias and return_xa rotating."""
    out = []
    for i, (r, act, weight) in enumerate(
        (r, a, w) for r in (1, 8, 16) for a in DTYPES for w in ("nf4dq", "int8", "w-bf16")
    ):
        m = (1, 3, 16, 17, 64)[i % 5]
        out.append(Case(m, (40, 72)[i % 2], 128, weight, act, bias=i % 3 == 0, rank=r, xa=i % 2 == 0))
    return out


@pytest.mark.parametrize("case", _cases(), ids=lambda c: c.id)
def test_matches_reference(case: Case) -> None:
    _check(case)


@pytest.mark.parametrize("case", _lora_cases(), ids=lambda c: c.id)
def test_lora_epilogue(case: Case) -> None:
    _check(case)


@pytest.mark.parametrize(
    "case",
    [Case(5, 40, 75, "nf4", "bf16", bias=True, rank=8, xa=True), Case(3, 40, 75, "int8-tensor", "fp16"),
     Case(20, 72, 75, "fp4dq", "fp32", bias=True), Case(2, 40, 64, "w-fp32", "fp16", rank=80, xa=True)],
    ids=lambda c: c.id,
)  # fmt: skip
def test_odd_k_per_tensor_int8_and_unfused_rank(case: Case) -> None:
    """Any K (a 4-bit row may start mid-byte), per-tensor int8, and a rank past the fused epilogue."""
    _check(case)


def test_int8_outlier_columns_and_blocksizes() -> None:
    w = torch.randn(40, 128, device=DEVICE)
    w[:, 5] *= 20
    _check(Case(3, 40, 128, "int8", "fp32"), quant.quantize(w, "int8", outlier_threshold=6.0))
    _check(Case(17, 40, 128, "int8", "bf16", bias=True), quant.quantize(w, "int8", outlier_threshold=6.0))
    for blocksize in (32, 128):
        _check(Case(3, 40, 128, "nf4dq", "fp16"), _weight("nf4dq", 40, 128, blocksize))


def test_leading_dims_and_strided_x() -> None:
    w = _weight("nf4dq", 40, 64)
    x = torch.randn(2, 3, 128, device=DEVICE, dtype=torch.float16)[..., ::2]  # (2, 3, 64), stride 2 along K
    y = matmul(x, w)
    assert y.shape == (2, 3, 40)
    torch.testing.assert_close(y, matmul(x.contiguous(), w), rtol=0, atol=0)
    a, b = (torch.randn(shape, device=DEVICE, dtype=torch.float16) for shape in ((4, 64), (40, 4)))
    lora = LoRAEpilogue(a, b, 0.5)
    y, xa = matmul(x, w, lora=lora, return_xa=True)
    assert y.shape == (2, 3, 40) and xa.shape == (2, 3, 4)


def test_plan_picks_paths_and_split_k() -> None:
    w = _weight("nf4", 40, 128)
    assert plan(GEMV_MAX_M, 40, 128, w).path == "gemv"
    assert plan(GEMV_MAX_M + 1, 40, 128, w).path == "gemm"
    assert plan(1, 40, 128, w, rank=8).path == "gemm"  # the LoRA epilogue lives in the gemm kernel
    small_n = plan(1, 40, 4096, w)
    assert small_n.split_k > 1 and small_n.config.endswith(f"split{small_n.split_k}")
    assert plan(1, 40, 128, w).tiles == CONFIGS["gemv"]["narrow"]
    assert plan(64, 40, 128, w, rank=32).config.startswith("lora-wide")
    assert plan(1, 40, 64, w).split_k == 1  # one K tile: nothing to split
    assert LORA_MAX_FUSED_R >= 16


def test_plan_on_a_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """The rule a compiled run follows (the interpreter always takes the first config)."""
    from kernels.matmul import configs

    monkeypatch.setattr(configs, "INTERPRET", False)
    nf4 = _weight("nf4", 8, 64)
    assert plan(1, 11008, 4096, nf4).config.startswith("wide-")
    assert plan(1, 4096, 4096, nf4).split_k == 4  # 64 N tiles x 4 splits: about two waves of 132 SMs
    assert plan(1, 1024, 4096, nf4).split_k == 16  # the most splits
    assert plan(1, 32768, 4096, nf4).split_k == 1  # 256 wide N tiles fill two waves alone
    assert plan(2048, 4096, 4096, nf4).config.startswith("large-")
    assert plan(2048, 4096, 4096, nf4, rank=64).config.startswith("lora-wide-")
    assert plan(64, 4096, 4096, nf4).config.startswith("small-")
    odd = _weight("nf4", 8, 96)  # K = 96 is not a multiple of the blocksize 64
    assert plan(1, 11008, 96, odd).config.startswith("narrow-")


def test_bad_inputs() -> None:
    w = _weight("nf4", 40, 64)
    x = torch.randn(3, 64, device=DEVICE)
    with pytest.raises(ValueError, match=r"x: dtype torch.float64; expected"):
        matmul(x.double(), w)
    with pytest.raises(ValueError, match=r"w: shape \(40, 64\); expected \(N, 63\)"):
        matmul(x[:, :63], w)
    with pytest.raises(ValueError, match=r"w: QuantizedTensor format 'fp16'"):
        matmul(x, quant.quantize(torch.randn(40, 64), "fp16"))
    with pytest.raises(ValueError, match=r"w: torch.int32; expected an fp16\|bf16\|fp32 tensor"):
        matmul(x, torch.zeros(40, 64, dtype=torch.int32))
    with pytest.raises(ValueError, match=r"bias: torch.float32 \(41,\); expected a float tensor \(40,\)"):
        matmul(x, w, bias=torch.randn(41))
    a, b = torch.randn(4, 64, device=DEVICE), torch.randn(40, 4, device=DEVICE)
    with pytest.raises(ValueError, match=r"lora: a \(4, 64\), b \(41, 4\); expected \(R, 64\) and \(40, R\)"):
        matmul(x, w, lora=LoRAEpilogue(a, torch.randn(41, 4, device=DEVICE), 1.0))
    with pytest.raises(ValueError, match=r"lora: a torch.float16, b torch.float32; expected x's dtype"):
        matmul(x, w, lora=LoRAEpilogue(a.half(), b, 1.0))
    with pytest.raises(ValueError, match=r"return_xa: True needs lora"):
        matmul(x, w, return_xa=True)


@pytest.mark.parametrize("weight", ["nf4", "w-fp32"])
def test_bias_and_lora_on_another_device(weight: str) -> None:
    """bias, lora.a and lora.b must be on x's device: the check names the argument and both devices (a tensor
    on the meta device is on another device on every machine, and no kernel runs)."""
    w = _weight(weight, 40, 64)
    x = torch.randn(3, 64, device=DEVICE)
    a, b = torch.randn(4, 64, device=DEVICE), torch.randn(40, 4, device=DEVICE)
    meta = torch.device("meta")
    expected = rf"expected x's device {DEVICE}"
    with pytest.raises(ValueError, match=rf"bias: device meta; {expected}"):
        matmul(x, w, bias=torch.empty(40, device=meta))
    with pytest.raises(ValueError, match=rf"lora\.a: device meta; {expected}"):
        matmul(x, w, lora=LoRAEpilogue(a.to(meta), b, 1.0))
    with pytest.raises(ValueError, match=rf"lora\.b: device meta; {expected}"):
        matmul(x, w, bias=torch.zeros(40, device=DEVICE), lora=LoRAEpilogue(a, b.to(meta), 1.0), return_xa=True)
    y = matmul(x, w, bias=torch.zeros(40, device=DEVICE), lora=LoRAEpilogue(a, b, 1.0))  # all on one device: runs
    assert isinstance(y, torch.Tensor) and y.device == x.device and y.shape == (3, 40)


def test_audit_cases_name_every_argument() -> None:
    import inspect

    cases = audit_cases()
    assert len({(c.kernel, c.config) for c in cases}) == len(cases)
    for c in cases:
        params = inspect.signature(c.kernel.fn).parameters
        assert list(c.signature) == list(params)
        assert set(c.constexprs) == {n for n, p in params.items() if "constexpr" in str(p.annotation)}


GPU_SHAPES = [(1, 4096, 4096), (1, 11008, 4096), (16, 4096, 11008), (333, 1000, 4096), (2048, 4096, 4096)]


@pytest.mark.gpu
@pytest.mark.parametrize("weight", WEIGHTS)
@pytest.mark.parametrize("act", DTYPES)
@pytest.mark.parametrize("shape", GPU_SHAPES, ids=lambda s: "M{}-N{}-K{}".format(*s))
def test_large(shape: tuple[int, int, int], weight: str, act: str) -> None:
    m, n, k = shape
    _check(Case(m, n, k, weight, act, bias=True))
    _check(Case(m, n, k, weight, act, bias=True, rank=16, xa=True))


def test_bf16_dot_shim(monkeypatch: pytest.MonkeyPatch) -> None:
    """The conftest shim makes a bf16 tl.dot match torch under the interpreter; without it, it does not."""
    import triton
    import triton.language as tl

    from kernels.device import INTERPRET

    if not INTERPRET:
        pytest.skip("the shim only exists under the interpreter")

    @triton.jit
    def _dot_kernel(a_ptr, b_ptr, c_ptr, BLOCK: tl.constexpr):
        offs = tl.arange(0, BLOCK)
        a = tl.load(a_ptr + offs[:, None] * BLOCK + offs[None, :])
        b = tl.load(b_ptr + offs[:, None] * BLOCK + offs[None, :])
        tl.store(c_ptr + offs[:, None] * BLOCK + offs[None, :], tl.dot(a, b))

    a, b = (torch.randn(16, 16).bfloat16() for _ in range(2))
    want = a.float() @ b.float()
    c = torch.empty(16, 16)
    _dot_kernel[(1,)](a, b, c, BLOCK=16)
    torch.testing.assert_close(c, want, rtol=1e-5, atol=1e-5)
    monkeypatch.undo()  # the interpreter as shipped
    _dot_kernel[(1,)](a, b, c, BLOCK=16)
    assert not torch.allclose(c, want, rtol=1e-2, atol=1e-2)
