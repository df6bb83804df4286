"""SYNTHETIC results files for the report tests: writes h100_a.json and h100_b.json beside this script.

They are not measurements. They follow the current results schema (suites/SCHEMA.md) case by case, as the suites
write it, for a modelled H100 SXM5 80GB: each time is max(FLOPs / (efficiency x ceiling), bytes / (efficiency x
copy bandwidth)) + launch overheads, the ceilings being plausible measured peaks (below the datasheet's), every
efficiency below 1, so no case exceeds its roofline; the rounds are drawn around that time (seeded, so the files
are reproducible) and stopped by the full profile's own rule (suites.timing.run_rounds); FLOPs, bytes, ceilings
and rates come from suites/metrics.py and reports/roofline.py, the memory cases from quant/memory.py, the kernel
names from the launchers' plans. Both files say so inside: machine_info["synthetic"] and ["qkbench"]["synthetic"]
are true, the node is "synthetic-h100" and the device name ends in "(synthetic)", which the report shows.

Run A: every group, one out-of-memory case. Run B, "the same machine later": 11 qkbench cases 1.22x slower (their
rounds too), one bitsandbytes case failing, no optim group; every other case drawn afresh around the same median.

    python tests/reports/data/make_synthetic.py           # rewrite both files
    python tests/reports/data/make_synthetic.py --check   # exit 1 when the committed files differ from its output
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import random
import re
import statistics
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[3]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from pytest_benchmark.stats import Stats  # noqa: E402

import quant  # noqa: E402
from kernels.dequant import audit_key as dequant_key  # noqa: E402
from kernels.matmul import audit_key as matmul_key  # noqa: E402
from quant.memory import MODELS  # noqa: E402
from quant.optim import state_bytes, state_bytes_per_param  # noqa: E402
from reports.roofline import compute_class  # noqa: E402
from suites.bench_memory import _info as memory_info  # noqa: E402
from suites.metrics import (  # noqa: E402
    adamw_cost,
    dequantize_cost,
    lora_cost,
    matmul_cost,
    quantize_cost,
    roofline_bound,
    roofline_flag,
    roofline_pct,
    weight_bytes,
)
from suites.shapes import PROFILES  # noqa: E402
from suites.timing import median_rse, run_rounds  # noqa: E402

configs = importlib.import_module("kernels.matmul.configs")  # `kernels.matmul` itself is the function
DATA = Path(__file__).resolve().parent
PEAKS = {"copy_gbps": 2950.0, "bf16_tflops": 712.0, "fp32_tflops": 51.2, "int8_tops": 1290.0}  # of 3350/989/67/1979
L2 = 50 * 2**20
STOPPING = PROFILES["full"].stopping
ROUND_OVERHEAD_S = 200e-6  # a round's flush (100 MiB), spin, events, NVML read and Python besides the op
NOISY = "test_adamw_step[qkbench-adamw8-paged-lora-r16.llama2-7b]"  # PCIe paging: 30% spread, misses its target
SHAPES = {"llama2-7b.q+k+v+o": (4096, 4096), "llama2-7b.down": (4096, 11008)}
SLOWER = 1.22
ACCURACY = {  # N(0, 1) 4096 x 4096 weights, blocksize 64 (the README's CPU measurements of quant/)
    "nf4": (0.0920, 20.7),
    "nf4-dq": (0.0920, 20.7),
    "fp4": (0.1220, 18.3),
    "int8": (0.0087, 41.2),
    "fp16": (0.00024, 72.3),
}
ERR_REL = {"bf16": 0.0017, "nf4": 0.091, "nf4-dq": 0.091, "int8": 0.0087}  # y = x W^T against fp32
BNB_INT8_ERR = 0.0127  # fp16 casts on top of the int8 rounding
OOM = (
    "OutOfMemoryError: CUDA out of memory. Tried to allocate 25.10 GiB. GPU 0 has a total capacity of 79.19 GiB "
    "of which 20.52 GiB is free."
)
ILLEGAL = "RuntimeError: CUDA error: an illegal memory access was encountered"


def _t(flops: float, nbytes: float, klass: str, ec: float, em: float, overhead: float) -> float:
    """A kernel's modelled time: the slower of its compute and its traffic at the given efficiencies."""
    peak = {"fp32": PEAKS["fp32_tflops"], "bf16": PEAKS["bf16_tflops"], "int8": PEAKS["int8_tops"]}[klass]
    return max(flops / (ec * peak * 1e12), nbytes / (em * PEAKS["copy_gbps"] * 1e9)) + overhead


