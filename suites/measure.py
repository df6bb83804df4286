"""The measurement core: every suite times, sizes and checks its cases through here, and nowhere else.

Method (per case, `Meter.run`):
1. build the inputs, then call the op once (warm-up: Triton compiles, autotunes, cuBLAS loads its kernels,
   caches fill) and keep its output for the error against an fp32 reference; then time one more call, warm,
   after a cache flush: the rounds and the CUDA-graph rule (step 4) are decided from it, never from the first;
2. peak memory of one more call: the op's own tensors, the same definition on both devices (`_peak_memory`):
   the bytes of the tensors the op holds (its closure: inputs, weights, states) plus what the call allocates
   (output; on CUDA its temporaries too, read from the allocator); nothing else that is live (the cache-flush
   buffer, other cases' tensors) counts;
3. rounds: as many as fit the profile's time budget (from the warm call's duration), clamped to [min, max];
4. pytest-benchmark's `pedantic` times the rounds: its setup flushes the cache (the GPU's L2 or the CPU's
   last level, by writing twice its size) and synchronises; the timed target is the op followed by a
   synchronisation. This is synchronised wall time: on CUDA it includes one launch latency (a few µs),
   reported as is; launch-bound cases (warm call under GRAPH_BELOW_S) may opt into CUDA-graph replay
   (`Profile.cuda_graphs`): a graph holds one call and each round replays it after the same flush, so the
   cache state is an eager round's (flushing inside the graph would put the flush, longer than such an op,
   into the timed replay); an op that cannot be captured is timed eagerly (`cuda_graph` says which);
5. median and IQR come from pytest-benchmark's statistics; NVML telemetry is sampled while the rounds run (a
   telemetry failure leaves `telemetry` null and says why in `telemetry_error`; the case stands).
A case that runs out of memory or fails is recorded with that status, and the run goes on.

Device peaks (copy bandwidth, bf16, fp32 and int8 GEMM throughput) are measured once per run by the same clock,
so `% of roofline` compares numbers taken on the same machine at the same time; a case's compute ceiling is that
of the arithmetic it runs (`compute_class`).
"""

from __future__ import annotations

import math
import time
import types
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch

from kernels.device import DEVICE
from suites.metrics import roofline_pct

__all__ = [
    "GRAPH_BELOW_S",
    "INT8_MMA_IMPLS",
    "Case",
    "Meter",
    "Peaks",
    "Profile",
    "compute_class",
    "error",
    "measure_peaks",
    "results_entry",
    "rounds_for",
    "sync",
    "tracked_bytes",
]

GRAPH_BELOW_S = 50e-6  # a warm call shorter than this is launch-bound: replayed from a CUDA graph when opted in
INT8_MMA_IMPLS = frozenset({"bitsandbytes"})  # their int8 matmuls run on int8 tensor cores (LLM.int8())
_OK: dict[str, Any] = {"status": "ok", "error": None, "telemetry": None, "telemetry_error": None}  # a case's start
_L2_FLUSH_BYTES = 2 * 50 * 2**20  # twice the largest L2 of the supported GPUs (H100: 50 MiB)


def _cpu_flush_bytes() -> int:
    """Twice the CPU's last-level cache (Linux sysfs; 32 MiB assumed where it cannot be read)."""
    size = 32 * 2**20
    try:
        text = Path("/sys/devices/system/cpu/cpu0/cache/index3/size").read_text().strip()
        size = int(text.rstrip("KkMm")) * (2**20 if text[-1] in "Mm" else 2**10)
    except (OSError, ValueError, IndexError):
        pass
    return 2 * size


@dataclass(frozen=True)
class Profile:
    """How hard to measure (suites/shapes.py holds each profile's grids)."""

    name: str
    warmup_rounds: int  # untimed rounds after the first call
    min_rounds: int
    max_rounds: int
    budget_s: float  # timed seconds a case aims for
    cuda_graphs: bool = False  # replay launch-bound cases (warm call under GRAPH_BELOW_S) from a CUDA graph


def compute_class(precision: str, impl: str) -> str:
    """The arithmetic a case runs in ("fp32", "bf16" or "int8"), whose measured ceiling its % of roofline uses:
    fp32 for fp32 and every AdamW step (8-bit states are updated in fp32 too); int8 for int8 cases of
    INT8_MMA_IMPLS (bitsandbytes' LLM.int8(): int8 tensor cores); bf16 for everything else: the 16-bit formats,
    the 4-bit formats and the int8 cases of qkbench, dequant+torch and unfused, which dequantize W to bf16 for
    bf16 tensor cores. (reports/roofline.py's datasheet bounds take the best kernel of a precision: int8 MMA.)"""
    if precision == "fp32" or precision.startswith("adamw"):
        return "fp32"
    return "int8" if precision == "int8" and impl in INT8_MMA_IMPLS else "bf16"


