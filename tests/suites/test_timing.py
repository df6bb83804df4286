"""suites/timing.py: the noise estimate, the stopping rule (noise, minimum time, round cap, timeout, throttled
rounds), the timers, the flush size, Triton's compile listener and the hand-over to pytest-benchmark's own fixture.
The stopping rule runs on scripted round times and a scripted wall clock; the GPU timers run where a GPU is."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from pytest_benchmark.fixture import BenchmarkFixture

from kernels.device import DEVICE
from suites.timing import (
    MIN_KEPT,
    EventTimer,
    Flush,
    Stopping,
    WallTimer,
    compile_watch,
    cpu_cache_bytes,
    hand_over,
    median_rse,
    run_rounds,
)

CUDA = pytest.mark.skipif(DEVICE.type != "cuda", reason="CUDA events, the L2 size and torch.cuda._sleep need a GPU")


class Script:
    """A timer that "takes" the scripted seconds per round (cycling), and the wall clock they advance, plus
    `flush_s` of flushing before each round; `calls` counts the rounds."""

    name = "script"

    def __init__(self, seconds: list[float], flush_s: float = 0.0) -> None:
        self.seconds, self.flush_s, self.now, self.calls = seconds, flush_s, 0.0, 0

    def __call__(self, fn: Any) -> float:
        fn()
        t = self.seconds[self.calls % len(self.seconds)]
        self.calls += 1
        self.now += t
        return t

    def flush(self) -> None:
        self.now += self.flush_s

    def clock(self) -> float:
        return self.now


def _rounds(script: Script, stopping: Stopping, **kwargs: Any) -> Any:
    return run_rounds(script, lambda: None, script.flush, stopping, clock=script.clock, **kwargs)


def test_median_rse_by_hand() -> None:
    # pytest-benchmark's quartiles of 1..5 (odd n, "method 3"): q1 = 0.25*1 + 0.75*2, q3 = 0.75*4 + 0.25*5
    iqr, median = 4.25 - 1.75, 3.0
    expected = math.sqrt(math.pi / 2) * (iqr / 1.349) / math.sqrt(5) / median
    assert median_rse([5.0, 1.0, 4.0, 2.0, 3.0]) == pytest.approx(expected)
    assert median_rse([2.0, 2.0, 2.0]) == 0.0
    assert median_rse([1.0]) == math.inf and median_rse([]) == math.inf
    assert median_rse([0.0, 0.0, 0.0]) == math.inf


def test_one_far_outlier_barely_moves_the_estimate() -> None:
    """IQR-based: a 100x round among 40 similar ones is not a 100x noise (a std-based estimate would be)."""
    steady = [1.0 + 0.01 * (i % 5) for i in range(40)]
    assert median_rse([*steady, 100.0]) < 2 * median_rse(steady)


def test_rounds_stop_when_the_noise_is_reached() -> None:
    script = Script([1e-3])
    rounds = _rounds(script, Stopping(0.01, min_rounds=4, max_rounds=50, min_time_s=0.0, timeout_s=10.0))
    assert (rounds.stop, len(rounds.times), rounds.noise, rounds.throttled) == ("noise", 4, 0.0, 0)
    assert rounds.busy_s == pytest.approx(4e-3) and rounds.wall_s == pytest.approx(4e-3)


def test_rounds_run_until_the_minimum_time() -> None:
    script = Script([1e-3], flush_s=1e-3)
    rounds = _rounds(script, Stopping(0.01, min_rounds=4, max_rounds=50, min_time_s=0.0195, timeout_s=10.0))
    assert rounds.stop == "noise" and len(rounds.times) == 10  # 10 x (1 ms flush + 1 ms op) >= 19.5 ms of wall


def test_rounds_stop_at_the_cap_when_the_noise_stays_high() -> None:
    script = Script([1e-3, 3e-3])
    rounds = _rounds(script, Stopping(0.001, min_rounds=2, max_rounds=8, min_time_s=0.0, timeout_s=10.0))
    assert rounds.stop == "max_rounds" and len(rounds.times) == 8 and rounds.noise > 0.001
    assert rounds.times == [1e-3, 3e-3] * 4  # in the order they ran


def test_rounds_stop_at_the_timeout_flushes_included() -> None:
    script = Script([1e-3, 3e-3], flush_s=0.1)
    rounds = _rounds(script, Stopping(0.001, min_rounds=2, max_rounds=1000, min_time_s=0.0, timeout_s=1.0))
    assert rounds.stop == "timeout" and len(rounds.times) == 10  # 10 x (0.1 s flush + ~2 ms) passes 1 s
    assert rounds.wall_s >= 1.0 and rounds.busy_s == pytest.approx(0.02)


def test_a_timeout_waits_for_a_few_rounds() -> None:
    script = Script([2.0])  # each round alone passes the timeout
    rounds = _rounds(script, Stopping(0.001, min_rounds=10, max_rounds=100, min_time_s=0.0, timeout_s=1.0))
    assert rounds.stop == "timeout" and len(rounds.times) == MIN_KEPT


def test_throttled_rounds_are_discarded_and_counted() -> None:
    script = Script([1e-3, 9e-3])  # the slow rounds are the throttled ones
    clocks = iter([1980.0, 900.0] * 100)
    stopping = Stopping(0.01, min_rounds=5, max_rounds=50, min_time_s=0.0, timeout_s=10.0)
    rounds = _rounds(script, stopping, sm_clock=lambda: next(clocks), floor_mhz=0.75 * 1980)
    assert rounds.stop == "noise" and rounds.times == [1e-3] * 5 and rounds.throttled == 4
    assert rounds.busy_s == pytest.approx(5e-3 + 4 * 9e-3)  # the op's time over every round run
    unread = _rounds(Script([1e-3, 9e-3]), stopping, sm_clock=lambda: None, floor_mhz=1485.0)
    assert unread.throttled == 0 and 9e-3 in unread.times  # a clock NVML could not read judges nothing


def test_every_round_throttled_is_an_error() -> None:
    with pytest.raises(RuntimeError, match=r"every one of the \d+ rounds ran throttled \(SM clock below 1485 MHz\)"):
        _rounds(Script([0.4]), Stopping(0.01, 3, 50, 0.0, 1.0), sm_clock=lambda: 600.0, floor_mhz=1485.0)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ((0.0, 3, 5, 0.0, 1.0), "noise: 0.0; expected > 0"),
        ((0.01, 0, 5, 0.0, 1.0), "min_rounds: 0; expected >= 1"),
        ((0.01, 6, 5, 0.0, 1.0), r"max_rounds: 5; expected >= min_rounds \(6\)"),
        ((0.01, 3, 5, -1.0, 1.0), "min_time_s: -1.0; expected >= 0"),
        ((0.01, 3, 5, 0.0, 0.0), "timeout_s: 0.0; expected > 0"),
    ],
)
def test_stopping_refuses_impossible_limits(fields: tuple[Any, ...], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Stopping(*fields)


def test_the_wall_timer_times_the_call() -> None:
    assert 0.02 <= WallTimer(torch.device("cpu"))(lambda: time.sleep(0.02)) < 1.0


@pytest.mark.parametrize(("text", "size"), [("491520K", 480 * 2**20), ("32M", 32 * 2**20), ("huge", 32 * 2**20)])
def test_the_cpu_cache_size_is_read_from_sysfs(tmp_path: Path, text: str, size: int) -> None:
    (tmp_path / "size").write_text(text + "\n")
    assert cpu_cache_bytes(tmp_path / "size") == size
    assert cpu_cache_bytes(tmp_path / "absent") == 32 * 2**20


def test_the_cpu_flush_writes_twice_the_last_level_cache() -> None:
    if DEVICE.type != "cpu":
        pytest.skip("the CPU's flush")
    flush = Flush(torch.device("cpu"))
    assert flush.cache_bytes == cpu_cache_bytes() and flush.nbytes == 2 * flush.cache_bytes
    flush._buffer.fill_(7)
    flush()
    assert int(flush._buffer.max()) == 0


@CUDA
def test_the_gpu_flush_is_twice_its_own_l2() -> None:
    flush = Flush(DEVICE)
    assert flush.nbytes == 2 * torch.cuda.get_device_properties(DEVICE).L2_cache_size > 0


@CUDA
def test_events_time_the_op_alone() -> None:
    """A spin of 2e6 cycles (1 ms at 2 GHz, longer at lower clocks) is timed as such by the events; a tiny op's
    event time leaves out the launch latency that the wall timer (launch + synchronisation) includes."""
    timer = EventTimer(DEVICE)
    spun = min(timer(lambda: torch.cuda._sleep(2_000_000)) for _ in range(5))
    assert 0.5e-3 < spun < 5e-3
    x = torch.ones(16, device=DEVICE)
    events = sorted(timer(lambda: x.add_(1)) for _ in range(21))[10]
    wall = sorted(WallTimer(DEVICE)(lambda: x.add_(1)) for _ in range(21))[10]
    assert 0 < events < wall


def _fixture(name: str = "test_op[bf16]") -> BenchmarkFixture:
    """pytest-benchmark's own fixture, built as its plugin builds it (a stand-in node and logger)."""
    node = SimpleNamespace(name=name, _nodeid=f"suites/bench_fake.py::{name}")
    added: list[Any] = []
    fixture = BenchmarkFixture(
        node,
        disable_gc=False,
        timer=SimpleNamespace(target=time.perf_counter),
        min_rounds=5,
        min_time=0.000005,
        max_time=1.0,
        warmup=False,
        warmup_iterations=0,
        calibration_precision=10,
        add_stats=added.append,
        logger=SimpleNamespace(debug=lambda *a, **k: None, info=lambda *a, **k: None),
        warner=lambda *a, **k: None,
        disabled=False,
        cprofile=False,
        cprofile_loops=None,
        cprofile_dump=None,
    )
    fixture.added = added  # type: ignore[attr-defined]
    return fixture


