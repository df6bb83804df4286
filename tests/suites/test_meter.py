"""suites/measure.py: the Meter's statuses, metrics and records, with a stand-in for pytest-benchmark's fixture."""

from __future__ import annotations

import statistics
from types import SimpleNamespace
from typing import Any

import pytest
import torch

import quant
from suites.measure import Case, Meter, Peaks, Profile, error, rounds_for, tracked_bytes

PROFILE = Profile("test", warmup_rounds=1, min_rounds=3, max_rounds=5, budget_s=0.01)
PEAKS = Peaks(copy_gbps=100.0, bf16_tflops=10.0, fp32_tflops=1.0, int8_tops=20.0)


class FakeBenchmark:
    """What Meter uses of pytest-benchmark's fixture: pedantic(), stats, group, extra_info, names."""

    def __init__(self) -> None:
        self.group: str | None = None
        self.name, self.fullname, self.params, self.param = "test_x[a]", "t.py::test_x[a]", {"p": 1}, "a"
        self.extra_info: dict[str, Any] = {}
        self.stats: Any = None
        self.rounds = 0

    def pedantic(self, target: Any, setup: Any, rounds: int, warmup_rounds: int) -> None:
        times = []
        for i in range(warmup_rounds + rounds):
            setup()
            target()
            if i >= warmup_rounds:
                times.append(1e-3 * (1 + len(times)))  # 1, 2, 3 ... ms: a known median
        self.rounds = rounds
        q1, _, q3 = statistics.quantiles(times, n=4)
        inner = SimpleNamespace(median=statistics.median(times), iqr=q3 - q1)
        entry = {"group": self.group, "name": self.name, "extra_info": self.extra_info, "stats": {"median": 1}}
        self.stats = SimpleNamespace(stats=inner, as_dict=lambda include_data=False: entry)


def _meter() -> tuple[Meter, list[dict[str, Any]]]:
    sink: list[dict[str, Any]] = []
    return Meter(PROFILE, PEAKS, None, sink.append), sink


def _case() -> Case:
    return Case("matmul", "matmul", "torch", "bf16", "8x8", M=8, N=8, K=8, flops=2e9, bytes=1e8, baseline=True)


def test_a_timed_case_records_time_rates_error_and_memory() -> None:
    meter, sink = _meter()
    bench = FakeBenchmark()
    x = torch.randn(8, 8)
    meter.run(bench, _case(), lambda: lambda: x @ x.T, reference=lambda: (x @ x.T).double() + 1.0)
    info = bench.extra_info
    assert info["status"] == "ok" and info["error"] is None
    median = statistics.median([1e-3 * (i + 1) for i in range(bench.rounds)])
    assert info["time_s"] == pytest.approx(median)
    assert info["tflops"] == pytest.approx(2e9 / median / 1e12)
    assert info["gbps"] == pytest.approx(1e8 / median / 1e9)
    bound = max(2e9 / (PEAKS.bf16_tflops * 1e12), 1e8 / (PEAKS.copy_gbps * 1e9))
    assert info["roofline_pct"] == pytest.approx(100 * bound / median)
    assert info["err_max"] == pytest.approx(1.0)
    assert info["peak_mem_bytes"] == 2 * x.nbytes  # x (the closure) and the output
    assert info["group"] == "matmul" and info["baseline"] is True and bench.group == "matmul"
    assert sink == [bench.stats.as_dict()]


def test_failures_are_recorded_and_the_run_goes_on() -> None:
    meter, sink = _meter()
    bench = FakeBenchmark()

    def build() -> Any:
        raise RuntimeError("shape mismatch in the case")

    meter.run(bench, _case(), build)
    assert bench.extra_info["status"] == "error"
    assert "RuntimeError: shape mismatch in the case" in bench.extra_info["error"]
    assert "time_s" not in bench.extra_info
    assert len(sink) == 1 and sink[0]["stats"] is None and sink[0]["name"] == "test_x[a]"


def test_out_of_memory_is_its_own_status() -> None:
    meter, _ = _meter()
    bench = FakeBenchmark()

    def build() -> Any:
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB\nmore detail")

    meter.run(bench, _case(), build)
    assert bench.extra_info["status"] == "oom"
    assert bench.extra_info["error"].endswith("Tried to allocate 2 GiB")


def test_skipped_cases_are_recorded_with_the_reason() -> None:
    meter, sink = _meter()
    bench = FakeBenchmark()
    built = []
    meter.run(bench, _case(), lambda: built.append(1) or (lambda: None), skip="not timed here")
    assert bench.extra_info["status"] == "skipped" and bench.extra_info["error"] == "not timed here"
    assert not built and len(sink) == 1


def test_after_metrics_and_case_extras_are_merged() -> None:
    meter, _ = _meter()
    bench = FakeBenchmark()
    case = _case()
    case.extra["state_bytes_per_param"] = 2.03125
    meter.run(bench, case, lambda: lambda: torch.zeros(2), after=lambda: {"page_ins": 7})
    assert bench.extra_info["page_ins"] == 7 and bench.extra_info["state_bytes_per_param"] == 2.03125
    assert "extra" not in case.info() and case.info()["state_bytes_per_param"] == 2.03125


def test_record_keeps_the_metrics_as_given() -> None:
    meter, sink = _meter()
    bench = FakeBenchmark()
    meter.record(bench, Case("memory", "training_memory", "model", "bf16", "llama-7b"), total_bytes=123)
    assert bench.extra_info["total_bytes"] == 123 and bench.extra_info["status"] == "ok"
    assert sink[0]["stats"] is None


def test_tracked_bytes_counts_each_storage_once() -> None:
    a = torch.zeros(100)
    view = a[10:20]
    assert tracked_bytes(a, view, [a], {"k": view}) == 400
    module = torch.nn.Linear(4, 3, bias=True)
    assert tracked_bytes(module) == (12 + 3) * 4
    qt = quant.quantize(torch.randn(64, 64), "nf4")
    assert qt.absmax is not None and qt.code is not None
    expected = qt.data.nbytes + qt.absmax.nbytes + qt.code.untyped_storage().nbytes()
    assert tracked_bytes(qt) == expected
    assert tracked_bytes(lambda: a.sum() + view.sum()) == 400  # a closure's tensors


def test_error_and_rounds() -> None:
    ref = torch.tensor([3.0, 4.0])
    assert error(torch.tensor([3.0, 4.5]), ref) == pytest.approx((0.5, 0.1))
    assert error((torch.tensor([3.0, 4.0]), "aux"), ref) == (0.0, 0.0)
    assert rounds_for(1.0, PROFILE) == PROFILE.min_rounds
    assert rounds_for(1e-6, PROFILE) == PROFILE.max_rounds
    assert rounds_for(0.0025, PROFILE) == 4
    assert PEAKS.tflops_for("fp32") == 1.0 and PEAKS.tflops_for("int8") == 20.0 and PEAKS.tflops_for("nf4") == 10.0
