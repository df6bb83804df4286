"""`LoRALinear` ⇄ peft: convert a model's LoRA layers both ways, and save/load adapters in peft's on-disk format.

    model = from_peft(peft_model)                   # peft LoRA layers (nn.Linear or bnb Linear4bit base) -> LoRALinear
    peft_model = to_peft(model)                     # LoRALinear -> peft LoRA layers (nf4/fp4 base: bnb Linear4bit)
    save_adapters(model, "out")                     # adapter_config.json + adapter_model.safetensors
    PeftModel.from_pretrained(hf_model, "out")      # ... which peft loads; and back:
    load_adapters(hf_model, "out", quant="nf4")     # nn.Linear targets become LoRALinear (base quantized)

Adapter weights and scaling carry over exactly: A (r, K) and B (N, r) are copied (cast to the layer dtype when
they differ), the scale is alpha / r or alpha / sqrt(r) (rsLoRA) on both sides. A 4-bit base is shared, not
copied: `quant.from_bnb` / `quant.to_bnb` read the same packed codes and scales (bitsandbytes' layout is
quant/'s). What has no counterpart is refused with a ValueError: DoRA and other peft variants, LoRA biases,
fan_in_fan_out, merged layers, several active adapters, and (to peft) an int8 base, whose row-wise layout
bitsandbytes' Linear8bitLt does not share. peft, bitsandbytes and safetensors are imported where used.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from kernels.lora.layer import LoRALinear
from quant import QuantizedTensor, from_bnb, to_bnb

__all__ = ["CONFIG_NAME", "WEIGHTS_NAME", "from_peft", "load_adapters", "save_adapters", "to_peft"]

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
_PREFIX = "base_model.model."  # peft's key prefix: PeftModel.base_model (LoraModel).model (the user's model)


def _is_bnb_4bit(module: nn.Module) -> bool:
    try:
        import bitsandbytes as bnb
    except ImportError:
        return False
    return isinstance(module, bnb.nn.Linear4bit)


def _base_of(module: nn.Module, where: str) -> tuple[QuantizedTensor | torch.Tensor, torch.Tensor | None, torch.dtype]:
    """(weight, bias, compute dtype) of an nn.Linear or bitsandbytes Linear4bit, sharing its storage."""
    if _is_bnb_4bit(module):
        weight: Any = module.weight
        if weight.quant_state is None:
            raise ValueError(f"{where}: a Linear4bit whose weight is not quantized yet; move it to its device first")
        qt = from_bnb(weight.data, weight.quant_state)
        dtype = getattr(module, "compute_dtype", None) or qt.dtype
        return qt, module.bias, dtype
    if isinstance(module, nn.Linear):
        return module.weight.detach(), module.bias, module.weight.dtype
    raise ValueError(f"{where}: {type(module).__name__}; expected an nn.Linear or a bitsandbytes Linear4bit base")


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


def _copy_adapter(layer: LoRALinear, name: str, a: torch.Tensor, b: torch.Tensor) -> None:
    with torch.no_grad():
        layer.lora_A[name].copy_(a)
        layer.lora_B[name].copy_(b)


# -- peft -> LoRALinear -----------------------------------------------------------------------------------------


def from_peft(model: nn.Module, dtype: torch.dtype | None = None) -> nn.Module:
    """Replace every peft LoRA layer of `model` (a PeftModel, or a module holding peft LoRA layers) by a LoRALinear
    with the same base (shared), adapters (copied, all of them by name) and active adapter; returns the user's
    model (a PeftModel's `base_model.model`), changed in place. dtype: the layers' compute dtype (default: the base
    layer's weight dtype, or a Linear4bit's compute_dtype).

    Raises:
        ValueError: a layer peft built with a feature LoRALinear lacks (DoRA or another variant, a LoRA bias,
            fan_in_fan_out), a merged layer, several active adapters, or an unsupported base.
    """
    from peft import PeftModel
    from peft.tuners.lora import LoraLayer

    inner = model.base_model.model if isinstance(model, PeftModel) else model
    found = [(name, m) for name, m in inner.named_modules() if isinstance(m, LoraLayer)]
    layers = [(name, _from_peft_layer(module, name, dtype)) for name, module in found]  # all checked first
    for name, layer in layers:
        _replace(inner, name, layer)
    if "peft_config" in vars(inner):  # peft's mark of injected layers, which are gone
        del inner.peft_config
    return inner


def _from_peft_layer(module: Any, where: str, dtype: torch.dtype | None) -> LoRALinear:
    names = list(module.lora_A)
    checks = {
        "a peft variant such as DoRA": any(module.lora_variant.get(n) for n in names),
        "a LoRA bias (lora_bias=True)": any(module.lora_bias.get(n) for n in names),
        "fan_in_fan_out=True": bool(getattr(module, "fan_in_fan_out", False)),
        "merged adapters (unmerge first)": bool(module.merged_adapters),
        "several active adapters": len(module.active_adapters) > 1,
    }
    for what, bad in checks.items():
        if bad:
            raise ValueError(f"{where}: a peft LoRA layer with {what}; expected plain LoRA")
    weight, bias, base_dtype = _base_of(module.get_base_layer(), where)
    layer = LoRALinear(weight, bias, dtype or base_dtype)
    for n in names:
        dropout = module.lora_dropout[n]
        p = float(dropout.p) if isinstance(dropout, nn.Dropout) else 0.0
        rslora = bool(module.use_rslora.get(n, False))
        layer.add_adapter(n, int(module.r[n]), module.lora_alpha[n], dropout=p, rslora=rslora, activate=False)
        if layer.configs[n].scale != module.scaling[n]:
            raise ValueError(f"{where}: adapter {n!r} scaling {module.scaling[n]}; expected alpha / r (or rsLoRA's)")
        _copy_adapter(layer, n, module.lora_A[n].weight, module.lora_B[n].weight)
    if module.active_adapters:
        layer.set_adapter(module.active_adapters[0])
    layer.train(module.training)
    return layer


# -- LoRALinear -> peft -----------------------------------------------------------------------------------------


def _lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    layers = {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}
    if not layers:
        raise ValueError(f"model: {type(model).__name__} holds no LoRALinear; expected at least one")
    return layers


def _config(layers: dict[str, LoRALinear], adapter: str) -> dict[str, Any]:
    """peft's LoraConfig fields (as its adapter_config.json writes them) for adapter `adapter` of `layers`: the most
    common rank and alpha, the others as rank_pattern / alpha_pattern over the escaped full module names."""
    cfgs = {name: layer.configs[adapter] for name, layer in layers.items() if adapter in layer.configs}
    if not cfgs:
        raise ValueError(f"adapter: {adapter!r} is in no LoRALinear of the model")
    for field in ("dropout", "rslora"):
        values = {getattr(c, field) for c in cfgs.values()}
        if len(values) > 1:
            raise ValueError(f"adapter: {adapter!r} has several {field} values {sorted(values)}; peft has one")
    any_cfg = next(iter(cfgs.values()))
    r = Counter(c.rank for c in cfgs.values()).most_common(1)[0][0]
    alpha = Counter(c.alpha for c in cfgs.values()).most_common(1)[0][0]
    return {
        "peft_type": "LORA",
        "task_type": None,
        "base_model_name_or_path": None,
        "inference_mode": True,
        "r": r,
        "lora_alpha": alpha,
        "lora_dropout": any_cfg.dropout,
        "use_rslora": any_cfg.rslora,
        "target_modules": sorted(cfgs),
        "rank_pattern": {re.escape(n): c.rank for n, c in cfgs.items() if c.rank != r},
        "alpha_pattern": {re.escape(n): c.alpha for n, c in cfgs.items() if c.alpha != alpha},
        "bias": "none",
        "fan_in_fan_out": False,
        "init_lora_weights": True,
        "modules_to_save": None,
        "use_dora": False,
    }


def _to_base(layer: LoRALinear, where: str) -> nn.Module:
    """The frozen base of `layer` as the layer peft wraps: nn.Linear (dense) or bitsandbytes Linear4bit (4-bit)."""
    if layer.merged:
        raise ValueError(f"{where}: a merged LoRALinear; unmerge() first")
    qt, bias = layer.quantized, layer.bias
    k, n = layer.in_features, layer.out_features
    if qt is None:
        assert layer.weight is not None
        base = nn.Linear(k, n, bias=bias is not None, device="meta")
        base.weight = nn.Parameter(layer.weight, requires_grad=False)
    elif qt.fmt in ("nf4", "fp4"):
        import bitsandbytes as bnb

        packed, state = to_bnb(qt)
        base = bnb.nn.Linear4bit(
            k, n, bias=bias is not None, compute_dtype=layer.dtype, compress_statistics=qt.double_quant,
            quant_type=qt.fmt, quant_storage=torch.uint8, device="meta",
        )  # fmt: skip
        base.weight = bnb.nn.Params4bit(
            packed, requires_grad=False, quant_state=state, blocksize=qt.blocksize,
            compress_statistics=qt.double_quant, quant_type=qt.fmt, quant_storage=torch.uint8, module=base,
            bnb_quantized=True,
        )  # fmt: skip
    else:
        raise ValueError(f"{where}: a {qt.fmt} base; peft's layers take a dense or bitsandbytes 4-bit base")
    if bias is not None:
        base.bias = nn.Parameter(bias, requires_grad=False)
    return base


def to_peft(model: nn.Module) -> Any:
    """Replace every LoRALinear of `model` by its base layer and wrap the model in a PeftModel holding the same
    adapters (every name; A and B copied, peft's adapter dtype left as LoRALinear's) with the same active adapter.
    `model` is changed in place (peft injects its layers into it).

    Raises:
        ValueError: no LoRALinear, a merged or int8-based layer, layers whose active adapters differ, or an adapter
            whose dropout or rsLoRA setting differs between layers (peft's LoraConfig holds one of each).
    """
    import peft

    layers = _lora_layers(model)
    actives = {layer.active_adapter for layer in layers.values()}
    if len(actives) != 1:
        raise ValueError(f"model: LoRALinear layers with different active adapters {sorted(map(str, actives))}")
    names = list(dict.fromkeys(n for layer in layers.values() for n in layer.adapters))
    configs = {n: _config(layers, n) for n in names}  # checked before the model changes
    bases = {name: _to_base(layer, name) for name, layer in layers.items()}
    for name, base in bases.items():
        _replace(model, name, base)
    peft_model: Any = None
    for n in names:
        fields = {k: v for k, v in configs[n].items() if k not in ("peft_type", "base_model_name_or_path")}
        config = peft.LoraConfig(**{**fields, "inference_mode": False, "init_lora_weights": False})
        if peft_model is None:
            peft_model = peft.get_peft_model(model, config, adapter_name=n, autocast_adapter_dtype=False)
        else:
            peft_model.add_adapter(n, config, autocast_adapter_dtype=False)
    inner = peft_model.base_model.model
    for name, layer in layers.items():
        target = inner.get_submodule(name)
        for n in layer.adapters:
            with torch.no_grad():
                target.lora_A[n].weight.copy_(layer.lora_A[n])
                target.lora_B[n].weight.copy_(layer.lora_B[n])
    peft_model.set_adapter(actives.pop())
    return peft_model


# -- peft's on-disk format --------------------------------------------------------------------------------------


def save_adapters(model: nn.Module, folder: str | Path, adapter: str | None = None) -> Path:
    """Write adapter `adapter` (default: the active one) of every LoRALinear of `model` in peft's format:
    `folder`/adapter_config.json and `folder`/adapter_model.safetensors with keys
    "base_model.model.<module path>.lora_A.weight" (r, K) and ".lora_B.weight" (N, r), in the layer dtype, which
    `peft.PeftModel.from_pretrained(model_with_nn_linear_layers, folder)` loads. Returns the folder.

    Raises:
        ValueError: no LoRALinear, an adapter that no layer has, or dropout / rsLoRA differing between layers.
    """
    from safetensors.torch import save_file

    layers = _lora_layers(model)
    if adapter is None:
        adapter = next(iter(layers.values())).active_adapter
    assert adapter is not None
    config = _config(layers, adapter)
    tensors = {}
    for name, layer in layers.items():
        if adapter in layer.configs:
            tensors[f"{_PREFIX}{name}.lora_A.weight"] = layer.lora_A[adapter].detach().contiguous()
            tensors[f"{_PREFIX}{name}.lora_B.weight"] = layer.lora_B[adapter].detach().contiguous()
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    (out / CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True))
    save_file({k: v.cpu() for k, v in tensors.items()}, str(out / WEIGHTS_NAME), metadata={"format": "pt"})
    return out


def _pattern(patterns: dict[str, Any], name: str, default: Any) -> Any:
    """peft's rank_pattern / alpha_pattern lookup: the first key matching the end of the module name as a regex."""
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", name):
            return value
    return default


def load_adapters(
    model: nn.Module,
    folder: str | Path,
    *,
    name: str = "default",
    quant: Literal["nf4", "int8"] | None = None,
) -> nn.Module:
    """Load a peft adapter folder (adapter_config.json + adapter_model.safetensors) into `model` as adapter
    `name`, made active: a target that is a LoRALinear gets the adapter added (or, if it has `name` already with
    the same rank, overwritten); an nn.Linear or bitsandbytes Linear4bit target becomes a LoRALinear (an nn.Linear's
    base quantized per `quant`, as `LoRALinear.from_linear`). Returns `model`, changed in place.

    Raises:
        ValueError: a config that is not plain LoRA (peft_type, use_dora, bias, fan_in_fan_out), a key that is not
            a LoRA weight, a module path that `model` lacks, or shapes that do not fit the target.
    """
    from safetensors.torch import load_file

    folder = Path(folder)
    config = json.loads((folder / CONFIG_NAME).read_text())
    wrong = {
        "peft_type": config.get("peft_type") != "LORA",
        "use_dora": bool(config.get("use_dora")),
        "bias": config.get("bias", "none") != "none",
        "fan_in_fan_out": bool(config.get("fan_in_fan_out")),
        "lora_bias": bool(config.get("lora_bias")),
    }
    for key, bad in wrong.items():
        if bad:
            raise ValueError(f"{folder / CONFIG_NAME}: {key} = {config.get(key)!r}; expected plain LoRA")
    weights: dict[str, dict[str, torch.Tensor]] = {}
    for key, t in load_file(str(folder / WEIGHTS_NAME)).items():
        m = re.fullmatch(rf"{re.escape(_PREFIX)}(.+)\.lora_([AB])(?:\.{re.escape(name)})?\.weight", key)
        if m is None:
            raise ValueError(f"{folder / WEIGHTS_NAME}: key {key!r}; expected '{_PREFIX}<path>.lora_A|B.weight'")
        weights.setdefault(m.group(1), {})[m.group(2)] = t
    alpha0, dropout, rslora = config["lora_alpha"], float(config.get("lora_dropout", 0.0)), bool(config["use_rslora"])
    for path, ab in weights.items():
        if set(ab) != {"A", "B"}:
            raise ValueError(f"{folder / WEIGHTS_NAME}: {path} has lora_{''.join(ab)} alone; expected A and B")
        try:
            target = model.get_submodule(path)
        except AttributeError:
            raise ValueError(f"{folder}: module {path!r} is not in the model") from None
        rank = int(ab["A"].shape[0])
        alpha = _pattern(config.get("alpha_pattern") or {}, path, alpha0)
        if isinstance(target, LoRALinear):
            layer = target
            if name in layer.configs and layer.configs[name].rank != rank:
                have = layer.configs[name].rank
                raise ValueError(f"{path}: adapter {name!r} has rank {have}; the folder's is {rank}")
            if name not in layer.configs:
                layer.add_adapter(name, rank, alpha, dropout=dropout, rslora=rslora, activate=False)
        elif isinstance(target, nn.Linear) and not _is_bnb_4bit(target):
            layer = LoRALinear.from_linear(target, rank, alpha, quant=quant, dropout=dropout, rslora=rslora, name=name)
            _replace(model, path, layer)
        else:
            weight, bias, dtype = _base_of(target, path)
            layer = LoRALinear(weight, bias, dtype)
            layer.add_adapter(name, rank, alpha, dropout=dropout, rslora=rslora)
            _replace(model, path, layer)
        if ab["A"].shape != layer.lora_A[name].shape or ab["B"].shape != layer.lora_B[name].shape:
            raise ValueError(
                f"{path}: lora_A {tuple(ab['A'].shape)}, lora_B {tuple(ab['B'].shape)}; expected "
                f"{tuple(layer.lora_A[name].shape)} and {tuple(layer.lora_B[name].shape)}"
            )
        _copy_adapter(layer, name, ab["A"], ab["B"])
        layer.set_adapter(name)
    return model