def _matmul_s(impl: str, precision: str, m: int, n: int, k: int) -> float:
    wq, w16, x, y = weight_bytes(precision, n, k), 2 * n * k, 2 * m * k, 2 * m * n
    flops = 2.0 * m * n * k
    torch_bf16 = _t(flops, w16 + x + y, "bf16", 0.80, 0.85, 4e-6)
    if impl == "torch":
        return torch_bf16
    if impl == "qkbench":  # GEMV tiles at M <= 16, the dequant-GEMM above; W dequantized on chip to bf16
        return (
            _t(flops, wq + x + y, "bf16", 0.45, 0.78, 5e-6)
            if m <= 16
            else _t(flops, wq + x + y, "bf16", 0.75, 0.7, 6e-6)
        )
    if impl == "dequant+torch":
        return (wq + w16) / (0.85 * PEAKS["copy_gbps"] * 1e9) + 4e-6 + torch_bf16
    if precision == "int8":  # LLM.int8(): x cast to fp16 and quantized, int8 MMA, dequantized, cast back
        casts = (4 * m * k + m * k + 8 * m * n) / (0.7 * PEAKS["copy_gbps"] * 1e9)
        return casts + _t(flops, wq + m * k + 4 * m * n, "int8", 0.70, 0.80, 20e-6)
    if m == 1:  # bitsandbytes' 4-bit inference GEMV
        return _t(flops, wq + x + y, "bf16", 0.3, 0.55, 6e-6)
    return (wq + w16) / (0.80 * PEAKS["copy_gbps"] * 1e9) + 5e-6 + torch_bf16


def _lora_s(op: str, impl: str, precision: str, m: int, n: int, k: int, r: int) -> float:
    flops, nbytes = lora_cost(m, n, k, r, precision, backward=op == "lora_fwd_bwd")
    if impl == "qkbench":
        return _t(flops, nbytes, "bf16", 0.60 if op == "lora_fwd" else 0.55, 0.7, 8e-6 if op == "lora_fwd" else 30e-6)
    base = _matmul_s("torch" if precision == "bf16" else "dequant+torch", precision, m, n, k)
    adapters = _t(2.0 * m * r * (k + n), 2 * m * (k + r) + 2 * r * (k + n), "bf16", 0.25, 0.8, 8e-6)
    forward = base + adapters + 3 * 2 * m * n / (0.85 * PEAKS["copy_gbps"] * 1e9) + 4e-6
    if op == "lora_fwd":
        return forward
    return forward + _t(flops * 2 / 3, nbytes / 2, "bf16", 0.5, 0.7, 40e-6)


def _quantize_s(impl: str, precision: str, n: int, k: int) -> float:
    stored, bw = weight_bytes(precision, n, k), PEAKS["copy_gbps"] * 1e9
    if impl == "torch":
        return (4 * n * k + stored) / (0.88 * bw) + 3e-6
    if impl == "qkbench":  # quant/'s torch code: an absmax pass, then the codes
        return (8 * n * k + stored) / (0.8 * bw) + (45e-6 if precision.endswith("-dq") else 30e-6)
    if precision == "int8":  # the fp16 cast bitsandbytes needs, then its row-wise quantizer
        return 6 * n * k / (0.85 * bw) + (5 * n * k) / (0.75 * bw) + 12e-6
    return (4 * n * k + stored) / (0.65 * bw) + 10e-6


