"""LoRALinear's state dict (the quantized base included) through safetensors, and the peft interop: LoRA layers
converted both ways (dense and bitsandbytes 4-bit bases), adapters saved in peft's format and loaded back."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

import quant
from kernels.device import DEVICE
from kernels.lora import LoRALinear
from kernels.lora.interop import CONFIG_NAME, WEIGHTS_NAME, from_peft, load_adapters, save_adapters, to_peft

peft = pytest.importorskip("peft")
safetensors_torch = pytest.importorskip("safetensors.torch")

K, N = 128, 96  # K a multiple of the NF4 blocksize (bitsandbytes' layers need whole blocks a row)


def _weight(seed: int, n: int = N, k: int = K) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(n, k, generator=gen) / k**0.5).to(DEVICE)


def _layer(base: str, seed: int) -> LoRALinear:
    """A LoRALinear on base "dense", "nf4" (no double quant), "nf4-dq", "int8" or "int8-outliers", B random."""
    w = _weight(seed)
    if base == "int8-outliers":
        w[:, 5] *= 200.0  # one outlier column
    qts = {
        "dense": w,
        "nf4": quant.quantize(w, "nf4", 64),
        "nf4-dq": quant.quantize(w, "nf4", 64, double_quant=True),
        "int8": quant.quantize(w, "int8"),
        "int8-outliers": quant.quantize(w, "int8", outlier_threshold=6.0),
    }
    layer = LoRALinear(qts[base], torch.randn(N, device=DEVICE), torch.float32)
    layer.add_adapter("default", 8, 16)
    with torch.no_grad():
        layer.lora_B["default"].normal_()
    return layer


def _same_quantized(got: quant.QuantizedTensor, want: quant.QuantizedTensor) -> None:
    meta = ("fmt", "shape", "dtype", "blocksize", "double_quant")
    assert [getattr(got, k) for k in meta] == [getattr(want, k) for k in meta]
    for key in ("data", "absmax", "code", "outlier_cols", "outliers"):
        g, w = getattr(got, key), getattr(want, key)
        assert (g is None) == (w is None), key
        assert g is None or torch.equal(g, w), key
    if want.state2 is not None:
        assert got.state2 is not None
        assert got.state2.offset == want.state2.offset and got.state2.blocksize == want.state2.blocksize
        for key in ("data", "absmax", "code"):
            assert torch.equal(getattr(got.state2, key), getattr(want.state2, key)), f"state2.{key}"


@pytest.mark.parametrize("base", ["nf4-dq", "nf4", "int8", "int8-outliers", "dense"])
def test_state_dict_round_trips_through_safetensors(base: str, tmp_path: Path) -> None:
    saved = _layer(base, seed=1)
    if base == "int8-outliers":
        assert saved.quantized is not None and saved.quantized.outliers is not None
    path = tmp_path / "layer.safetensors"
    safetensors_torch.save_file({k: v.cpu() for k, v in saved.state_dict().items()}, str(path))
    loaded = _layer(base, seed=2)  # another base and other adapters: everything must be overwritten
    loaded.load_state_dict(safetensors_torch.load_file(str(path)))
    if base == "dense":
        assert loaded.quantized is None and torch.equal(loaded.weight, saved.weight)
    else:
        assert saved.quantized is not None and loaded.quantized is not None
        _same_quantized(loaded.quantized, saved.quantized)
        assert loaded.quantized.device == DEVICE
    for name in ("bias", "lora_A.default", "lora_B.default"):
        assert torch.equal(loaded.get_parameter(name) if "lora" in name else loaded.bias, saved.state_dict()[name])
    x = torch.randn(3, K, device=DEVICE)
    assert torch.equal(loaded(x), saved(x))


def test_state_dict_names_the_quantized_parts() -> None:
    keys = set(_layer("nf4-dq", 0).state_dict())
    parts = {"fmt", "dtype", "shape", "blocksize", "data", "code", "state2.data", "state2.absmax", "state2.code"}
    assert {f"quantized.{p}" for p in (*parts, "state2.offset", "state2.blocksize")} <= keys
    assert "quantized.absmax" not in keys and "weight" not in keys  # double quant holds the absmax


def test_load_state_dict_switches_base_and_refuses_bad_input() -> None:
    dense, nf4 = _layer("dense", 0), _layer("nf4-dq", 1)
    dense.load_state_dict(nf4.state_dict())  # the state dict decides the base
    assert dense.quantized is not None and dense.weight is None
    nf4.load_state_dict(_layer("dense", 3).state_dict())
    assert nf4.quantized is None and torch.equal(nf4.weight, _layer("dense", 3).weight)
    wrong_shape = LoRALinear(quant.quantize(_weight(0, 64, K), "nf4", 64), None, torch.float32)
    wrong_shape.add_adapter("default", 8, 16)
    with pytest.raises(RuntimeError, match=r"quantized.shape: \(96, 128\); expected \(64, 128\)"):
        wrong_shape.load_state_dict(_layer("nf4", 0).state_dict(), strict=False)
    with pytest.raises(RuntimeError, match=r"Missing key\(s\).*quantized.data"):
        _layer("nf4", 0).load_state_dict({k: v for k, v in _layer("nf4", 1).state_dict().items() if "quant" not in k})
    merged = _layer("nf4-dq", 0)
    merged.merge()
    with pytest.raises(RuntimeError, match="cannot load into a merged LoRALinear; unmerge"):
        merged.load_state_dict(_layer("nf4-dq", 1).state_dict())
    bad = _layer("nf4", 1).state_dict()
    bad["quantized.dtype"] = torch.tensor(list(b"float7"), dtype=torch.uint8)
    with pytest.raises(RuntimeError, match="dtype: 'float7'; expected a torch dtype name"):
        _layer("nf4", 0).load_state_dict(bad)


# ----- peft -----------------------------------------------------------------------------------------------------


class _Block(nn.Module):
    def __init__(self, seed: int) -> None:
        super().__init__()
        self.up = nn.Linear(K, N, bias=True)
        self.down = nn.Linear(N, K, bias=False)
        with torch.no_grad():
            self.up.weight.copy_(_weight(seed, N, K))
            self.down.weight.copy_(_weight(seed + 1, K, N))
        self.to(DEVICE)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(torch.relu(self.up(x)))


def _bnb_block(seed: int) -> nn.Module:
    """_Block with `up` a bitsandbytes Linear4bit (NF4 + double quant, quantized by bitsandbytes)."""
    bnb = pytest.importorskip("bitsandbytes")
    block = _Block(seed)
    up = bnb.nn.Linear4bit(K, N, bias=True, compute_dtype=torch.float32, quant_type="nf4", quant_storage=torch.uint8)
    up.weight = bnb.nn.Params4bit(block.up.weight.data.cpu(), requires_grad=False, quant_type="nf4", blocksize=64)
    up.bias = nn.Parameter(block.up.bias.data.cpu(), requires_grad=False)
    block.up = up.to(DEVICE)  # quantizes
    return block


def _peft_model(block: nn.Module) -> object:
    config = peft.LoraConfig(r=8, lora_alpha=16, target_modules=["up", "down"], rank_pattern={"down": 4})
    model = peft.get_peft_model(block, config)
    model.add_adapter("other", peft.LoraConfig(r=2, lora_alpha=3, target_modules=["up"], use_rslora=True))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.normal_()
    return model


@pytest.mark.parametrize("base", ["dense", "bnb-nf4"])
def test_peft_layers_convert_both_ways_exactly(base: str) -> None:
    model = _peft_model(_Block(0) if base == "dense" else _bnb_block(0))
    inner = model.base_model.model
    want = {
        (path, n): (m.lora_A[n].weight.detach().clone(), m.lora_B[n].weight.detach().clone(), m.scaling[n])
        for path, m in inner.named_modules()
        if hasattr(m, "lora_A") and hasattr(m, "scaling")
        for n in m.lora_A
    }
    base_up = inner.up.get_base_layer().weight
    converted = from_peft(model)
    assert isinstance(converted.up, LoRALinear) and isinstance(converted.down, LoRALinear)
    assert converted.up.adapters == ["default", "other"] and converted.down.adapters == ["default"]
    for (path, n), (a, b, scale) in want.items():
        layer = converted.get_submodule(path)
        assert torch.equal(layer.lora_A[n], a) and torch.equal(layer.lora_B[n], b)
        assert layer.configs[n].scale == scale
    assert converted.down.configs["default"].rank == 4 and converted.up.configs["other"].rslora
    if base == "dense":  # the base is shared, not copied
        assert converted.up.weight.data_ptr() == base_up.data_ptr()
    else:
        assert converted.up.quantized is not None and converted.up.quantized.data.data_ptr() == base_up.data_ptr()
    x = torch.randn(4, K, device=DEVICE)
    y = converted(x)
    ref64, ref32 = _block_ref(converted, x, torch.float64), _block_ref(converted, x, torch.float32)
    back = to_peft(converted)
    inner = back.base_model.model
    for (path, n), (a, b, scale) in want.items():
        layer = inner.get_submodule(path)
        assert torch.equal(layer.lora_A[n].weight, a) and torch.equal(layer.lora_B[n].weight, b)
        assert layer.scaling[n] == scale
    assert back.active_adapters == ["default"]
    # both stacks compute the same function in fp32 (sums in their own orders): each within twice plain torch's
    # fp32 error of the fp64 result (STYLE §5)
    tol = 2 * (ref32.double() - ref64).abs().max().item()
    for got in (y, back(x)):
        assert (got.double() - ref64).abs().max().item() <= tol


def _block_ref(block: nn.Module, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """_Block's forward in plain torch at `dtype` from its LoRALinear layers' base, bias and active adapter."""

    def linear(layer: LoRALinear, h: torch.Tensor) -> torch.Tensor:
        ad = layer.adapter()
        w = layer.base_weight().to(dtype)
        y = h @ w.T + ad.scale * (h @ ad.a.detach().to(dtype).T) @ ad.b.detach().to(dtype).T
        return y if layer.bias is None else y + layer.bias.to(dtype)

    return linear(block.down, torch.relu(linear(block.up, x.to(dtype)))).detach()


def test_peft_conversion_refuses_what_it_cannot_carry() -> None:
    dora = peft.get_peft_model(_Block(0), peft.LoraConfig(r=4, target_modules=["up"], use_dora=True))
    with pytest.raises(ValueError, match="up: a peft LoRA layer with a peft variant such as DoRA"):
        from_peft(dora)
    block = _Block(0)
    block.up = LoRALinear.from_linear(block.up, 4, 8, quant="int8")
    with pytest.raises(ValueError, match="up: a int8 base; peft's layers take a dense or bitsandbytes 4-bit base"):
        to_peft(block)
    with pytest.raises(ValueError, match="holds no LoRALinear"):
        to_peft(_Block(0))
    block = _Block(0)
    block.up = LoRALinear.from_linear(block.up, 4, 8, rslora=True)
    block.down = LoRALinear.from_linear(block.down, 4, 8)
    with pytest.raises(ValueError, match=r"'default' has several rslora values \[False, True\]; peft has one"):
        save_adapters(block, "unused")


def test_adapters_saved_in_peft_format_load_in_peft_and_back(tmp_path: Path) -> None:
    ours = _Block(0)
    ours.up = LoRALinear.from_linear(ours.up, 8, 16, quant="nf4")
    ours.down = LoRALinear.from_linear(ours.down, 4, 8)
    for layer in (ours.up, ours.down):
        with torch.no_grad():
            layer.lora_B["default"].normal_()
    folder = save_adapters(ours, tmp_path / "ours")
    config = json.loads((folder / CONFIG_NAME).read_text())
    assert config["target_modules"] == ["down", "up"] and config["rank_pattern"] == {"down": 4}
    assert config["lora_alpha"] == 16 and config["alpha_pattern"] == {"down": 8}
    theirs = peft.PeftModel.from_pretrained(_Block(0), folder)
    for path in ("up", "down"):
        mine, peft_layer = ours.get_submodule(path), theirs.base_model.model.get_submodule(path)
        assert torch.equal(peft_layer.lora_A["default"].weight, mine.lora_A["default"])
        assert torch.equal(peft_layer.lora_B["default"].weight, mine.lora_B["default"])
        assert peft_layer.scaling["default"] == mine.configs["default"].scale
    theirs.save_pretrained(tmp_path / "peft")  # a folder peft itself wrote loads into plain nn.Linear targets
    loaded = load_adapters(_Block(0), tmp_path / "peft", quant="nf4")
    for path in ("up", "down"):
        mine, back = ours.get_submodule(path), loaded.get_submodule(path)
        assert isinstance(back, LoRALinear) and back.configs["default"] == mine.configs["default"]
        assert torch.equal(back.lora_A["default"], mine.lora_A["default"])
        assert torch.equal(back.lora_B["default"], mine.lora_B["default"])
    assert (tmp_path / "peft" / WEIGHTS_NAME).exists()
    load_adapters(loaded, folder, name="again")  # into LoRALinear targets: a second named adapter
    assert loaded.up.adapters == ["default", "again"] and loaded.up.active_adapter == "again"
