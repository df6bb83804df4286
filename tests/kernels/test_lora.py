"""Fused LoRA/QLoRA (kernels/lora) against the plain-torch reference, on DEVICE (the interpreter on a CPU).

Tolerances are derived, not tuned: max|fused − ref32| ≤ 2·max|ref_lowp − ref32| + atol, with ref32 the
reference in fp32 (on the same dequantized W) and ref_lowp the reference in the activation dtype.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass

import pytest
import torch
from torch import nn

import quant
from kernels.device import DEVICE
from kernels.lora import (
    LoRAAdapter,
    LoRALinear,
    lora_da,
    lora_db,
    lora_dx,
    lora_dyb,
    lora_linear,
    lora_ref,
)
from kernels.lora.bwd import CONFIGS, BwdConfig

# atol relative to max|ref32|: tl.dot takes fp32 operands as tf32 (10-bit mantissa) on a GPU, exactly on a CPU
TF32 = DEVICE.type == "cuda"
ATOL = {torch.float32: 4e-3 if TF32 else 1e-5, torch.float16: 1e-3, torch.bfloat16: 4e-3}


def _assert_fp32_close(got: torch.Tensor | None, want: torch.Tensor | None, rtol: float, atol: float) -> None:
    """assert_close of a fused fp32 result against torch fp32 at (rtol, atol), the interpreter's exact fp32 dot;
    with tf32 operands (a GPU) atol widens to ATOL[fp32] relative to max|want|, as _check allows."""
    assert got is not None and want is not None  # e.g. a .grad
    if TF32:
        atol = max(atol, ATOL[torch.float32] * max(want.abs().max().item(), 1.0))
    torch.testing.assert_close(got, want, rtol=rtol, atol=atol)


@dataclass(frozen=True)
class Case:
    base: str  # fp32 | bf16 (dense W in that dtype) | nf4 | nf4dq | int8 (quantized W)
    rank: int
    m: int
    n: int
    bias: bool
    k: int = 80

    @property
    def dtype(self) -> torch.dtype:
        # activation dtype: quantized bases cover all three (QLoRA computes in bf16)
        return {"fp32": torch.float32, "bf16": torch.bfloat16, "nf4": torch.bfloat16, "nf4dq": torch.float32}.get(
            self.base, torch.float16
        )

    @property
    def id(self) -> str:
        return f"{self.base}-r{self.rank}-M{self.m}-N{self.n}-K{self.k}-{'bias' if self.bias else 'nobias'}"


def _cases() -> list[Case]:
    """Every base x every rank with M, N and bias rotating; then, at rank 16, every M x N x bias x K (K odd
    too: a 4-bit row then starts mid-byte) for a dense and a quantized base."""
    out = []
    for i, (base, rank) in enumerate((b, r) for b in ("fp32", "bf16", "nf4", "nf4dq", "int8") for r in (1, 8, 16, 64)):
        k = 128 if base.startswith("nf4") else 80  # K a multiple of the block size: one 4-bit scale per tile row
        out.append(Case(base, rank, m=(1, 5, 33)[i % 3], n=(40, 72)[(i // 2) % 2], bias=i % 2 == 0, k=k))
    for base in ("bf16", "nf4"):
        for m in (1, 5, 33):
            for n in (40, 72):
                for bias in (False, True):
                    out.append(Case(base, 16, m, n, bias, k=75 if bias else 48))
    return out


GPU_CASES = [
    Case(b, r, m, n, bias, k)
    for b in ("fp32", "bf16", "nf4", "nf4dq", "int8")
    for r in (1, 8, 16, 64, 128, 256)
    for m, n, k in ((1, 4096, 4096), (333, 1000, 4104), (2048, 4096, 4096))
    for bias in (False, True)
]


def _base(case: Case, weight: torch.Tensor) -> quant.QuantizedTensor | torch.Tensor:
    if case.base in ("nf4", "nf4dq", "fp4-b32", "nf4-b128"):
        fmt, blocksize = {"fp4-b32": ("fp4", 32), "nf4-b128": ("nf4", 128)}.get(case.base, ("nf4", 64))
        return quant.quantize(weight, fmt, blocksize=blocksize, double_quant=case.base == "nf4dq")
    if case.base in ("int8", "int8-tensor"):
        return quant.quantize(weight, "int8", int8_scheme="tensor" if case.base == "int8-tensor" else "row")
    return weight.to(case.dtype)


def _make(case: Case, dropout: float = 0.0) -> tuple[dict[str, torch.Tensor], quant.QuantizedTensor | torch.Tensor]:
    g = torch.Generator().manual_seed(case.rank * 1000 + case.m * 10 + case.n)
    k, n, r = case.k, case.n, case.rank
    weight = torch.randn(n, k, generator=g) / math.sqrt(k)
    t = {
        "x": torch.randn(3, case.m, k, generator=g)[0],  # a slice: x need not own its storage
        "a": torch.randn(r, k, generator=g) / math.sqrt(k),
        "b": torch.randn(n, r, generator=g) / math.sqrt(r),
        "dy": torch.randn(case.m, n, generator=g),
    }
    if case.bias:
        t["bias"] = torch.randn(n, generator=g)
    return {name: v.to(DEVICE) for name, v in t.items()}, _base(case, weight.to(DEVICE))


def _run(fn, t: dict[str, torch.Tensor], dtype: torch.dtype, scale: float, p: float = 0.0):
    """Forward and backward of `fn(x, adapter, bias)` in `dtype`: (y, {x, a, b, bias} grads)."""
    leaves = {k: v.detach().to(dtype).requires_grad_() for k, v in t.items() if k != "dy"}
    adapter = LoRAAdapter(leaves["a"], leaves["b"], scale, p)
    y = fn(leaves["x"], adapter, leaves.get("bias"))
    grads = torch.autograd.grad(y, list(leaves.values()), t["dy"].to(y.dtype))
    return y, dict(zip(leaves, grads, strict=True))


def _check(name: str, got: torch.Tensor, lowp: torch.Tensor, ref32: torch.Tensor, dtype: torch.dtype) -> None:
    got, lowp, ref32 = got.double(), lowp.double(), ref32.double()
    bound = 2 * (lowp - ref32).abs().max() + ATOL[dtype] * max(ref32.abs().max().item(), 1.0)
    err = (got - ref32).abs().max()
    assert err <= bound, f"{name}: max|fused - ref32| = {err:.3g} > {bound:.3g}"


def _compare(case: Case, dropout: float = 0.0) -> None:
    t, w = _make(case)
    dtype, scale = case.dtype, 16.0 / case.rank
    keep = (torch.rand(t["x"].shape, generator=torch.Generator().manual_seed(1)) >= dropout).to(DEVICE)
    w32 = w if isinstance(w, quant.QuantizedTensor) else w.float()  # the same W values, in fp32

    def fused(x, ad, bias):
        return lora_linear(x, w, ad, bias=bias, keep_mask=keep if dropout else None)

    def ref(weight):
        return lambda x, ad, bias: lora_ref(x, weight, ad, bias=bias, keep_mask=keep if dropout else None)

    y, grads = _run(fused, t, dtype, scale, dropout)
    y_lp, grads_lp = _run(ref(w), t, dtype, scale, dropout)
    y32, grads32 = _run(ref(w32), t, torch.float32, scale, dropout)
    assert y.dtype == dtype and y.shape == (case.m, case.n)
    _check("y", y, y_lp, y32, dtype)
    for name in grads:
        assert grads[name].dtype == dtype
        _check(f"d{name}", grads[name], grads_lp[name], grads32[name], dtype)


@pytest.mark.parametrize("case", _cases(), ids=lambda c: c.id)
def test_fused_matches_reference(case: Case) -> None:
    _compare(case)


@pytest.mark.parametrize(
    "case",
    [Case("fp4-b32", 8, 5, 40, True), Case("nf4-b128", 16, 33, 72, False), Case("int8-tensor", 8, 5, 40, True)],
    ids=lambda c: c.id,
)
def test_other_base_layouts(case: Case) -> None:
    """FP4, other block sizes, per-tensor int8 (one scale: a zero row stride)."""
    _compare(case)


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c.name)
def test_every_config(config: BwdConfig) -> None:
    """Each config a launcher may pick (the audited list) computes the same gradients: dy B, dx, dA, dB."""
    g = torch.Generator().manual_seed(5)
    dtype = torch.bfloat16 if config.num_stages == 3 else torch.float32
    m, n, k, r = 37, 70, 128, config.block_r + 3  # ragged M, N; two rank tiles; whole 4-bit blocks (a scale a row)
    dy, x = torch.randn(m, n, generator=g).to(DEVICE, dtype), torch.randn(m, k, generator=g).to(DEVICE, dtype)
    a, b = (torch.randn(s, generator=g).to(DEVICE, dtype) / 4 for s in ((r, k), (n, r)))
    w = quant.quantize(torch.randn(n, k, generator=g).to(DEVICE), "nf4", double_quant=True)
    keep = (torch.rand(m, k, generator=g) >= 0.5).to(DEVICE)
    rel = 1e-2 if dtype == torch.bfloat16 or TF32 else 1e-5  # bf16 or tf32 operands: a few units of 2^-8

    def close(got: torch.Tensor, want: torch.Tensor) -> None:
        err, top = (got.float() - want).abs().max().item(), want.abs().max().item()
        assert err <= rel * top, f"max error {err:.3g} > {rel} * {top:.3g}"

    dyb = lora_dyb(dy, b, config=config)
    close(dyb, dy.float() @ b.float())
    dx = lora_dx(dy, w, dyb, a, 0.5, keep_mask=keep, keep_scale=2.0, config=config)
    close(dx, dy.float() @ w.dequantize(dtype).float() + 0.5 * 2.0 * keep * (dyb.to(dtype).float() @ a.float()))
    da = lora_da(dyb, x, 0.5, keep_mask=keep, keep_scale=2.0, config=config)
    close(da, 0.5 * dyb.to(dtype).float().T @ (x.float() * keep * 2.0))
    xa = (x.float() @ a.float().T).to(dtype)
    close(lora_db(dy, xa, 0.5, config=config), 0.5 * dy.float().T @ xa.float())


@pytest.mark.parametrize("case", [Case("fp32", 8, 33, 40, True), Case("nf4", 16, 5, 72, False)], ids=lambda c: c.id)
def test_fused_dropout_matches_reference(case: Case) -> None:
    _compare(case, dropout=0.25)


@pytest.mark.gpu
@pytest.mark.parametrize("case", GPU_CASES, ids=lambda c: c.id)
def test_fused_matches_reference_full(case: Case) -> None:
    _compare(case)


def test_int8_outlier_columns_in_dx() -> None:
    """LLM.int8() outlier columns (kept in fp16 beside zeroed codes) reach dx."""
    g = torch.Generator().manual_seed(3)
    weight = torch.randn(40, 48, generator=g).to(DEVICE)
    weight[:, 7] *= 20
    w = quant.quantize(weight, "int8", outlier_threshold=6.0)
    assert w.outlier_cols is not None and w.outlier_cols.numel()
    dy, a = torch.randn(5, 40, generator=g).to(DEVICE), torch.zeros(16, 48, device=DEVICE)
    dx = lora_dx(dy, w, torch.zeros(5, 16, device=DEVICE), a, 1.0)
    _assert_fp32_close(dx, dy @ w.dequantize(torch.float32), rtol=1e-5, atol=1e-5)


def test_reference_gradcheck_fp64() -> None:
    g = torch.Generator().manual_seed(4)
    x, a, b = (torch.randn(s, generator=g, dtype=torch.float64) for s in ((3, 2, 6), (4, 6), (5, 4)))
    bias = torch.randn(5, generator=g, dtype=torch.float64)
    w = torch.randn(5, 6, generator=g, dtype=torch.float64)
    keep = torch.rand(x.shape, generator=g) >= 0.3
    leaves = [t.requires_grad_() for t in (x, a, b, bias)]

    def f(x, a, b, bias):
        return lora_ref(x, w, LoRAAdapter(a, b, 0.7, 0.3), bias=bias, keep_mask=keep)

    assert torch.autograd.gradcheck(f, leaves)


# ----- the module ------------------------------------------------------------------------------------


def _linear(k: int = 48, n: int = 40, bias: bool = True, dtype: torch.dtype = torch.float32) -> nn.Linear:
    return nn.Linear(k, n, bias=bias).to(DEVICE, dtype)


@pytest.mark.parametrize(("quant_fmt", "bias"), [(None, True), ("nf4", False), ("int8", True)])
def test_starts_equal_to_base_and_only_adapters_train(quant_fmt: str | None, bias: bool) -> None:
    linear = _linear(bias=bias)
    layer = LoRALinear.from_linear(linear, rank=8, alpha=16, quant=quant_fmt)
    x = torch.randn(5, 48, device=DEVICE)
    base = layer.base_weight()
    if quant_fmt is None:
        assert torch.equal(base, linear.weight)
    _assert_fp32_close(layer(x), nn.functional.linear(x, base, linear.bias), rtol=1e-5, atol=1e-5)
    trainable = {name for name, p in layer.named_parameters() if p.requires_grad}
    assert trainable == {"lora_A.default", "lora_B.default"}
    assert not torch.count_nonzero(layer.lora_B["default"])
    assert layer.lora_A["default"].shape == (8, 48) and layer.lora_B["default"].shape == (40, 8)


def test_module_backward_reaches_only_adapters() -> None:
    layer = LoRALinear.from_linear(_linear(), rank=4, alpha=8, quant="nf4")
    with torch.no_grad():
        layer.lora_B["default"].normal_()
    x = torch.randn(2, 3, 48, device=DEVICE, requires_grad=True)
    layer(x).square().sum().backward()
    ad = layer.adapter()
    y_ref = lora_ref(x, layer.quantized, LoRAAdapter(ad.a, ad.b, ad.scale), bias=layer.bias)
    ga, gb, gx = torch.autograd.grad(y_ref.square().sum(), [ad.a, ad.b, x])
    for got, want in ((layer.lora_A["default"].grad, ga), (layer.lora_B["default"].grad, gb), (x.grad, gx)):
        _assert_fp32_close(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("quant_fmt", [None, "nf4"])
def test_merge_unmerge_round_trip(quant_fmt: str | None) -> None:
    layer = LoRALinear.from_linear(_linear(), rank=8, alpha=16, quant=quant_fmt).eval()
    with torch.no_grad():
        layer.lora_B["default"].normal_()
    original = layer.quantized if quant_fmt else layer.weight.clone()
    x = torch.randn(7, 48, device=DEVICE)
    y = layer(x)
    layer.merge()
    assert layer.merged
    ad = layer.adapter()
    w = original.dequantize(torch.float32) if quant_fmt else original
    torch.testing.assert_close(layer.base_weight(), w + ad.scale * (ad.b @ ad.a), rtol=1e-5, atol=1e-5)
    _assert_fp32_close(layer(x), y, rtol=1e-4, atol=1e-4)
    layer.unmerge()
    assert not layer.merged
    if quant_fmt:
        assert layer.quantized is original
    else:
        assert torch.equal(layer.weight, original)
    torch.testing.assert_close(layer(x), y, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("quant_fmt", [None, "nf4", "int8"])
def test_merged_layer_backpropagates_to_x(quant_fmt: str | None, dtype: torch.dtype) -> None:
    """A residual block around a merged layer gets the same upstream gradient as around the unmerged one (peft's
    merged layer is differentiable in x); without the residual, backward() works too."""
    layer = LoRALinear.from_linear(_linear(48, 48).to(dtype), rank=8, alpha=16, quant=quant_fmt).eval()
    with torch.no_grad():
        layer.lora_B["default"].normal_()
    x = torch.randn(5, 48, device=DEVICE, dtype=dtype)
    grads = []
    for merged in (False, True):
        if merged:
            layer.merge()
        xi = x.clone().requires_grad_(True)
        (xi + layer(xi)).float().square().sum().backward()
        grads.append(xi.grad)
    assert grads[1] is not None
    # bf16: W' = W + s B A is rounded to bf16 once when merged; the unmerged path rounds s (x A^T) B^T instead
    tol = 1e-4 if dtype == torch.float32 else 2e-2 * grads[0].float().abs().max().item()
    _assert_fp32_close(grads[1].float(), grads[0].float(), rtol=tol, atol=tol)
    xi = x.clone().requires_grad_(True)
    layer(xi).float().sum().backward()  # the merged layer alone
    assert xi.grad is not None and xi.grad.shape == x.shape
    with torch.no_grad():  # eval / no-grad use: the one fused matmul, no graph
        assert not layer(x).requires_grad


@pytest.mark.parametrize("alpha", [float("inf"), float("nan"), 0.0, -1.0, True, "16"])
def test_alpha_must_be_finite_and_positive(alpha: object) -> None:
    with pytest.raises(ValueError, match=r"alpha: .*; expected a finite number > 0"):
        LoRALinear.from_linear(_linear(), rank=4, alpha=alpha)  # type: ignore[arg-type]


def test_adapter_switching() -> None:
    layer = LoRALinear.from_linear(_linear(), rank=4, alpha=4)
    layer.add_adapter("other", rank=16, alpha=32, init="gaussian", rslora=True)
    assert layer.adapters == ["default", "other"] and layer.active_adapter == "other"
    assert layer.configs["other"].scale == 32 / 4
    with torch.no_grad():
        for name in layer.adapters:
            layer.lora_B[name].normal_()
    x = torch.randn(5, 48, device=DEVICE)
    outs = {}
    for name in layer.adapters:
        layer.set_adapter(name)
        ad = layer.adapter()
        trainable = {n for n, p in layer.named_parameters() if p.requires_grad}
        assert trainable == {f"lora_A.{name}", f"lora_B.{name}"}
        outs[name] = layer(x)
        _assert_fp32_close(outs[name], lora_ref(x, layer.weight, ad, bias=layer.bias), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(outs["default"], outs["other"])


def test_dtype_conversion_follows() -> None:
    layer = LoRALinear.from_linear(_linear(), rank=4, alpha=8, quant="nf4").to(torch.bfloat16)
    assert layer.dtype == torch.bfloat16 and layer.lora_A["default"].dtype == torch.bfloat16
    assert layer(torch.randn(3, 48, device=DEVICE, dtype=torch.bfloat16)).dtype == torch.bfloat16


def test_init_distributions() -> None:
    layer = LoRALinear.from_linear(_linear(k=1024), rank=64, alpha=16)
    layer.add_adapter("g", rank=64, alpha=16, init="gaussian")
    a = layer.lora_A["default"]
    assert a.abs().max() <= 1 / math.sqrt(1024) + 1e-6  # kaiming_uniform(a=sqrt(5)): bound 1/sqrt(fan_in)
    assert abs(layer.lora_A["g"].std().item() - 1 / 64) < 1e-3


def test_dropout_only_in_training() -> None:
    layer = LoRALinear.from_linear(_linear(), rank=4, alpha=8, dropout=0.5).eval()
    with torch.no_grad():
        layer.lora_B["default"].normal_()
    x = torch.randn(4, 48, device=DEVICE)
    ad = layer.adapter()
    no_drop = lora_ref(x, layer.weight, LoRAAdapter(ad.a, ad.b, ad.scale), bias=layer.bias)
    _assert_fp32_close(layer(x), no_drop, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(layer.train()(x), no_drop)


# ----- bad input -------------------------------------------------------------------------------------


def test_bad_input_errors() -> None:
    layer = LoRALinear.from_linear(_linear(), rank=4, alpha=8)
    with pytest.raises(ValueError, match=r"name: adapter 'default' exists"):
        layer.add_adapter("default", 4, 8)
    with pytest.raises(ValueError, match=r"name: 'nope' is not an adapter"):
        layer.set_adapter("nope")
    with pytest.raises(ValueError, match=r"rank: 0; expected an int >= 1"):
        layer.add_adapter("z", 0, 8)
    with pytest.raises(ValueError, match=r"dropout: 1.0; expected 0 <= dropout < 1"):
        layer.add_adapter("z", 4, 8, dropout=1.0)
    with pytest.raises(ValueError, match=r"init: 'xavier'"):
        layer.add_adapter("z", 4, 8, init="xavier")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"quant: 'fp4'; expected None, 'nf4' or 'int8'"):
        LoRALinear.from_linear(_linear(), rank=4, alpha=8, quant="fp4")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"linear: Conv1d"):
        LoRALinear.from_linear(nn.Conv1d(2, 2, 1), rank=4, alpha=8)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"x: torch.float32 \(5, 47\); expected torch.float32 \(..., 48\)"):
        layer(torch.randn(5, 47, device=DEVICE))
    layer.merge()
    with pytest.raises(ValueError, match=r"activate: True while 'default' is merged"):
        layer.add_adapter("second", 4, 8)
    assert layer.adapters == ["default"]
    layer.add_adapter("second", 4, 8, activate=False)
    with pytest.raises(ValueError, match=r"name: cannot switch to 'second' while 'default' is merged"):
        layer.set_adapter("second")

    x, w = torch.randn(3, 48), torch.randn(40, 48)
    ad = LoRAAdapter(torch.randn(4, 48), torch.randn(40, 4), 2.0)
    with pytest.raises(ValueError, match=r"x: shape \(3, 47\); expected \(..., 48\)"):
        lora_linear(x[:, :47], w, ad)
    with pytest.raises(ValueError, match=r"adapter.a: dtype torch.bfloat16; expected x's dtype torch.float32"):
        lora_linear(x, w, LoRAAdapter(ad.a.bfloat16(), ad.b, 2.0))
    with pytest.raises(ValueError, match=r"w: shape \(41, 48\); expected \(40, 48\)"):
        lora_linear(x, torch.randn(41, 48), ad)
    with pytest.raises(ValueError, match=r"w: QuantizedTensor format 'bf16'; expected 'nf4', 'fp4' or 'int8'"):
        lora_linear(x, quant.quantize(w, "bf16"), ad)
    with pytest.raises(ValueError, match=r"bias: shape \(41,\); expected \(40,\)"):
        lora_linear(x, w, ad, bias=torch.randn(41))
    with pytest.raises(ValueError, match=r"adapter.dropout: 1.5; expected 0 <= p < 1"):
        lora_linear(x, w, LoRAAdapter(ad.a, ad.b, 2.0, 1.5))


# ----- peft (optional) and the audit contract --------------------------------------------------------


def test_same_output_as_peft() -> None:
    peft = pytest.importorskip("peft")
    linear = _linear()
    model = nn.Sequential(linear)
    config = peft.LoraConfig(r=8, lora_alpha=16, target_modules=["0"], use_rslora=True)
    peft_model = peft.get_peft_model(model, config)
    peft_layer = peft_model.base_model.model[0]
    with torch.no_grad():
        peft_layer.lora_B["default"].weight.normal_()
    ours = LoRALinear.from_linear(linear, rank=8, alpha=16, rslora=True)
    with torch.no_grad():
        ours.lora_A["default"].copy_(peft_layer.lora_A["default"].weight)
        ours.lora_B["default"].copy_(peft_layer.lora_B["default"].weight)
    x = torch.randn(5, 48, device=DEVICE)
    dy = torch.randn(5, 40, device=DEVICE)
    y_ours, y_peft = ours(x), peft_layer(x)
    _assert_fp32_close(y_ours, y_peft, rtol=1e-5, atol=1e-5)
    y_ours.backward(dy)
    y_peft.backward(dy)
    # the gradients against fp64 (dA = s (dy B)^T x, dB = s dy^T (x A^T)): ours within twice peft's own fp32 error
    # (STYLE §5) plus one fp32 rounding of the largest value, as both sum in their own orders
    a64, b64 = (peft_layer.lora_A["default"].weight.double(), peft_layer.lora_B["default"].weight.double())
    s = peft_layer.scaling["default"]
    want = {"A": s * (dy.double() @ b64).T @ x.double(), "B": s * dy.double().T @ (x.double() @ a64.T)}
    for key, ours_p, peft_p in (("A", ours.lora_A["default"], peft_layer.lora_A["default"].weight),
                                ("B", ours.lora_B["default"], peft_layer.lora_B["default"].weight)):  # fmt: skip
        assert ours_p.grad is not None and peft_p.grad is not None
        ref = want[key].detach()
        tol = 2 * (peft_p.grad.double() - ref).abs().max().item() + 2**-24 * ref.abs().max().item()
        if TF32:
            tol = max(tol, ATOL[torch.float32] * max(ref.abs().max().item(), 1.0))
        assert (ours_p.grad.double() - ref).abs().max().item() <= tol, key


def test_audit_workloads_build_the_backward_launches() -> None:
    """kernels.audit compiles the backward's own launches (dy B, dx, dA, dB) for every M, rank and base; every
    kernel argument is named, and the config the launcher picks for that M and rank is the one audited."""
    from kernels.lora.bwd import AUDIT_BASES, AUDIT_M, AUDIT_RANKS, audit_workloads, pick_config

    loads = audit_workloads()
    assert len(loads) == 2 * len(AUDIT_BASES) * len(AUDIT_M) * len(AUDIT_RANKS)
    for load in loads:
        names = [launch.kernel_name for launch in load.launches]
        assert names == ["_lora_dyb_kernel", "_lora_dx_kernel", "_lora_da_kernel", "_lora_db_kernel"]
        cfg = pick_config(load.m, int(load.op.removeprefix("lora_bwd_r")), torch.bfloat16)
        for launch in load.launches:
            params = inspect.signature(launch.kernel.fn).parameters
            assert set(launch.args) == set(params), launch.name
            assert cfg.name in launch.name