def test_the_rounds_are_handed_to_pytest_benchmark_s_own_fixture() -> None:
    fixture = _fixture()
    fixture.group = "matmul"
    times = [3e-3, 1e-3, 2e-3, 5e-3, 4e-3]
    options = {"timer": "cuda_event", "min_rounds": 10, "min_time": 0.1, "max_time": 15.0}
    metadata = hand_over(fixture, times, options)
    assert fixture.stats is metadata and fixture.added == [metadata]  # registered with the session
    assert metadata.stats.median == 3e-3 and metadata.stats.rounds == 5 and metadata.iterations == 1
    entry = json.loads(json.dumps(metadata.as_dict(include_data=True)))  # what --benchmark-save-data writes
    assert entry["stats"]["data"] == times and entry["group"] == "matmul"
    assert entry["options"]["timer"] == "cuda_event" and entry["options"]["max_time"] == 15.0
    with pytest.raises(RuntimeError, match="already used"):
        hand_over(fixture, times, options)
    used = _fixture()
    used.pedantic(lambda: None, rounds=1)
    with pytest.raises(RuntimeError, match=r"already used \(benchmark.pedantic"):
        hand_over(used, times, options)


@pytest.fixture
def knobs() -> Iterator[Any]:
    knobs = pytest.importorskip("triton.knobs")
    before = (knobs.compilation.listener, knobs.autotuning.listener)
    yield knobs
    knobs.compilation.listener, knobs.autotuning.listener = before


def test_compile_time_comes_from_triton_s_listeners(knobs: Any) -> None:
    heard: list[bool] = []
    knobs.compilation.listener = lambda **event: heard.append(event["cache_hit"])  # someone else's listener
    times = knobs.CompileTimes(ir_initialization=200_000, lowering_stages=[("ttir", 300_000)], store_results=0)
    with compile_watch() as seen:
        knobs.compilation.listener(src=None, metadata={}, metadata_group={}, times=times, cache_hit=False)
        knobs.compilation.listener(src=None, metadata={}, metadata_group={}, times=times, cache_hit=True)
        knobs.autotuning.listener(fn=None, key=(), best_config=None, configs_timings={}, duration=1.5, cache_hit=False)
    assert seen == {"compile_s": pytest.approx(1.0), "kernels_compiled": 1, "kernels_cached": 1, "autotune_s": 1.5}
    assert heard == [False, True]  # chained, and restored after the block
    assert knobs.autotuning.listener is None and knobs.compilation.listener is not None
    knobs.compilation.listener(src=None, metadata={}, metadata_group={}, times=times, cache_hit=False)
    assert seen["kernels_compiled"] == 1
