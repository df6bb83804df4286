"""The measurement core: every suite times, sizes and checks its cases through here, and nowhere else.

Method (per case, `Meter.run`; the rounds themselves are suites/timing.py's):
1. build the inputs, then call the op once: the first call, timed on its own (`first_call_s`, wall clock with a
   synchronisation: Triton compiles and autotunes, cuBLAS creates its handle and loads its kernels, caches fill),
   with Triton's compile and autotune seconds as its listeners report them (`compile_s`, `autotune_s`); its output
   gives the error against an fp32 reference;
2. peak memory (on CUDA of one more call): the op's own tensors, the same definition on both devices
   (`_peak_memory`): the bytes of the tensors the op holds (its closure: inputs, weights, states) plus what the
   call allocates (output; on CUDA its temporaries too, read from the allocator); nothing else that is live (the
   cache-flush buffer, other cases' tensors) counts;
3. the profile's untimed warm-up rounds, then the timed rounds (`timing.run_rounds`): each after a flush of
   twice the last-level cache, timed by CUDA events around the op alone on a GPU (`perf_counter` on the CPU, and
   for ops that work on side streams), until the relative standard error of the median reaches the profile's
   target or its time or round limits; a GPU round run below 75% of the maximum SM clock is discarded as
   throttled; NVML telemetry is sampled and its energy counter read around the rounds (a telemetry failure leaves
   `telemetry` null and says why in `telemetry_error`; the case stands);
4. launch-bound cases (a warm call, timed after a flush, under GRAPH_BELOW_S; never the first, which compiles) may
   opt into CUDA-graph replay (`Profile.cuda_graphs`): a graph holds one call and each round replays it after
   the same flush, so the cache state is an eager round's; an op that cannot be captured is timed eagerly
   (`cuda_graph` says which);
5. the kept rounds go to pytest-benchmark as its own statistics (`timing.hand_over`): its median and IQR are the
   case's `time_s` and `time_iqr_s`, its raw `data` the rounds, kept in the results.
A case that runs out of memory or fails is recorded with that status, and the run goes on.

Device peaks (copy bandwidth, bf16, fp32 and int8 GEMM throughput) are measured once per run by the cases' timer,
so `% of roofline` compares numbers taken on the same machine at the same time; a case's compute ceiling is that
of the arithmetic it runs (`reports.roofline.compute_class`: tensor cores for GEMMs, the vector units' fp32 rate
for elementwise ops), its memory ceiling the copy bandwidth.
"""

from __future__ import annotations

import math
import time
import types
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Any

import torch

from kernels.device import DEVICE
from reports.roofline import compute_class, op_class
from suites.metrics import roofline_bound, roofline_flag, roofline_pct
from suites.timing import (
    THROTTLE_FLOOR,
    Flush,
    Rounds,
    Stopping,
    Timer,
    WallTimer,
    compile_watch,
    default_timer,
    graphed,
    hand_over,
    run_rounds,
    sync,
)

__all__ = [
    "GRAPH_BELOW_S",
    "Case",
    "Meter",
    "Peaks",
    "Profile",
    "error",
    "measure_peaks",
    "results_entry",
    "tracked_bytes",
]

GRAPH_BELOW_S = 50e-6  # a warm call shorter than this is launch-bound: replayed from a CUDA graph when opted in
NOISE_ESTIMATE = "sqrt(pi/2) * (IQR / 1.349) / sqrt(n) / median"  # timing.median_rse, named in machine_info
_OK: dict[str, Any] = {"status": "ok", "error": None, "telemetry": None, "telemetry_error": None}  # a case's start


@dataclass(frozen=True)
class Profile:
    """How hard to measure (suites/shapes.py holds each profile's grids): the untimed warm-up rounds after the warm
    call, when the timed rounds stop (`timing.Stopping`), and whether launch-bound cases (warm call under
    GRAPH_BELOW_S) replay from a CUDA graph."""

    name: str
    warmup_rounds: int
    stopping: Stopping
    cuda_graphs: bool = False