@dataclass(frozen=True)
class Peaks:
    """The device's ceilings, measured in the run: copy bandwidth (GB/s), bf16, fp32 and int8 GEMM (TFLOP/s)."""

    copy_gbps: float
    bf16_tflops: float
    fp32_tflops: float
    int8_tops: float

    def tflops_for(self, precision: str, impl: str) -> float:
        """The compute ceiling of a case: the peak of its `compute_class`."""
        klass = compute_class(precision, impl)
        return {"fp32": self.fp32_tflops, "int8": self.int8_tops}.get(klass, self.bf16_tflops)


@dataclass
class Case:
    """One case: what runs (the identity a report groups by) and what it costs by model (flops, bytes).

    Names and units are suites/SCHEMA.md's `extra_info` keys; `extra` holds the group-specific ones.
    """

    group: str
    op: str
    impl: str
    precision: str
    shape: str
    model: str | None = None
    M: int | None = None
    N: int | None = None
    K: int | None = None
    rank: int | None = None
    flops: float = 0.0
    bytes: float = 0.0
    baseline: bool = False
    kernel: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def info(self) -> dict[str, Any]:
        return {**{k: v for k, v in vars(self).items() if k != "extra"}, **self.extra}


def sync() -> None:
    """Wait for the device (a no-op on the CPU)."""
    if DEVICE.type == "cuda":
        torch.cuda.synchronize(DEVICE)


def rounds_for(seconds_per_call: float, profile: Profile) -> int:
    """Timed rounds that fit the profile's budget, clamped to [min_rounds, max_rounds]."""
    if seconds_per_call <= 0:
        return profile.max_rounds
    return max(profile.min_rounds, min(profile.max_rounds, math.ceil(profile.budget_s / seconds_per_call)))


def _graphed(fn: Callable[[], Any]) -> Callable[[], Any]:
    """A callable that replays one call of `fn` captured in a CUDA graph (one call, so that the round's flush
    precedes it as it precedes an eager call: each replay starts from the same cold cache)."""
    stream = torch.cuda.Stream(DEVICE)
    stream.wait_stream(torch.cuda.current_stream(DEVICE))
    with torch.cuda.stream(stream):
        fn()  # warm-up on a side stream before capture, as torch.cuda.graphs asks
    torch.cuda.current_stream(DEVICE).wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay


def _children(obj: Any) -> Iterable[Any]:
    """What `_tensors` looks inside: a module's parameters, buffers and tensor/dataclass attributes; an optimizer's
    or quant/'s objects' attributes (states, pager); container items; dataclass fields; a closure's cells; a bound
    method's object (`qt.dequantize` held as the op's callable)."""
    if isinstance(obj, torch.nn.Module):
        yield from obj.parameters()
        yield from obj.buffers()
        yield from (c for c in vars(obj).values() if isinstance(c, torch.Tensor) or hasattr(c, "__dataclass_fields__"))
    elif isinstance(obj, list | tuple | set):
        yield from obj
    elif isinstance(obj, dict):
        yield from obj.values()
    elif hasattr(obj, "__dataclass_fields__"):
        yield from (getattr(obj, name) for name in obj.__dataclass_fields__)
    elif isinstance(obj, torch.optim.Optimizer) or type(obj).__module__.startswith("quant."):
        yield from vars(obj).values()
    elif isinstance(obj, types.MethodType):
        yield obj.__self__
    elif callable(obj) and getattr(obj, "__closure__", None):
        yield from (cell.cell_contents for cell in obj.__closure__)


def _tensors(root: Any) -> Iterable[torch.Tensor]:
    """Tensors reachable from root (a parameter's gradient too), each object visited once, however deep."""
    stack, visited = [root], set()
    while stack:
        obj = stack.pop()
        if id(obj) in visited:
            continue
        visited.add(id(obj))
        if isinstance(obj, torch.Tensor):
            yield obj
            if isinstance(obj, torch.nn.Parameter) and obj.grad is not None:
                yield obj.grad
        else:
            stack.extend(_children(obj))


def tracked_bytes(*objs: Any, device_type: str | None = None) -> int:
    """Bytes of the distinct storages behind the tensors reachable from `objs` (on devices of `device_type`
    only, when given: a GPU case's host-side pages are not GPU memory)."""
    seen: dict[int, int] = {}
    for obj in objs:
        for t in _tensors(obj):
            if device_type is None or t.device.type == device_type:
                storage = t.untyped_storage()
                seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())


