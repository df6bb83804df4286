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
    GEMM_MAX_M,
    GEMV_MAX_M,
    LORA_MAX_FUSED_R,
    MIN_PROGRAMS,
    LoRAEpilogue,
    lora_matmul_ref,
    matmul,
    matmul_ref,
    plan,
    prepare,
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


def test_plan_rule() -> None:
    """The written rule (kernels/matmul/configs.py): gemv up to GEMV_MAX_M rows (LoRA included) when W's rows are
    block-aligned, the fused gemm up to GEMM_MAX_M, then dequantize once + torch.matmul (cuBLAS), or torch alone
    for a dense W; a 4-bit W whose rows are not block-aligned always takes the gemm (per-element decode)."""
    w = _weight("nf4", 40, 128)
    dense = _weight("w-bf16", 40, 128)
    int8 = _weight("int8", 40, 128)
    assert plan(1, 40, 128, w).path == plan(GEMV_MAX_M, 40, 128, w).path == "gemv"
    assert plan(1, 40, 128, w, rank=8).path == "gemv"  # the LoRA epilogue lives in the gemv kernel too
    for weight, kind in ((w, "4bit"), (int8, "int8"), (dense, "dense")):
        assert plan(GEMV_MAX_M + 1, 40, 128, weight).path == plan(GEMM_MAX_M[kind], 40, 128, weight).path == "gemm"
    assert plan(GEMM_MAX_M["4bit"] + 1, 40, 128, w).path == "dequant"
    assert plan(GEMM_MAX_M["int8"] + 1, 40, 128, int8).path == "dequant"
    assert plan(GEMM_MAX_M["dense"] + 1, 40, 128, dense).path == "torch"
    assert GEMM_MAX_M["4bit"] < GEMM_MAX_M["int8"]  # a 4-bit tile decode costs more than an int8 one
    odd = _weight("nf4", 8, 96)  # K = 96 is not a multiple of the blocksize 64
    assert plan(1, 8, 96, odd).path == plan(4096, 8, 96, odd).path == "gemm"
    assert plan(64, 40, 128, w, rank=32).name.startswith("lora-wide")
    assert LORA_MAX_FUSED_R >= 16


def test_plan_on_a_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """The compiled run's gemv fills >= two waves of 132 SMs with programs of at most 16 rows, down to 1 row."""
    from kernels.matmul import configs

    monkeypatch.setattr(configs, "INTERPRET", False)
    nf4 = _weight("nf4", 8, 64)
    for n, k in ((4096, 4096), (4096, 11008), (1024, 4096), (1024, 8192), (8192, 28672), (28672, 8192)):
        p = plan(1, n, k, nf4)
        assert p.path == "gemv" and (n + p.block_n - 1) // p.block_n >= MIN_PROGRAMS, (n, k, p)
        assert p.block_n == 16 or (n + 2 * p.block_n - 1) // (2 * p.block_n) < MIN_PROGRAMS  # the largest such
        assert p.num_warps == 1 and p.step * p.block_n >= 16 * 32  # each thread loads at least 16 bytes a step
    int8 = _weight("int8", 8, 64)
    assert plan(200, 4096, 4096, int8).name.startswith("large-")
    assert plan(200, 4096, 4096, int8, rank=64).name.startswith("lora-wide-")
    assert plan(200, 4096, 4096, nf4).path == "dequant"
    assert plan(64, 4096, 4096, nf4).name.startswith("small-n16-")  # 64 x 16 tiles: 256 programs, then 1 M tile
    assert plan(64, 16384, 4096, nf4).name.startswith("small-n32-")  # 256 tiles of 64 are just short of 264
    assert plan(64, 32768, 4096, nf4).name.startswith("small-BM64-BN64")  # 512 tiles of 64 already


@pytest.mark.parametrize("weight", ["nf4dq", "int8", "w-bf16"])
def test_large_m_dequantize_then_torch(weight: str) -> None:
    """Past GEMM_MAX_M the product runs in torch on W dequantized by kernels.dequant, bias and LoRA included."""
    m = max(GEMM_MAX_M.values()) + 3
    _check(Case(m, 40, 128, weight, "fp32", bias=True))
    _check(Case(m, 40, 128, weight, "bf16", bias=True, rank=8, xa=True))


@pytest.mark.parametrize("weight", ["nf4dq", "int8", "w-fp16"])
def test_empty_dimensions(weight: str) -> None:
    """M = 0 or N = 0: an empty y; K = 0: y = bias (or zeros) and xa = 0 (an empty sum)."""
    w = _weight(weight, 40, 64)
    assert matmul(torch.randn(0, 64, device=DEVICE), w).shape == (0, 40)
    assert matmul(torch.randn(2, 0, 64, device=DEVICE), w).shape == (2, 0, 40)
    empty_n = torch.randn(0, 64, device=DEVICE)
    assert matmul(torch.randn(3, 64, device=DEVICE), empty_n).shape == (3, 0)
    bias = torch.randn(40, device=DEVICE)
    y = matmul(torch.randn(3, 0, device=DEVICE), torch.randn(40, 0, device=DEVICE), bias=bias)
    torch.testing.assert_close(y, bias.expand(3, 40), rtol=0, atol=0)
    a, b = torch.randn(4, 0, device=DEVICE), torch.randn(40, 4, device=DEVICE)
    y, xa = matmul(torch.randn(3, 0, device=DEVICE), torch.randn(40, 0, device=DEVICE), lora=LoRAEpilogue(a, b, 1.0),
                   return_xa=True)  # fmt: skip
    assert not y.any() and not xa.any() and xa.shape == (3, 4)


def test_audit_builds_the_launches_that_run() -> None:
    """kernels.audit compiles what `prepare` builds on meta tensors: the same kernels, grids, names and arguments
    (tensor arguments alike in dtype and shape) as a real call of the same shape."""
    from kernels.matmul.audit import meta_weight

    for precision, m in (("nf4dq", 1), ("int8", 4), ("bf16", 40), ("fp4", 300)):
        real = _weight({"bf16": "w-bf16"}.get(precision, precision), 72, 128)
        x = torch.randn(m, 128, device=DEVICE).bfloat16()
        got = prepare(x.to("meta"), meta_weight(precision, 72, 128)).launches
        want = prepare(x, real).launches
        assert [(g.kernel_name, g.grid, g.name) for g in got] == [(w.kernel_name, w.grid, w.name) for w in want]
        for g, w in zip(got, want, strict=True):
            assert g.args.keys() == w.args.keys()
            for key, value in w.args.items():
                if isinstance(value, torch.Tensor):
                    assert (g.args[key].dtype, g.args[key].shape) == (value.dtype, value.shape), key
                elif key != "dq_offset":
                    assert g.args[key] == value, key


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


GPU_SHAPES = [(1, 4096, 4096), (1, 11008, 4096), (16, 4096, 11008), (333, 1000, 4096), (2048, 4096, 4096)]


@pytest.mark.gpu
@pytest.mark.parametrize("weight", WEIGHTS)
@pytest.mark.parametrize("act", DTYPES)
@pytest.mark.parametrize("shape", GPU_SHAPES, ids=lambda s: "M{}-N{}-K{}".format(*s))
def test_large(shape: tuple[int, int, int], weight: str, act: str) -> None:
    m, n, k = shape
    _check(Case(m, n, k, weight, act, bias=True))
    _check(Case(m, n, k, weight, act, bias=True, rank=16, xa=True))