@dataclass(frozen=True)
class Peaks:
    """The device's ceilings, measured in the run: copy bandwidth (GB/s), bf16, fp32 and int8 GEMM (TFLOP/s; fp32
    runs on the vector units, so it is also the ceiling of elementwise ops)."""

    copy_gbps: float
    bf16_tflops: float
    fp32_tflops: float
    int8_tops: float

    def tflops_for(self, precision: str, impl: str, op: str = "matmul") -> float:
        """The compute ceiling of a case: the peak of its `compute_class`.

        Raises:
            ValueError: an op that is neither a GEMM nor elementwise (`reports.roofline.op_class`).
        """
        klass = compute_class(precision, impl, op)
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
    timer: str | None = None  # "perf_counter" to time a GPU op by wall clock (work on side streams); None: device's
    extra: dict[str, Any] = field(default_factory=dict)

    def info(self) -> dict[str, Any]:
        return {**{k: v for k, v in vars(self).items() if k != "extra"}, **self.extra}


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


def _peak_memory(fn: Callable[[], Any], out: Any) -> int:
    """Peak memory of one call of `fn` (step 2 of the method): the bytes of the tensors `fn` holds (inputs,
    weights, states) plus what the call allocates. The CPU sees the output only: `out`, what the first call
    returned (no call more). CUDA's allocator gives the peak of the output and the temporaries together, over one
    more call: its peak over the call less what was allocated before it (so the cache-flush buffer and every
    other live tensor drop out), added to the op's own tensors on the GPU as they were before the call. CUDA's
    count is in the allocator's 512-byte blocks."""
    if DEVICE.type == "cuda":
        sync(DEVICE)
        held = tracked_bytes(fn, device_type=DEVICE.type)
        before = torch.cuda.memory_allocated(DEVICE)
        torch.cuda.reset_peak_memory_stats(DEVICE)
        fn()
        sync(DEVICE)
        return held + int(torch.cuda.max_memory_allocated(DEVICE) - before)
    return tracked_bytes(fn, out)


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
    """The case as pytest-benchmark writes it under `benchmarks` with --benchmark-save-data: its stats with the raw
    round times (`data`, seconds); stats null when untimed."""
    if benchmark.stats is not None:
        return {**benchmark.stats.as_dict(include_data=True), "group": benchmark.group}
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
    (suites/telemetry.py) or None; sink: takes each case's results entry (suites/record.py appends it to disk);
    timer and flush: the device's (`timing.default_timer`, `timing.Flush`) unless given.
    """

    def __init__(
        self,
        profile: Profile,
        peaks: Peaks,
        telemetry: Any,
        sink: Callable[[dict[str, Any]], None],
        timer: Timer | None = None,
        flush: Flush | None = None,
    ):
        self.profile = profile
        self.peaks = peaks
        self.telemetry = telemetry
        self.sink = sink
        self.timer = timer or default_timer(DEVICE)
        self.flush = flush or Flush(DEVICE)
        self._wall = WallTimer(DEVICE)
        max_mhz = getattr(telemetry, "max_sm_clock_mhz", None)
        self.floor_mhz = THROTTLE_FLOOR * max_mhz if max_mhz else None  # rounds below it are throttled

    def method(self) -> dict[str, Any]:
        """How this Meter measures (machine_info["qkbench"]["method"], suites/SCHEMA.md)."""
        return {
            "timer": self.timer.name,
            "timer_spin": getattr(self.timer, "spins", None),  # cuda_event: a spin kernel hides the launch
            "flush_bytes": self.flush.nbytes,
            "cache_bytes": self.flush.cache_bytes,
            "warmup_rounds": self.profile.warmup_rounds,
            "stopping": asdict(self.profile.stopping),
            "noise_estimate": NOISE_ESTIMATE,
            "throttle_floor": THROTTLE_FLOOR if self.floor_mhz else None,
            "cuda_graphs": self.profile.cuda_graphs,
        }

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
        benchmark.group = case.group  # pytest-benchmark copies it into its statistics when they are made
        try:
            if skip:
                info.update(status="skipped", error=skip)
                return
            fn = build()
            timer = self._wall if case.timer == WallTimer.name else self.timer
            with compile_watch() as compiled:
                start = time.perf_counter()
                out = fn()  # compiles, autotunes, loads: timed apart from the steady state
                sync(DEVICE)
                info["first_call_s"] = time.perf_counter() - start
            info.update(compiled)
            if reference is not None:
                info["err_max"], info["err_rel"] = error(out, reference())
            info["peak_mem_bytes"] = _peak_memory(fn, out)
            del out
            target = self._graph_or(fn, timer)
            rounds, energy_mj = self._rounds(timer, target, info)
            stats = hand_over(benchmark, rounds.times, self._options(timer)).stats
            info.update(timer=timer.name, cuda_graph=target is not fn, time_s=stats.median, time_iqr_s=stats.iqr)
            info.update(self._noise(rounds), **self._energy(case, rounds, energy_mj, stats.median))
            info.update(self._rates(case, stats.median))
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

    def _graph_or(self, fn: Callable[[], Any], timer: Timer) -> Callable[[], Any]:
        """`fn` replayed from a CUDA graph when the profile opts in and a warm call, timed after a flush, is
        launch-bound (step 4 of the method); `fn` itself otherwise, or when it cannot be captured."""
        if not (self.profile.cuda_graphs and DEVICE.type == "cuda"):
            return fn
        self.flush()
        if timer(fn) >= GRAPH_BELOW_S:
            return fn
        stream = torch.cuda.current_stream(DEVICE)
        try:
            return graphed(fn, DEVICE)
        except RuntimeError:  # not capturable (a host sync; AdamW without capturable=True): timed eagerly
            torch.cuda.set_stream(stream)  # a failed capture can leave its side stream current
            sync(DEVICE)
            return fn

    def _rounds(self, timer: Timer, target: Callable[[], Any], info: dict[str, Any]) -> tuple[Rounds, float | None]:
        """The warm-up rounds, then the timed rounds (step 3), sampled by NVML where it is open: (the rounds, the
        energy counter's mJ over them or None). Writes the telemetry summary and error into `info`."""
        for _ in range(self.profile.warmup_rounds):
            self.flush()
            timer(target)
        stopping, t = self.profile.stopping, self.telemetry
        if t is None:
            return run_rounds(timer, target, self.flush, stopping), None
        with t.sample():
            before = t.energy_mj()
            rounds = run_rounds(timer, target, self.flush, stopping, t.sm_clock, self.floor_mhz)
            after = t.energy_mj()
        info["telemetry"] = t.summary()
        info["telemetry_error"] = getattr(t, "error", None)
        energy = after - before if before is not None and after is not None and after >= before else None
        return rounds, energy

    def _options(self, timer: Timer) -> dict[str, Any]:
        """pytest-benchmark's `options` of a case, as the rounds were really taken."""
        s = self.profile.stopping
        return {"timer": timer.name, "min_rounds": s.min_rounds, "min_time": s.min_time_s, "max_time": s.timeout_s}

    def _noise(self, rounds: Rounds) -> dict[str, Any]:
        """The stopping rule's record (SCHEMA.md): rounds kept, noise reached against its target, why the rounds
        stopped, whether the case is noisy (missed the target), rounds discarded as throttled (null unjudged)."""
        target = self.profile.stopping.noise
        return {
            "rounds": len(rounds.times),
            "noise": rounds.noise if math.isfinite(rounds.noise) else None,
            "noise_target": target,
            "noisy": not rounds.noise <= target,
            "stop": rounds.stop,
            "throttled_rounds": rounds.throttled if self.floor_mhz else None,
        }

    def _energy(self, case: Case, rounds: Rounds, energy_mj: float | None, seconds: float) -> dict[str, Any]:
        """Energy per call from NVML's counter over the rounds: the board's mean power over them times the median
        time (`energy_busy`: the share of the rounds' wall time the op itself ran; near 1 the figure is the op's,
        lower it borrows the power of the flushes and gaps), per token (M rows of a GEMM) and per GB moved."""
        if energy_mj is None or rounds.wall_s <= 0:
            return {}
        power_w = energy_mj / 1e3 / rounds.wall_s
        joules = power_w * seconds
        tokens = case.M if op_class(case.op) == "gemm" and case.M else None
        return {
            "energy_j": joules,
            "energy_power_w": power_w,
            "energy_busy": rounds.busy_s / rounds.wall_s,
            "j_per_token": joules / tokens if tokens else None,
            "j_per_gb": joules / (case.bytes / 1e9) if case.bytes > 0 else None,
        }

    def _rates(self, case: Case, seconds: float) -> dict[str, Any]:
        """Achieved TFLOP/s and GB/s, % of roofline against the case's ceilings, the binding one, and why a case
        sits above 100% (`metrics.roofline_flag`)."""
        klass = compute_class(case.precision, case.impl, case.op)
        peak = self.peaks.tflops_for(case.precision, case.impl, case.op)
        pct = roofline_pct(case.flops, case.bytes, seconds, peak, self.peaks.copy_gbps)
        bound = roofline_bound(case.flops, case.bytes, peak, self.peaks.copy_gbps)
        ceiling = None if bound is None else "copy" if bound == "memory" else klass
        return {
            "tflops": case.flops / seconds / 1e12 if seconds > 0 else None,
            "gbps": case.bytes / seconds / 1e9 if seconds > 0 else None,
            "roofline_pct": pct,
            "roofline_ceiling": ceiling,
            "roofline_flag": roofline_flag(pct, case.bytes, self.flush.cache_bytes, ceiling),
        }

    def _finish(self, benchmark: Any, case: Case, info: dict[str, Any]) -> None:
        benchmark.group = case.group
        benchmark.extra_info.update({**case.info(), **info})
        if DEVICE.type == "cuda":
            torch.cuda.empty_cache()  # one case's cached blocks never count against the next
        self.sink(results_entry(benchmark))


def _best_seconds(fn: Callable[[], Any], repeats: int, timer: Timer) -> float:
    fn()
    return min(timer(fn) for _ in range(repeats))


def measure_peaks(timer: Timer | None = None) -> Peaks:
    """Copy bandwidth and GEMM throughput (bf16, fp32; int8 by torch._int_mm) of DEVICE, the best of several runs
    timed by `timer` (the cases' timer; the device's by default): a ceiling, not a typical value. No flush: the
    copy is far larger than any cache, the GEMMs are compute-bound.

    CUDA: a 1 GiB copy and 8192^3 GEMMs; the CPU: a 256 MiB copy and 1024^3 GEMMs (the quick profile stays quick).
    """
    timer = timer or default_timer(DEVICE)
    cuda = DEVICE.type == "cuda"
    repeats = 10 if cuda else 3
    numel = (2**30 if cuda else 2**28) // 4
    src = torch.ones(numel, dtype=torch.float32, device=DEVICE)
    dst = torch.empty_like(src)
    copy_s = _best_seconds(partial(dst.copy_, src), repeats, timer)
    del src, dst
    n = 8192 if cuda else 1024
    rates = []
    for dtype in (torch.bfloat16, torch.float32):
        a = torch.randn(n, n, device=DEVICE).to(dtype)
        b = torch.randn(n, n, device=DEVICE).to(dtype)
        rates.append(2 * n**3 / _best_seconds(partial(torch.matmul, a, b), repeats, timer) / 1e12)
    a8 = torch.randint(-127, 128, (n, n), dtype=torch.int8, device=DEVICE)
    b8 = torch.randint(-127, 128, (n, n), dtype=torch.int8, device=DEVICE)
    rates.append(2 * n**3 / _best_seconds(partial(torch._int_mm, a8, b8), repeats, timer) / 1e12)
    return Peaks(2 * 4 * numel / copy_s / 1e9, bf16_tflops=rates[0], fp32_tflops=rates[1], int8_tops=rates[2])