def _peak_memory(fn: Callable[[], Any]) -> int:
    """Peak memory of one call of `fn` (step 2 of the method): the bytes of the tensors `fn` holds (inputs,
    weights, states) plus what the call allocates. The CPU sees the output only; CUDA's allocator gives the peak
    of the output and the temporaries together: its peak over the call less what was allocated before it (so
    the cache-flush buffer and every other live tensor drop out), added to the op's own tensors on the GPU as
    they were before the call. CUDA's count is in the allocator's 512-byte blocks."""
    if DEVICE.type == "cuda":
        sync()
        held = tracked_bytes(fn, device_type=DEVICE.type)
        before = torch.cuda.memory_allocated(DEVICE)
        torch.cuda.reset_peak_memory_stats(DEVICE)
        fn()
        sync()
        return held + int(torch.cuda.max_memory_allocated(DEVICE) - before)
    return tracked_bytes(fn, fn())


def error(out: Any, ref: torch.Tensor) -> tuple[float, float]:
    """(max |out - ref|, ||out - ref|| / ||ref||) in fp32; `out` a tensor or a tuple whose first item is one.

    Raises:
        ValueError: out and ref differ in shape (a broadcast would compare the wrong elements).
    """
    if isinstance(out, tuple | list):
        out = out[0]
    if tuple(out.shape) != tuple(ref.shape):
        raise ValueError(f"out: shape {tuple(out.shape)}; expected the reference's {tuple(ref.shape)}")
    diff = out.detach().float() - ref.detach().float()
    if diff.numel() == 0:
        return 0.0, 0.0
    norm = ref.detach().float().norm().item()
    return diff.abs().max().item(), diff.norm().item() / (norm if norm > 0 else 1.0)


def results_entry(benchmark: Any) -> dict[str, Any]:
    """The case as pytest-benchmark writes it under `benchmarks` (stats without raw data; null when untimed)."""
    if benchmark.stats is not None:
        return {**benchmark.stats.as_dict(include_data=False), "group": benchmark.group}
    return {
        "group": benchmark.group,
        "name": benchmark.name,
        "fullname": benchmark.fullname,
        "params": benchmark.params,
        "param": benchmark.param,
        "extra_info": benchmark.extra_info,
        "options": {},
        "stats": None,
    }