def _adamw_s(impl: str, precision: str, numel: int) -> float:
    bits = 8 if precision.startswith("adamw8") else 32
    _, nbytes = adamw_cost(numel, bits)
    bw = PEAKS["copy_gbps"] * 1e9
    if impl == "torch":  # fused multi-tensor kernels
        return nbytes / (0.78 * bw) + 40e-6
    per_tensor = {"qkbench": 9e-6 if bits == 32 else 11e-6, "bitsandbytes": 14e-6}[impl]
    seconds = nbytes / ((0.7 if bits == 32 else 0.6) * bw) + 128 * per_tensor
    if precision.endswith("-paged"):  # half the states out and in over PCIe each step (~22 GB/s)
        seconds += state_bytes(numel, bits) / 22e9 + 128 * 9e-6
    return seconds


def _rounds(rng: random.Random, median_s: float, spread: float | None = None) -> tuple[list[float], str]:
    """Round times drawn around `median_s` (log-normal, spread ~1%, wider for µs ops; a rare slow outlier),
    stopped by the full profile's rule, then scaled so that their median is `median_s` exactly."""
    spread = spread or 0.008 + 1e-7 / median_s  # events jitter by ~0.1 µs a round: µs ops are relatively noisier
    clock = [0.0]

    def draw(_: Any) -> float:
        t = median_s * math.exp(rng.gauss(0.0, spread)) * (1 + (rng.uniform(0.02, 0.2) if rng.random() < 0.02 else 0))
        clock[0] += t + ROUND_OVERHEAD_S
        return t

    draw.name = "synthetic"  # type: ignore[attr-defined]
    rounds = run_rounds(draw, lambda: None, lambda: None, STOPPING, clock=lambda: clock[0])  # type: ignore[arg-type]
    scale = median_s / statistics.median(rounds.times)  # the draws' median onto median_s, 4 digits kept
    times = [float(f"{t * scale:.4g}") for t in rounds.times]
    order = sorted(range(len(times)), key=times.__getitem__)
    n = len(times)
    for rank, i in enumerate(order):  # the middle one (or two) exactly median_s, nothing across it by rounding
        if (
            rank in ((n - 1) // 2, n // 2)
            or (rank < n // 2 and times[i] > median_s)
            or (rank > n // 2 and times[i] < median_s)
        ):
            times[i] = median_s
    assert statistics.median(times) == median_s
    return times, rounds.stop


def _gpu_plans() -> None:
    """The launchers' plans as on a GPU (the interpreter picks the first config of each path)."""
    configs.INTERPRET = False


def _kernel(impl: str, op: str, precision: str, m: int, n: int, k: int, r: int | None = None) -> str | None:
    """The audit key the suite records for a qkbench case that runs a Triton kernel (None for the others)."""
    if impl != "qkbench" or op in ("quantize", "adamw_step"):  # quant/'s torch quantizer, the pager's updates
        return None
    fmt = precision.split("-")[0]
    w = torch.randn(64, k)
    weight: Any = w.to(torch.bfloat16) if fmt == "bf16" else quant.quantize(w, fmt, 64, double_quant="dq" in precision)
    if op == "dequantize":
        return dequant_key(weight, torch.bfloat16)
    fused = r if r and r <= configs.LORA_MAX_FUSED_R else 0
    return matmul_key(torch.bfloat16, weight, configs.plan(m, n, k, weight, fused))


class Run:
    """One synthetic results file being written: its cases in the suites' order."""

    def __init__(self, seed: int, slower: set[str], failing: dict[str, str], groups: set[str]) -> None:
        self.rng, self.slower, self.failing, self.groups = random.Random(seed), slower, failing, groups
        self.cases: list[dict[str, Any]] = []
        self.compiled: set[str] = set()

    def add(self, test: str, params: dict[str, Any], info: dict[str, Any], seconds: float | None, **extra: Any):
        """One case: timed around `seconds` (x SLOWER when listed so), failed when listed so or when `extra`
        gives its status and error, computed (untimed) when `seconds` is None."""
        if info["group"] not in self.groups:
            return
        name = f"{test}[{'-'.join(str(v) for v in params.values() if v is not None)}]"
        info = {**info, "status": "ok", "error": None, "telemetry": None, "telemetry_error": None, **extra}
        stats = None
        if name in self.failing:
            info.update(status="error", error=self.failing[name])
        elif seconds is not None and info["status"] == "ok":
            stats, more = self._timed(name, info, seconds * (SLOWER if name in self.slower else 1.0))
            info.update(more)
        module = {"matmul": "matmul", "lora": "lora", "optim": "optim", "memory": "memory"}.get(info["group"])
        fullname = f"suites/bench_{module or 'quantize'}.py::{name}"
        param = name[len(test) + 1 : -1]
        options = {"timer": info.get("timer") or "cuda_event", "min_rounds": STOPPING.min_rounds}
        options.update(min_time=STOPPING.min_time_s, max_time=STOPPING.timeout_s, disable_gc=False, warmup=True)
        entry = {"group": info["group"], "name": name, "fullname": fullname, "params": params, "param": param}
        entry.update(extra_info=info, options=options, stats=stats)
        self.cases.append(entry)

    def _timed(self, name: str, info: dict[str, Any], median_s: float) -> tuple[dict[str, Any], dict[str, Any]]:
        times, stop = _rounds(self.rng, median_s, 0.3 if name == NOISY else None)
        stats = Stats()
        for t in times:
            stats.update(t)
        out: dict[str, Any] = {**stats.as_dict(), "data": times, "iterations": 1}
        noise = median_rse(times)
        klass = compute_class(info["precision"], info["impl"], info["op"])
        peak = {"fp32": PEAKS["fp32_tflops"], "bf16": PEAKS["bf16_tflops"], "int8": PEAKS["int8_tops"]}[klass]
        pct = roofline_pct(info["flops"], info["bytes"], stats.median, peak, PEAKS["copy_gbps"])
        assert pct is not None and pct <= 100, (name, pct)  # a physically possible case
        bound = roofline_bound(info["flops"], info["bytes"], peak, PEAKS["copy_gbps"])
        ceiling = "copy" if bound == "memory" else klass
        heavy = info["flops"] / stats.median > 0.3e15  # a big GEMM: power-capped boost
        power = 640.0 if heavy else 180.0 + 320.0 * min(1.0, info["bytes"] / stats.median / 2.95e12)
        busy = median_s / (median_s + ROUND_OVERHEAD_S)
        kernel = info.get("kernel")
        first_compile = kernel is not None and kernel not in self.compiled
        self.compiled |= {kernel} if kernel else set()
        energy = power * stats.median
        more = {
            "timer": info.get("timer") or "cuda_event",
            "cuda_graph": False,
            "time_s": stats.median,
            "time_iqr_s": stats.iqr,
            "rounds": len(times),
            "noise": noise,
            "noise_target": STOPPING.noise,
            "noisy": not noise <= STOPPING.noise,
            "stop": stop,
            "throttled_rounds": 0,
            "first_call_s": (1.31 if first_compile else 0.0004) + median_s,
            "compile_s": 1.27 if first_compile else 0.0,
            "autotune_s": 0.0,
            "kernels_compiled": int(first_compile),
            "kernels_cached": 0,
            "energy_j": energy,
            "energy_power_w": power,
            "energy_busy": busy,
            "j_per_token": energy / info["M"] if info["group"] in ("matmul", "lora") and info.get("M") else None,
            "j_per_gb": energy / (info["bytes"] / 1e9) if info["bytes"] > 0 else None,
            "tflops": info["flops"] / stats.median / 1e12,
            "gbps": info["bytes"] / stats.median / 1e9,
            "roofline_pct": pct,
            "roofline_ceiling": ceiling,
            "roofline_flag": roofline_flag(pct, info["bytes"], L2, ceiling),
            "telemetry": {
                "sm_clock_mhz": 1755.0 if heavy else 1980.0,
                "mem_clock_mhz": 2619.0,
                "power_w": power,
                "temp_c": 62.0 if heavy else 44.0,
                "throttle_reasons": ["sw_power_cap"] if heavy else [],
                "samples": max(1, int(len(times) * (median_s + ROUND_OVERHEAD_S) / 0.01)),
            },
        }
        return out, more


def _identity(group: str, op: str, impl: str, precision: str, shape: str, **fields: Any) -> dict[str, Any]:
    info = {"group": group, "op": op, "impl": impl, "baseline": False, "precision": precision, "shape": shape}
    info.update(model=None, M=None, N=None, K=None, rank=None, flops=0.0, bytes=0.0, kernel=None, timer=None)
    info.update(fields)
    return info


def _fill(run: Run) -> None:
    """Every case of the synthetic sweep, in the suites' order (quantize, matmul, lora, optim, memory)."""
    n = k = 4096
    shape = f"{n}x{k}"
    for precision in ("nf4", "nf4-dq", "fp4", "int8", "fp16"):
        rmse, sqnr = ACCURACY[precision]
        for impl in ("qkbench", "bitsandbytes") if precision != "fp16" else ("torch",):
            flops, nbytes = quantize_cost(n, k, precision)
            info = _identity("quantize", "quantize", impl, precision, shape, N=n, K=k, flops=flops, bytes=nbytes)
            info.update(baseline=impl == "torch", rmse=rmse, sqnr_db=sqnr, numel=n * k)
            info["bits_per_param"] = 8 * weight_bytes(precision, n, k) / (n * k)
            run.add(
                "test_quantize",
                {"impl": impl, "precision": precision, "shape": shape},
                info,
                _quantize_s(impl, precision, n, k),
            )
    for impl in ("qkbench", "bitsandbytes"):
        flops, nbytes = dequantize_cost(n, k, "nf4", out="bf16")
        info = _identity("quantize", "dequantize", impl, "nf4", shape, N=n, K=k, flops=flops, bytes=nbytes)
        info.update(kernel=_kernel(impl, "dequantize", "nf4", 0, n, k), err_max=0.0078, err_rel=0.0021)  # bf16 out
        seconds = (weight_bytes("nf4", n, k) + 2 * n * k) / ((0.82 if impl == "qkbench" else 0.74) * 2.95e12) + 4e-6
        run.add("test_dequantize", {"impl": impl, "precision": "nf4", "shape": shape}, info, seconds)
    for name, (n, k) in SHAPES.items():
        rows = []
        for m in (1, 16, 256, 4096):
            rows += [(m, "bf16", "torch")] + [(m, "nf4", i) for i in ("qkbench", "bitsandbytes", "dequant+torch")]
            if m in (1, 4096):
                rows += [(m, "int8", i) for i in ("qkbench", "bitsandbytes")]
            if m == 4096 and name.endswith("q+k+v+o"):  # QLoRA's base, for the LoRA overhead
                rows += [(m, "nf4-dq", i) for i in ("qkbench", "bitsandbytes", "dequant+torch")]
        for m, precision, impl in rows:
            flops, nbytes = matmul_cost(m, n, k, precision)
            info = _identity("matmul", "matmul", impl, precision, name, model="llama2-7b", M=m, N=n, K=k)
            info.update(
                flops=flops, bytes=nbytes, baseline=impl == "torch", kernel=_kernel(impl, "matmul", precision, m, n, k)
            )
            err = BNB_INT8_ERR if (impl, precision) == ("bitsandbytes", "int8") else ERR_REL[precision]
            held = weight_bytes(precision, n, k) + 2 * m * (k + n)
            extra = {"peak_mem_bytes": held + (2 * n * k if impl in ("dequant+torch", "bitsandbytes") else 0)}
            extra.update(err_rel=err, err_max=round(err * 9.5, 4))
            params = {"impl": impl, "precision": precision, "shape": name, "M": m}
            run.add("test_matmul", params, info, _matmul_s(impl, precision, m, n, k), **extra)
    n = k = 4096
    for op in ("lora_fwd", "lora_fwd_bwd"):
        for precision in ("bf16", "nf4-dq"):
            for r in (8, 16, 64):
                for impl in ("qkbench", "unfused"):
                    flops, nbytes = lora_cost(4096, n, k, r, precision, backward=op == "lora_fwd_bwd")
                    info = _identity("lora", op, impl, precision, "llama2-7b.q+k+v+o", model="llama2-7b", M=4096)
                    info.update(N=n, K=k, rank=r, flops=flops, bytes=nbytes, baseline=impl == "unfused")
                    info["kernel"] = _kernel(impl, "lora", precision, 4096, n, k, r)
                    extra = {"err_rel": ERR_REL[precision], "err_max": round(ERR_REL[precision] * 9.5, 4)}
                    extra["peak_mem_bytes"] = int(nbytes * (1.0 if impl == "qkbench" else 1.4))
                    params = {"op": op, "impl": impl, "precision": precision, "M": 4096, "rank": r}
                    run.add("test_lora", params, info, _lora_s(op, impl, precision, 4096, n, k, r), **extra)
    numel = 8_388_608  # lora-r16.llama2-7b, a multiple of the 128 tensors
    for impl, precision in (
        ("torch", "adamw32"),
        ("qkbench", "adamw32"),
        ("qkbench", "adamw8"),
        ("bitsandbytes", "adamw8"),
        ("qkbench", "adamw8-paged"),
    ):
        bits = 8 if precision.startswith("adamw8") else 32
        flops, nbytes = adamw_cost(numel, bits)
        timer = "perf_counter" if precision.endswith("-paged") else None
        info = _identity(
            "optim",
            "adamw_step",
            impl,
            precision,
            "lora-r16.llama2-7b",
            model="llama2-7b",
            flops=flops,
            bytes=nbytes,
            timer=timer,
        )
        info.update(baseline=impl == "torch", state_bytes_per_param=state_bytes_per_param(bits))
        extra: dict[str, Any] = {
            "peak_mem_bytes": 3 * 4 * numel + state_bytes(numel, bits),
            "err_max": 0.0,
            "err_rel": 0.0,
        }
        if impl == "qkbench":
            paged = precision.endswith("-paged")
            budget = state_bytes(numel, bits) // 2 if paged else None
            steps = 3 + 5 + 10  # first, warm, peak-memory calls; warm-up rounds; the rounds
            extra.update(page_ins=128 * steps if paged else 0, page_outs=128 * steps if paged else 0)
            extra.update(bytes_moved=2 * steps * state_bytes(numel, bits) if paged else 0, budget_bytes=budget)
            extra["peak_resident_bytes"] = budget if paged else state_bytes(numel, bits)
        run.add(
            "test_adamw_step",
            {"impl": impl, "precision": precision, "shape": "lora-r16.llama2-7b"},
            info,
            _adamw_s(impl, precision, numel),
            **extra,
        )
    full = MODELS["llama2-7b"].n_params
    flops, nbytes = adamw_cost(full, 32)
    info = _identity(
        "optim", "adamw_step", "torch", "adamw32", "full.llama2-7b", model="llama2-7b", flops=flops, bytes=nbytes
    )
    info.update(baseline=True, state_bytes_per_param=8.0)  # full fine-tuning's 6.7B fp32 states: 108 GB > 80 GB
    params = {"impl": "torch", "precision": "adamw32", "shape": "full.llama2-7b"}
    run.add("test_adamw_step", params, info, None, status="oom", error=OOM)
    for model in ("llama-7b", "llama-13b", "llama-33b", "llama-65b"):
        for method, rank in (("full", None), ("lora", 64), ("qlora", 64)):
            precision = "nf4-dq" if method == "qlora" else "bf16"
            info = _identity("memory", "training_memory", "model", precision, model, model=model, rank=rank)
            info.update(memory_info(MODELS[model], method, rank), measured_bytes=None)
            run.add("test_training_memory", {"method": method, "shape": model, "rank": rank}, info, None)


def _results(run: Run, date: str) -> dict[str, Any]:
    stopping = {"noise": STOPPING.noise, "min_rounds": STOPPING.min_rounds, "max_rounds": STOPPING.max_rounds}
    stopping.update(min_time_s=STOPPING.min_time_s, timeout_s=STOPPING.timeout_s)
    qkbench = {
        "device": "NVIDIA H100 80GB HBM3 (synthetic)",
        "device_kind": "cuda",
        "driver": "570.124.06",
        "cuda": "12.8",
        "torch": "2.13.0",
        "triton": "3.9.0",
        "bitsandbytes": "0.50.2",
        "python": "3.11.7",
        "git_commit": None,  # no commit ran: nothing was measured
        "date": date,
        "profile": "full",
        "peaks": PEAKS,
        "method": {
            "timer": "cuda_event",
            "timer_spin": True,
            "flush_bytes": 2 * L2,
            "cache_bytes": L2,
            "warmup_rounds": PROFILES["full"].warmup_rounds,
            "stopping": stopping,
            "noise_estimate": "sqrt(pi/2) * (IQR / 1.349) / sqrt(n) / median",
            "throttle_floor": 0.75,
            "cuda_graphs": False,
        },
        "gpu": {
            "capability": "9.0",
            "sms": 132,
            "memory_bytes": 85_045_231_616,
            "l2_bytes": L2,
            "nvml": True,
            "sm_clock_max_mhz": 1980.0,
            "mem_clock_max_mhz": 2619.0,
            "sm_clock_default_mhz": 1755.0,
            "mem_clock_default_mhz": 2619.0,
            "sm_clock_applications_mhz": 1755.0,
            "power_limit_w": 700.0,
            "ecc": True,
            "persistence": True,
            "mig": False,
        },
        "synthetic": True,
        "generator": "tests/reports/data/make_synthetic.py",
    }
    machine = {"node": "synthetic-h100", "machine": "x86_64", "system": "Linux", "python_version": "3.11.7"}
    machine.update(synthetic=True, qkbench=qkbench)
    commit = {"id": None, "time": None, "dirty": None, "project": "qkbench", "branch": None}
    return {
        "machine_info": machine,
        "commit_info": commit,
        "benchmarks": run.cases,
        "datetime": date,
        "version": "5.2.3",
    }


def build() -> dict[str, str]:
    """The two files' text, by name."""
    _gpu_plans()
    torch.manual_seed(0)
    a = Run(seed=1, slower=set(), failing={}, groups={"quantize", "matmul", "lora", "optim", "memory"})
    _fill(a)
    slower = {"test_quantize[qkbench-nf4-4096x4096]"}
    slower |= {f"test_matmul[qkbench-nf4-llama2-7b.{s}-{m}]" for s in ("q+k+v+o", "down") for m in (256, 4096)}
    slower |= {f"test_lora[lora_fwd_bwd-qkbench-{p}-4096-{r}]" for p in ("bf16", "nf4-dq") for r in (8, 16, 64)}
    failing = {"test_matmul[bitsandbytes-nf4-llama2-7b.down-4096]": ILLEGAL}
    b = Run(seed=2, slower=slower, failing=failing, groups={"quantize", "matmul", "lora", "memory"})
    _fill(b)
    assert len(slower) == 11 and all(any(c["name"] == s for c in b.cases) for s in (*slower, *failing))
    runs = {
        "h100_a.json": _results(a, "2026-11-20T09:14:03+00:00"),
        "h100_b.json": _results(b, "2026-11-24T08:02:51+00:00"),
    }
    return {name: _dumps(data) for name, data in runs.items()}


def _dumps(data: Any) -> str:
    """Indented JSON with each list of numbers (the raw rounds) on one line, so the files stay readable and small."""
    numbers = re.compile(r"\[\n\s*(-?[\d.e+-]+(?:,\n\s*-?[\d.e+-]+)*)\n\s*\]")
    text = numbers.sub(lambda m: "[" + ", ".join(x.strip() for x in m[1].split(",")) + "]", json.dumps(data, indent=1))
    return text + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare with the committed files, write nothing")
    args = parser.parse_args(argv)
    stale = []
    for name, text in build().items():
        path = DATA / name
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
        else:
            path.write_text(text)
    if stale:
        print(f"not what make_synthetic.py writes: {', '.join(stale)} (run it without --check)", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
