"""The rounds of a case: timers, the cache flush, the noise-based stopping rule, CUDA-graph replay, Triton's
compile time, and the hand-over of the rounds to pytest-benchmark. suites/measure.py's Meter drives them.

Timers (one per case, recorded in its `timer`):
- "cuda_event" (a GPU's default): CUDA events recorded on the current stream around the op alone. A spin kernel
  (`torch.cuda._sleep`) queued before the start event holds the stream while the host enqueues the start event,
  the op and the end event, so the host's launch latency stays out of the time (nvbench's blocking kernel); it is
  sized from the previous round's enqueue time. The flush runs before the spin, outside the events.
- "perf_counter" (the CPU's; on a GPU, for ops whose work runs on side streams that the current stream's events
  do not wait for, such as the paged optimizer's page-outs): host wall time of the op followed by a device-wide
  synchronisation, after one before it.

Flush (`Flush`): before every round a buffer of twice the last-level cache is written: on a GPU twice the device's
own L2 (`torch.cuda.get_device_properties(d).L2_cache_size`), on the CPU twice its L3 as sysfs reports it.

Stopping (`Stopping`, `run_rounds`): nvbench's rule on a robust noise estimate. Rounds run until the relative
standard error of their median (`median_rse`: sqrt(pi/2) * (IQR / 1.349) / sqrt(n) / median, the normal
approximation of the median's standard error with sigma estimated from the interquartile range, so that a few slow
outliers do not inflate it) is at most the target, once at least `min_rounds` rounds and `min_time_s` wall seconds
of rounds are in; or until `max_rounds`; or until `timeout_s` wall seconds (flushes included) have passed with at least
MIN_KEPT rounds kept (with fewer, because rounds were throttled, at twice `timeout_s`). Where NVML reads the SM
clock, a round run below THROTTLE_FLOOR of the GPU's maximum SM clock is discarded (and counted) as throttled, as
nvbench does.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from pytest_benchmark.stats import Stats

__all__ = [
    "MIN_KEPT",
    "STOPS",
    "THROTTLE_FLOOR",
    "EventTimer",
    "Flush",
    "Rounds",
    "Stopping",
    "Timer",
    "WallTimer",
    "compile_watch",
    "cpu_cache_bytes",
    "default_timer",
    "graphed",
    "hand_over",
    "median_rse",
    "run_rounds",
    "sync",
]

SQRT_HALF_PI = math.sqrt(math.pi / 2)  # the median's standard error in sigma / sqrt(n), for normal data
IQR_PER_SIGMA = 1.349  # a normal distribution's interquartile range, in sigma
# a timeout ends the rounds once this many are kept (throttling: at 2x timeout): 6, the fewest with which the
# regression gate's Mann-Whitney U test (reports/gate.py, normal approximation) can reach p < 0.01
MIN_KEPT = 6
THROTTLE_FLOOR = 0.75  # a round below this share of the maximum SM clock is throttled (nvbench: 75% of default)
STOPS = ("noise", "timeout", "max_rounds")


def sync(device: torch.device) -> None:
    """Wait for every stream of `device` (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass(frozen=True)
class Stopping:
    """When a case's rounds stop (the module docstring's rule); `noise` is a fraction (0.005 is 0.5%).

    Raises:
        ValueError: a field out of range (named, with its value).
    """

    noise: float
    min_rounds: int
    max_rounds: int
    min_time_s: float  # wall seconds of rounds (flushes included) before the noise may stop them
    timeout_s: float  # wall seconds of rounds (flushes included) after which they stop, noise reached or not

    def __post_init__(self) -> None:
        checks = {
            "noise": self.noise > 0,
            "min_rounds": self.min_rounds >= 1,
            "max_rounds": self.max_rounds >= self.min_rounds,
            "min_time_s": self.min_time_s >= 0,
            "timeout_s": self.timeout_s > 0,
        }
        expected = {
            "noise": "> 0",
            "min_rounds": ">= 1",
            "max_rounds": f">= min_rounds ({self.min_rounds})",
            "min_time_s": ">= 0",
            "timeout_s": "> 0",
        }
        for name, ok in checks.items():
            if not ok:
                raise ValueError(f"{name}: {getattr(self, name)!r}; expected {expected[name]}")


def median_rse(times: Sequence[float]) -> float:
    """Relative standard error of the median of `times`: sqrt(pi/2) * (IQR / 1.349) / sqrt(n) / median, with the
    IQR and the median as pytest-benchmark computes them; inf for fewer than two rounds or a median <= 0."""
    if len(times) < 2:
        return math.inf
    stats = Stats()
    for t in times:
        stats.update(t)
    if stats.median <= 0:
        return math.inf
    return SQRT_HALF_PI * (stats.iqr / IQR_PER_SIGMA) / math.sqrt(len(times)) / stats.median


class Timer(Protocol):
    """Times one call of an op, in seconds; `name` is what a case records as its `timer`."""

    name: str

    def __call__(self, fn: Callable[[], Any]) -> float: ...


class WallTimer:
    """Host wall time of `fn()` between two device-wide synchronisations ("perf_counter")."""

    name = "perf_counter"

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def __call__(self, fn: Callable[[], Any]) -> float:
        sync(self.device)
        start = time.perf_counter()
        fn()
        sync(self.device)
        return time.perf_counter() - start


class EventTimer:
    """GPU time of `fn()` between two CUDA events on the current stream, a spin kernel ahead of them ("cuda_event")."""

    name = "cuda_event"
    SPIN_CYCLES_PER_S = 2.0e9  # above any supported GPU's SM clock: a spin sized by it lasts at least that long
    MAX_SPIN_S = 1e-3  # past it the op is host-bound: its launch gaps are part of its time anyway

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._start = torch.cuda.Event(enable_timing=True)
        self._end = torch.cuda.Event(enable_timing=True)
        self._spin: Callable[[int], None] | None = getattr(torch.cuda, "_sleep", None)  # absent: launch gaps count
        self._spin_s = 50e-6
        self.spins = self._spin is not None  # recorded in machine_info's method

    def __call__(self, fn: Callable[[], Any]) -> float:
        enqueue = time.perf_counter()
        if self._spin is not None:
            self._spin(int(self._spin_s * self.SPIN_CYCLES_PER_S))
        self._start.record()
        fn()
        self._end.record()
        host_s = time.perf_counter() - enqueue
        self._end.synchronize()
        self._spin_s = min(2 * host_s + 20e-6, self.MAX_SPIN_S)  # outlast the next round's enqueue
        return self._start.elapsed_time(self._end) / 1e3  # elapsed_time is in ms


def default_timer(device: torch.device) -> Timer:
    """The device's timer: CUDA events on a GPU, perf_counter on the CPU."""
    return EventTimer(device) if device.type == "cuda" else WallTimer(device)


def cpu_cache_bytes(sysfs: Path = Path("/sys/devices/system/cpu/cpu0/cache/index3/size")) -> int:
    """The CPU's last-level (L3) cache from Linux sysfs ("491520K", "32M"); 32 MiB assumed where it cannot be read."""
    size = 32 * 2**20
    try:
        text = sysfs.read_text().strip()
        size = int(text.rstrip("KkMm")) * (2**20 if text[-1] in "Mm" else 2**10)
    except (OSError, ValueError, IndexError):
        pass
    return size


class Flush:
    """Evicts the device's last-level cache by writing twice its size (`cache_bytes`: the GPU's L2 from its
    properties, the CPU's L3 from sysfs). The write is queued on the current stream: the timers order it."""

    def __init__(self, device: torch.device) -> None:
        if device.type == "cuda":
            self.cache_bytes = int(torch.cuda.get_device_properties(device).L2_cache_size)
        else:
            self.cache_bytes = cpu_cache_bytes()
        self.nbytes = 2 * self.cache_bytes
        self._buffer = torch.empty(self.nbytes, dtype=torch.uint8, device=device)

    def __call__(self) -> None:
        self._buffer.zero_()


@dataclass(frozen=True)
class Rounds:
    """The rounds of one case: the kept times (seconds, in order), how many were throttled (discarded), why they
    stopped (one of STOPS), the achieved noise (`median_rse` of the kept times), the rounds' wall seconds and the
    seconds the op itself took over every round run (throttled ones included)."""

    times: list[float]
    throttled: int
    stop: str
    noise: float
    wall_s: float
    busy_s: float


def run_rounds(
    timer: Timer,
    target: Callable[[], Any],
    flush: Callable[[], None],
    stopping: Stopping,
    sm_clock: Callable[[], float | None] | None = None,
    floor_mhz: float | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> Rounds:
    """Time `target` round after round, `flush()` before each, until `stopping` says stop (module docstring).

    sm_clock: reads the SM clock (MHz) after each round, None when it cannot; a round read below `floor_mhz` is
    discarded as throttled. clock: the wall clock of the timeout (seconds). The noise is checked at min_rounds and
    then as the count grows by 1/16 (so a long run costs O(n log^2 n), not O(n^2 log n)).

    Raises:
        RuntimeError: every round ran throttled (none kept by twice timeout_s).
    """
    times: list[float] = []
    throttled, busy = 0, 0.0
    check_at = stopping.min_rounds
    start = clock()
    while True:
        flush()
        seconds = timer(target)
        busy += seconds
        mhz = sm_clock() if sm_clock is not None else None
        if floor_mhz is not None and mhz is not None and mhz < floor_mhz:
            throttled += 1
        else:
            times.append(seconds)
        wall = clock() - start
        n = len(times)
        if n >= check_at and wall >= stopping.min_time_s:
            check_at = n + max(1, n // 16)
            if median_rse(times) <= stopping.noise:
                stop = "noise"
                break
        if n >= stopping.max_rounds:
            stop = "max_rounds"
            break
        if wall >= stopping.timeout_s and (n >= MIN_KEPT or (throttled and wall >= 2 * stopping.timeout_s)):
            stop = "timeout"
            break
    if not times:
        raise RuntimeError(f"every one of the {throttled} rounds ran throttled (SM clock below {floor_mhz:.0f} MHz)")
    return Rounds(times, throttled, stop, median_rse(times), wall, busy)


def graphed(fn: Callable[[], Any], device: torch.device) -> Callable[[], Any]:
    """A callable that replays one call of `fn` captured in a CUDA graph (one call, so that the round's flush
    precedes it as it precedes an eager call: each replay starts from the same cold cache)."""
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):
        fn()  # warm-up on a side stream before capture, as torch.cuda.graphs asks
    torch.cuda.current_stream(device).wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay


def hand_over(benchmark: Any, times: Sequence[float], options: dict[str, Any]) -> Any:
    """Give pytest-benchmark the rounds the Meter timed, as its `pedantic` mode records its own: a Metadata made by
    the fixture (so its table, --benchmark-json and --benchmark-save-data see the case), one round a time
    (`iterations` 1), its `options` set to how the rounds were really taken. Returns the Metadata.

    Raises:
        RuntimeError: the fixture was already used (pytest-benchmark allows one use per test).
    """
    if getattr(benchmark, "_mode", None):
        raise RuntimeError(f"the benchmark fixture was already used ({benchmark._mode})")
    benchmark._mode = "suites.timing.hand_over(...)"
    metadata = benchmark._make_stats(1)  # what pedantic() calls: registers the case with the session
    for t in times:
        metadata.stats.update(t)
    metadata.options = {**metadata.options, **options}
    return metadata


@contextmanager
def compile_watch() -> Iterator[dict[str, Any]]:
    """While the block runs, Triton's compilations and autotuning as its listeners report them: a dict of
    compile_s (seconds compiling, cache hits' loading included), kernels_compiled, kernels_cached (found in
    Triton's on-disk cache) and autotune_s (seconds benchmarking configs). All None where this Triton has no
    listeners (`triton.knobs`, Triton >= 3.4); listeners set by others are kept and still called."""
    seen: dict[str, Any] = {"compile_s": 0.0, "kernels_compiled": 0, "kernels_cached": 0, "autotune_s": 0.0}
    try:
        from triton import knobs

        compilation, autotuning = knobs.compilation, knobs.autotuning
        before = (compilation.listener, autotuning.listener)
    except (ImportError, AttributeError):
        yield dict.fromkeys(seen)
        return

    def on_compile(**event: Any) -> None:
        seen["compile_s"] += event["times"].total / 1e6  # CompileTimes are in microseconds
        seen["kernels_cached" if event["cache_hit"] else "kernels_compiled"] += 1
        if before[0] is not None:
            before[0](**event)

    def on_autotune(**event: Any) -> None:
        seen["autotune_s"] += event.get("duration") or 0.0
        if before[1] is not None:
            before[1](**event)

    compilation.listener, autotuning.listener = on_compile, on_autotune
    try:
        yield seen
    finally:
        compilation.listener, autotuning.listener = before