class Meter:
    """Runs cases by the method of the module docstring and hands each finished one to `sink`.

    profile: how hard to measure; peaks: the device's ceilings from this run; telemetry: an NVML sampler
    (suites/telemetry.py) or None; sink: takes each case's results entry (suites/record.py appends it to disk).
    """

    def __init__(self, profile: Profile, peaks: Peaks, telemetry: Any, sink: Callable[[dict[str, Any]], None]):
        self.profile = profile
        self.peaks = peaks
        self.telemetry = telemetry
        self.sink = sink
        flush_bytes = _L2_FLUSH_BYTES if DEVICE.type == "cuda" else _cpu_flush_bytes()
        self._flush = torch.empty(flush_bytes, dtype=torch.uint8, device=DEVICE)

    def flush(self) -> None:
        """Evict the GPU's L2 or the CPU's last-level cache (write twice its size), then synchronise."""
        self._flush.zero_()
        sync()

    def run(
        self,
        benchmark: Any,
        case: Case,
        build: Callable[[], Callable[[], Any]],
        reference: Callable[[], torch.Tensor] | None = None,
        skip: str | None = None,
        after: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        """Measure one case. `build()` makes the inputs and returns the op as a callable without arguments;
        `reference()` gives the fp32 result the op's output is compared with; `skip` records the case as skipped
        with that reason; `after()` returns metrics read once the rounds ran (counters). Out-of-memory and other
        failures are recorded ("oom", "error"); nothing is raised."""
        info: dict[str, Any] = dict(_OK)
        benchmark.group = case.group  # before pedantic: pytest-benchmark copies it into its statistics
        try:
            if skip:
                info.update(status="skipped", error=skip)
                return
            fn = build()
            out = fn()  # warm-up: compiles, autotunes, loads; too slow to size anything by
            sync()
            if reference is not None:
                info["err_max"], info["err_rel"] = error(out, reference())
            del out
            self.flush()
            start = time.perf_counter()
            fn()
            sync()
            warm_s = time.perf_counter() - start
            info["peak_mem_bytes"] = _peak_memory(fn)
            if self.telemetry is not None:
                with self.telemetry.sample():
                    median, iqr, info["cuda_graph"] = self._time(benchmark, fn, warm_s)
                info["telemetry"] = self.telemetry.summary()
                info["telemetry_error"] = getattr(self.telemetry, "error", None)
            else:
                median, iqr, info["cuda_graph"] = self._time(benchmark, fn, warm_s)
            info.update(self._rates(case, median), time_s=median, time_iqr_s=iqr)
            if after is not None:
                info.update(after())
        except torch.cuda.OutOfMemoryError as exc:
            info.update(status="oom", error=f"{type(exc).__name__}: {str(exc).splitlines()[0]}")
        except Exception as exc:  # recorded, and the run goes on (the report lists it)
            info.update(status="error", error=f"{type(exc).__name__}: {exc}"[:500])
        finally:
            self._finish(benchmark, case, info)

    def record(self, benchmark: Any, case: Case, **metrics: Any) -> None:
        """Record a case that is computed, not timed (the memory model), with the metrics given."""
        self._finish(benchmark, case, {**_OK, **metrics})

    def _time(self, benchmark: Any, fn: Callable[[], Any], warm_s: float) -> tuple[float, float, bool]:
        """(median, IQR) seconds per call from pytest-benchmark's `pedantic`, the cache flushed before each
        round, and whether the rounds replayed a CUDA graph (step 4 of the method)."""
        target = fn
        if self.profile.cuda_graphs and DEVICE.type == "cuda" and warm_s < GRAPH_BELOW_S:
            stream = torch.cuda.current_stream(DEVICE)
            try:
                target = _graphed(fn)
            except RuntimeError:  # not capturable (a host sync; AdamW without capturable=True): timed eagerly
                torch.cuda.set_stream(stream)  # a failed capture can leave its side stream current
                sync()

        def run() -> None:
            target()
            sync()

        rounds = rounds_for(warm_s, self.profile)
        benchmark.pedantic(run, setup=self.flush, rounds=rounds, warmup_rounds=self.profile.warmup_rounds)
        stats = benchmark.stats.stats
        return stats.median, stats.iqr, target is not fn

    def _rates(self, case: Case, seconds: float) -> dict[str, float | None]:
        peak = self.peaks.tflops_for(case.precision, case.impl)
        return {
            "tflops": case.flops / seconds / 1e12 if seconds > 0 else None,
            "gbps": case.bytes / seconds / 1e9 if seconds > 0 else None,
            "roofline_pct": roofline_pct(case.flops, case.bytes, seconds, peak, self.peaks.copy_gbps),
        }

    def _finish(self, benchmark: Any, case: Case, info: dict[str, Any]) -> None:
        benchmark.group = case.group
        benchmark.extra_info.update({**case.info(), **info})
        if DEVICE.type == "cuda":
            torch.cuda.empty_cache()  # one case's cached blocks never count against the next
        self.sink(results_entry(benchmark))


def _best_seconds(fn: Callable[[], Any], repeats: int, flush: Callable[[], None]) -> float:
    fn()
    sync()
    best = math.inf
    for _ in range(repeats):
        flush()
        start = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - start)
    return best


def measure_peaks(flush: Callable[[], None] = sync) -> Peaks:
    """Copy bandwidth and GEMM throughput (bf16, fp32; int8 by torch._int_mm) of DEVICE, best of several runs
    (a ceiling, not a typical value).

    CUDA: a 1 GiB copy and 8192^3 GEMMs; the CPU: a 256 MiB copy and 1024^3 GEMMs (the quick profile stays quick).
    """
    cuda = DEVICE.type == "cuda"
    numel = (2**30 if cuda else 2**28) // 4
    src = torch.ones(numel, dtype=torch.float32, device=DEVICE)
    dst = torch.empty_like(src)
    copy_s = _best_seconds(partial(dst.copy_, src), 10 if cuda else 3, flush)
    del src, dst
    n = 8192 if cuda else 1024
    rates = []
    for dtype in (torch.bfloat16, torch.float32):
        a = torch.randn(n, n, device=DEVICE).to(dtype)
        b = torch.randn(n, n, device=DEVICE).to(dtype)
        seconds = _best_seconds(partial(torch.matmul, a, b), 10 if cuda else 3, flush)
        rates.append(2 * n**3 / seconds / 1e12)
    a8 = torch.randint(-127, 128, (n, n), dtype=torch.int8, device=DEVICE)
    b8 = torch.randint(-127, 128, (n, n), dtype=torch.int8, device=DEVICE)
    rates.append(2 * n**3 / _best_seconds(partial(torch._int_mm, a8, b8), 10 if cuda else 3, flush) / 1e12)
    return Peaks(2 * 4 * numel / copy_s / 1e9, bf16_tflops=rates[0], fp32_tflops=rates[1], int8_tops=rates[2])
