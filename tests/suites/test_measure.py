"""suites/measure.py: tracked memory, error, ceilings and the Meter's records, with a stand-in benchmark fixture
(pytest-benchmark's own `Metadata`, which copies name and group) and a stand-in timer whose timed round i "takes"
(i + 1)^2 ms after the warm call and the warm-up rounds (suites/timing.py's rules are tested in test_timing.py).
The exact peak-memory figures are the CPU's (storage bytes); CUDA's definition is checked with a fake allocator
here and for real where a GPU runs the tests."""

from __future__ import annotations

import math
import time
from contextlib import contextmanager
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from pytest_benchmark.stats import Metadata

import quant
import quant.optim
import suites.measure
from kernels.device import DEVICE
from reports.roofline import compute_class
from suites.measure import Case, Meter, Peaks, Profile, error, results_entry, tracked_bytes
from suites.timing import Rounds, Stopping

# a noise target no round set reaches: every case runs to max_rounds (5), the median of 1, 4, 9, 16, 25 ms
PROFILE = Profile(
    "test", warmup_rounds=2, stopping=Stopping(1e-9, min_rounds=3, max_rounds=5, min_time_s=0.0, timeout_s=60)
)
PEAKS = Peaks(copy_gbps=50.0, bf16_tflops=2.0, fp32_tflops=0.5, int8_tops=4.0)
CEILINGS = [  # (precision, impl, compute class, ceiling in PEAKS)
    ("bf16", "torch", "bf16", 2.0),
    ("fp16", "torch", "bf16", 2.0),
    ("nf4-dq", "qkbench", "bf16", 2.0),
    ("fp32", "torch", "fp32", 0.5),
    ("adamw32", "qkbench", "fp32", 0.5),
    ("adamw8-paged", "bitsandbytes", "fp32", 0.5),  # 8-bit states, updated in fp32
    ("int8", "bitsandbytes", "int8", 4.0),  # LLM.int8(): int8 tensor cores
    ("int8", "qkbench", "bf16", 2.0),  # W dequantized on chip to bf16
    ("int8", "dequant+torch", "bf16", 2.0),
    ("int8", "unfused", "bf16", 2.0),
]
ELEMENTWISE = [  # (op, precision, impl): memory-bound passes on the vector units, whatever the format
    ("quantize", "nf4", "qkbench"),
    ("quantize", "int8", "bitsandbytes"),
    ("dequantize", "bf16", "torch"),
    ("adamw_step", "adamw8", "bitsandbytes"),
]
CPU_BYTES = pytest.mark.skipif(
    DEVICE.type != "cpu",
    reason="exact storage bytes are the CPU's peak; on CUDA peak_mem_bytes is the allocator's count (512-byte "
    "blocks, temporaries included) of device tensors, and these ops' tensors live on the CPU",
)


class FakeBenchmark:
    """What Meter uses of pytest-benchmark's fixture: group, names, extra_info, `_make_stats` (as pedantic() calls
    it) and stats. `probe()`: what held when the stats were made (right after the rounds)."""

    def __init__(self, probe: Any = None) -> None:
        self.group: str | None = None
        self.name, self.fullname = "test_op[bf16]", "suites/bench_fake.py::test_op[bf16]"
        self.params, self.param, self.extra_info = {"precision": "bf16"}, "bf16", {}
        self.stats: Any = None
        self.cprofile_stats = None
        self._mode: str | None = None
        self.probe, self.seen = probe, None

    def _make_stats(self, iterations: int) -> Metadata:
        self.stats = Metadata(self, iterations=iterations, options={"timer": time.perf_counter, "disable_gc": False})
        self.seen = self.probe() if self.probe else None
        return self.stats


class TinyFlush:
    """The Meter's flush without writing hundreds of MiB a round (the CPU's real one: test_timing.py); counts its
    calls."""

    cache_bytes, nbytes = 2**20, 2**21

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> None:
        self.calls += 1


class FakeTimer:
    """The first `warmup` calls (the warm-up rounds) "take" 1 µs; the timed rounds after them take (k + 1)^2 ms,
    k = 0, 1, ...; `probe()` is called in each timed round."""

    name = "fake"

    def __init__(self, warmup: int = PROFILE.warmup_rounds, probe: Any = None) -> None:
        self.calls, self.warmup, self.probe, self.seen = 0, warmup, probe, []

    def __call__(self, fn: Any) -> float:
        fn()
        k = self.calls - self.warmup
        self.calls += 1
        if k < 0:
            return 1e-6
        if self.probe:
            self.seen.append(self.probe())
        return 1e-3 * (k + 1) ** 2


def _case(precision: str = "bf16", impl: str = "torch", **extra: Any) -> Case:
    case = Case("matmul", "matmul", impl, precision, "8x16", None, 8, 4, 16, flops=3e9, bytes=2e8, baseline=True)
    case.extra.update(extra)
    return case


def _storages(*tensors: torch.Tensor) -> int:
    return sum({t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}.values())


def test_a_storage_counts_once_and_containers_and_closures_are_walked() -> None:
    t, d = torch.zeros(100), torch.zeros(7, dtype=torch.float64)
    assert tracked_bytes(t, t[10:20], t.view(10, 10).T) == 400
    assert tracked_bytes(t, d, t) == 400 + 56
    a, b, c = torch.zeros(10), torch.zeros(20, dtype=torch.int8), torch.zeros(3, dtype=torch.float16)
    assert tracked_bytes({"x": [a, (b,)], "y": {c}}) == 40 + 20 + 6

    def outer() -> Any:
        def inner() -> Any:
            return a.sum() + c.sum()

        return lambda: inner() + b.float().sum()

    assert tracked_bytes(outer()) == 40 + 20 + 6
    assert tracked_bytes(lambda: 1, "text", 3.0, None) == 0
    qt = quant.quantize(torch.randn(64, 64), "int8")
    deq = qt.dequantize  # bench_matmul's dequant+torch op on the CPU holds W through a bound method
    assert tracked_bytes(lambda: a @ deq().T) == tracked_bytes(a, qt) > tracked_bytes(a)


def test_a_device_type_keeps_that_device_s_storages_only() -> None:
    """A GPU case's peak adds the op's tensors on the GPU only (host-side pages are not GPU memory)."""
    t = torch.zeros(100)
    assert tracked_bytes(t, device_type="cpu") == 400
    assert tracked_bytes(t, device_type="cuda") == 0


@pytest.mark.parametrize(("fmt", "dq"), [("nf4", False), ("nf4", True), ("int8", False), ("bf16", False)])
def test_quantized_tensors_are_walked(fmt: str, dq: bool) -> None:
    qt = quant.quantize(torch.randn(64, 96), fmt, blocksize=64, double_quant=dq)
    fields = [qt.data, qt.absmax, qt.code, qt.outlier_cols, qt.outliers]
    if qt.state2 is not None:
        fields += [qt.state2.data, qt.state2.absmax, qt.state2.code]
    expected = _storages(*(t for t in fields if t is not None))
    assert expected >= qt.nbytes > 0
    assert tracked_bytes(qt) == expected
    assert tracked_bytes([qt, qt]) == expected


def test_module_parameters_buffers_and_quantized_attributes() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(16, 4), torch.nn.BatchNorm1d(4))
    # Linear: 16 x 4 weight + 4 bias; BatchNorm: weight, bias, running mean, var (4 each) fp32 + an int64 count
    assert tracked_bytes(model) == (16 * 4 + 4 + 4 * 4) * 4 + 8
    holder = torch.nn.Module()
    holder.w = quant.quantize(torch.randn(64, 64), "nf4")  # a QuantizedTensor held as a plain attribute
    assert tracked_bytes(holder) == _storages(holder.w.data, holder.w.absmax, holder.w.code)


def test_module_plain_tensor_attributes_count() -> None:
    """suites/bench_lora.py's _Unfused keeps a bf16 W as `self.w` (it went uncounted before eafc650)."""
    holder = torch.nn.Module()
    holder.w = torch.zeros(1024, 1024, dtype=torch.bfloat16)
    assert tracked_bytes(holder) == 2 * 1024 * 1024


@pytest.mark.parametrize(("impl", "bits"), [("torch", 32), ("quant", 32), ("quant", 8)])
def test_gradients_and_optimizer_states_count(impl: str, bits: int) -> None:
    """suites/bench_optim.py's step closure holds `opt` and `params`: p, its gradient and the AdamW states."""
    p = torch.nn.Parameter(torch.randn(8192))
    p.grad = torch.randn(8192)
    opt = torch.optim.AdamW([p]) if impl == "torch" else quant.optim.PagedAdamW([p], state_bits=bits)
    opt.step()

    def step() -> torch.Tensor:
        opt.step()
        return p

    assert tracked_bytes(step, step()) >= 2 * p.nbytes + quant.optim.state_bytes(8192, bits)  # m, v at `bits`


def test_error_on_a_known_pair() -> None:
    ref = torch.tensor([1.0, 2.0, 5.0])
    out = torch.tensor([1.0, 2.0, 3.0])
    assert error(out, ref) == pytest.approx((2.0, 2.0 / math.sqrt(1 + 4 + 25)))
    assert error([out, "aux"], ref) == pytest.approx((2.0, 2.0 / math.sqrt(30)))
    assert error(out.to(torch.bfloat16), ref.double()) == pytest.approx((2.0, 2.0 / math.sqrt(30)))
    assert error(torch.tensor([3.0, 4.0]), torch.zeros(2)) == pytest.approx((4.0, 5.0))  # zero ref: absolute norm
    with pytest.raises(ValueError, match=r"out: shape \(3, 1\); expected the reference's \(3,\)"):
        error(out.view(3, 1), ref)  # a broadcast would compare 9 pairs
    assert error(torch.empty(0), torch.empty(0)) == (0.0, 0.0)


def test_case_info_flattens_extra() -> None:
    info = _case(rmse=0.1, numel=128).info()
    assert "extra" not in info and info["rmse"] == 0.1 and info["numel"] == 128
    identity = ("matmul", "matmul", "torch", "bf16", "8x16", 8, 4, 16)
    assert tuple(info[k] for k in ("group", "op", "impl", "precision", "shape", "M", "N", "K")) == identity
    assert info["flops"] == 3e9 and info["bytes"] == 2e8 and info["baseline"] is True and info["kernel"] is None
    untimed = Case("memory", "training_memory", "model", "bf16", "llama-7b").info()  # every case has the cost keys
    assert untimed["flops"] == 0.0 and untimed["bytes"] == 0.0 and untimed["M"] is None


def _run(case: Case, build: Any, **kwargs: Any) -> tuple[FakeBenchmark, list[dict[str, Any]]]:
    sink: list[dict[str, Any]] = []
    telemetry = kwargs.pop("telemetry", None)
    bench = kwargs.pop("bench", None) or FakeBenchmark()
    timer = kwargs.pop("timer", None) or FakeTimer()
    flush = kwargs.pop("flush", None) or TinyFlush()
    Meter(PROFILE, PEAKS, telemetry, sink.append, timer=timer, flush=flush).run(bench, case, build, **kwargs)
    return bench, sink


@pytest.mark.parametrize(("precision", "impl", "klass", "peak_tflops"), CEILINGS)
def test_the_ceiling_is_the_arithmetic_that_runs(precision: str, impl: str, klass: str, peak_tflops: float) -> None:
    assert compute_class(precision, impl) == klass
    assert PEAKS.tflops_for(precision, impl) == peak_tflops


@pytest.mark.parametrize(("op", "precision", "impl"), ELEMENTWISE)
def test_elementwise_ops_are_held_against_the_vector_rate(op: str, precision: str, impl: str) -> None:
    """Not a GEMM peak: a cast or a dequantization at 135-810% of a tensor-core ceiling was the old bug."""
    assert compute_class(precision, impl, op) == "fp32" and PEAKS.tflops_for(precision, impl, op) == 0.5
    assert compute_class(precision, impl, "matmul") != "fp32" or precision.startswith("adamw")


def test_an_op_without_a_class_is_refused() -> None:
    with pytest.raises(ValueError, match=r"op: 'softmax'; expected one of \['adamw_step'"):
        PEAKS.tflops_for("bf16", "torch", "softmax")
    _, sink = _run(Case("norm", "softmax", "torch", "bf16", "8x16", flops=1.0, bytes=1.0), lambda: lambda: 1)
    assert sink[0]["extra_info"]["status"] == "error" and "op: 'softmax'" in sink[0]["extra_info"]["error"]


@pytest.mark.parametrize(("precision", "impl", "klass", "peak_tflops"), CEILINGS)
def test_a_timed_case_has_time_rates_error_and_memory(precision: str, impl: str, klass: str, peak_tflops: float):
    x, w = torch.randn(8, 16), torch.randn(4, 16)
    ref = (x @ w.T).double()
    ref[0, 0] += 2.0
    timer, flush = FakeTimer(), TinyFlush()
    bench, sink = _run(_case(precision, impl), lambda: lambda: x @ w.T, reference=lambda: ref, timer=timer, flush=flush)
    info = bench.extra_info
    assert info["status"] == "ok" and info["error"] is None and info["telemetry"] is None
    assert info["telemetry_error"] is None and info["cuda_graph"] is False and info["timer"] == "fake"
    assert timer.calls == 2 + 5  # the profile's warm-up rounds, the rounds up to max_rounds (no graphs: no warm call)
    assert flush.calls == timer.calls  # the cache flushed before each
    assert info["time_s"] == pytest.approx(9e-3)  # median of 1, 4, 9, 16, 25 ms (mean: 11)
    assert info["time_iqr_s"] == pytest.approx(bench.stats.stats.iqr) and info["time_iqr_s"] > 0
    assert (info["rounds"], info["stop"], info["noise_target"], info["noisy"]) == (5, "max_rounds", 1e-9, True)
    assert info["noise"] > 0.1 and info["throttled_rounds"] is None  # no NVML: no round judged
    assert info["first_call_s"] >= 0 and info["compile_s"] in (0.0, None)  # torch: nothing compiled
    assert info["tflops"] == pytest.approx(3e9 / 9e-3 / 1e12)
    assert info["gbps"] == pytest.approx(2e8 / 9e-3 / 1e9)
    bound = max(3e9 / (peak_tflops * 1e12), 2e8 / (50.0 * 1e9))  # the precision's compute ceiling, copy bandwidth
    assert info["roofline_pct"] == pytest.approx(100 * bound / 9e-3) and info["roofline_flag"] is None
    compute_bound = 3e9 / (peak_tflops * 1e12) >= 2e8 / (50.0 * 1e9)
    assert info["roofline_ceiling"] == (klass if compute_bound else "copy")
    assert info["err_max"] == pytest.approx(2.0, rel=1e-6)
    assert info["err_rel"] == pytest.approx(2.0 / ref.norm().item(), rel=1e-6)
    identity = tuple(info[k] for k in ("group", "op", "precision", "M", "N", "K"))
    assert identity == ("matmul", "matmul", precision, 8, 4, 16)
    assert bench.group == "matmul"
    assert len(sink) == 1 and sink[0]["extra_info"] is bench.extra_info
    assert sink[0]["name"] == bench.name and sink[0]["stats"]["rounds"] == 5
    assert sink[0]["stats"]["data"] == pytest.approx([1e-3, 4e-3, 9e-3, 16e-3, 25e-3])  # the raw rounds, in order
    assert sink[0]["options"]["timer"] == "fake" and sink[0]["options"]["min_rounds"] == 3
    assert sink[0] == results_entry(bench)


def test_a_case_that_meets_its_noise_target_stops_early_and_is_not_noisy() -> None:
    steady = Profile("steady", 0, Stopping(0.05, min_rounds=4, max_rounds=50, min_time_s=0.0, timeout_s=60))
    bench = FakeBenchmark()
    timer = FakeTimer(warmup=0)
    timer_seconds = [1e-3, 1.01e-3, 0.99e-3, 1e-3]

    def steady_timer(fn: Any) -> float:
        fn()
        timer.calls += 1
        return timer_seconds[timer.calls % 4]

    steady_timer.name = "steady"  # type: ignore[attr-defined]
    meter = Meter(steady, PEAKS, None, lambda _: None, timer=steady_timer, flush=TinyFlush())  # type: ignore[arg-type]
    meter.run(bench, _case(), lambda: lambda: 1)
    info = bench.extra_info
    assert (info["stop"], info["rounds"], info["noisy"]) == ("noise", 4, False) and info["noise"] <= 0.05


def test_the_first_call_is_timed_apart_from_the_steady_state() -> None:
    """Triton compiles, cuBLAS loads its kernels on the first call: 0.2 s here, µs after."""
    calls: list[int] = []

    def op() -> torch.Tensor:
        if not calls:
            time.sleep(0.2)
        calls.append(1)
        return torch.ones(2)

    bench, _ = _run(_case(), lambda: op)
    assert bench.extra_info["first_call_s"] >= 0.2 and bench.extra_info["time_s"] == pytest.approx(9e-3)
    # the first call (its output gives the CPU's peak memory; CUDA's takes one call more), warm-up rounds, rounds
    assert len(calls) == 1 + (DEVICE.type == "cuda") + 2 + 5


def test_energy_is_the_rounds_mean_power_times_the_median() -> None:
    meter = Meter(PROFILE, PEAKS, None, lambda _: None, timer=FakeTimer(), flush=TinyFlush())
    rounds = Rounds([1e-3] * 5, throttled=0, stop="noise", noise=0.0, wall_s=2.0, busy_s=0.5)
    gemm = _case()  # M = 8 tokens, 2e8 bytes
    energy = meter._energy(gemm, rounds, energy_mj=600_000.0, seconds=1e-3)  # 600 J over 2 s: 300 W
    assert energy["energy_power_w"] == pytest.approx(300.0) and energy["energy_j"] == pytest.approx(0.3)
    assert energy["energy_busy"] == pytest.approx(0.25)
    assert energy["j_per_token"] == pytest.approx(0.3 / 8) and energy["j_per_gb"] == pytest.approx(0.3 / 0.2)
    quantize = Case("quantize", "quantize", "qkbench", "nf4", "4x4", N=4, K=4, flops=64.0, bytes=5e8)
    energy = meter._energy(quantize, rounds, energy_mj=600_000.0, seconds=1e-3)
    assert energy["j_per_token"] is None and energy["j_per_gb"] == pytest.approx(0.3 / 0.5)  # no tokens
    assert meter._energy(gemm, rounds, energy_mj=None, seconds=1e-3) == {}  # no counter: no energy fields


def test_a_case_above_its_roofline_is_flagged() -> None:
    fast = Peaks(copy_gbps=1e-3, bf16_tflops=1e-6, fp32_tflops=1e-6, int8_tops=1e-6)  # ceilings any op beats
    bench = FakeBenchmark()
    Meter(PROFILE, fast, None, lambda _: None, timer=FakeTimer(), flush=TinyFlush()).run(
        bench, _case(), lambda: lambda: 1
    )
    info = bench.extra_info
    assert info["roofline_pct"] > 100 and info["roofline_ceiling"] == "bf16"
    assert info["roofline_flag"].startswith(f"{info['roofline_pct']:.0f}% of roofline: ")


@CPU_BYTES
def test_peak_memory_is_the_op_s_tensors_and_its_output() -> None:
    x, w = torch.randn(8, 16), torch.randn(4, 16)
    bench, _ = _run(_case(), lambda: lambda: x @ w.T)
    assert bench.extra_info["peak_mem_bytes"] == x.nbytes + w.nbytes + 8 * 4 * 4  # the closure's x, w; the output


def test_cuda_peak_is_the_call_s_allocations_plus_the_held_tensors(monkeypatch: pytest.MonkeyPatch) -> None:
    """CUDA's definition with a fake allocator (runs anywhere): what was allocated before the call (the cache
    flush buffer, other cases' tensors) drops out; the call's peak (output + temporaries) and the op's tensors
    on the device count."""
    alloc = {"now": 100 * 2**20, "peak": 0}  # 100 MiB live before the call: the flush buffer and others

    def malloc(nbytes: int) -> None:
        alloc["now"] += nbytes
        alloc["peak"] = max(alloc["peak"], alloc["now"])

    def op() -> str:
        malloc(3000)  # a temporary and the output
        malloc(-1000)  # the temporary freed
        return "out"

    held: list[tuple[Any, ...]] = []
    fake_cuda = {
        "synchronize": lambda *_: None,
        "memory_allocated": lambda *_: alloc["now"],
        "max_memory_allocated": lambda *_: alloc["peak"],
        "reset_peak_memory_stats": lambda *_: alloc.update(peak=alloc["now"]),
    }
    for name, fake in fake_cuda.items():
        monkeypatch.setattr(torch.cuda, name, fake)
    monkeypatch.setattr(suites.measure, "DEVICE", torch.device("cuda"))
    monkeypatch.setattr(suites.measure, "tracked_bytes", lambda *objs, **kw: held.append((objs, kw)) or 768)
    assert suites.measure._peak_memory(op, None) == 3000 + 768
    assert held == [((op,), {"device_type": "cuda"})]


@pytest.mark.skipif(DEVICE.type != "cuda", reason="CUDA's allocator count needs a GPU")
def test_cuda_peak_leaves_out_other_live_tensors() -> None:
    unrelated = torch.empty(64 * 2**20, dtype=torch.uint8, device=DEVICE)  # live, not the op's
    x, w = torch.randn(256, 1024, device=DEVICE), torch.randn(512, 1024, device=DEVICE)
    bench, _ = _run(_case(), lambda: lambda: x @ w.T)
    held, out = x.nbytes + w.nbytes, 256 * 512 * 4
    assert held + out <= bench.extra_info["peak_mem_bytes"] <= held + out + 2**20  # blocks; no flush, no unrelated
    del unrelated


@pytest.mark.skipif(DEVICE.type != "cuda", reason="CUDA graphs need a GPU")
def test_launch_bound_cases_replay_one_call_per_graph_and_uncapturable_ones_run_eagerly(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(suites.measure, "GRAPH_BELOW_S", 1.0)  # launch-bound, whatever this machine's latency
    graphs = Profile("graphs", warmup_rounds=1, stopping=Stopping(0.01, 3, 5, 0.0, 1.0), cuda_graphs=True)
    x = torch.ones(16, device=DEVICE)

    def uncapturable() -> torch.Tensor:
        if torch.cuda.is_current_stream_capturing():
            raise RuntimeError("not capturable: reads back to the host")
        return x + 1

    for op, graphed in ((lambda: x + 1, True), (uncapturable, False)):
        bench = FakeBenchmark()
        Meter(graphs, PEAKS, None, lambda _: None).run(bench, _case(), lambda op=op: op)
        info = bench.extra_info
        assert info["status"] == "ok" and info["cuda_graph"] is graphed and info["time_s"] > 0
        assert torch.cuda.current_stream(DEVICE) == torch.cuda.default_stream(DEVICE)


def test_the_timed_entry_carries_the_case_group() -> None:
    """pytest-benchmark's Metadata copies the fixture's group when made: Meter must set it before timing."""
    _, sink = _run(_case(), lambda: lambda: torch.ones(3))
    assert sink[0]["group"] == "matmul"


def _raise(exc: BaseException) -> Any:
    def fail(*_: Any) -> Any:
        raise exc

    return fail


@pytest.mark.parametrize("where", ["build", "op", "reference", "after"])
def test_a_failure_is_recorded_as_error_and_the_entry_still_sent(where: str) -> None:
    boom = _raise(ValueError("boom: shapes 3 and 5 differ"))
    build = boom if where == "build" else (lambda: boom) if where == "op" else (lambda: lambda: torch.ones(2))
    kwargs = {"reference": boom} if where == "reference" else {"after": boom} if where == "after" else {}
    bench, sink = _run(_case(), build, **kwargs)
    assert bench.extra_info["status"] == "error"
    assert bench.extra_info["error"] == "ValueError: boom: shapes 3 and 5 differ"
    assert len(sink) == 1 and sink[0]["extra_info"]["status"] == "error" and sink[0]["name"] == bench.name
    assert bench.extra_info["group"] == "matmul" and bench.group == "matmul"
    if where != "after":
        assert sink[0]["stats"] is None and "time_s" not in bench.extra_info and sink[0]["group"] == "matmul"


def test_long_errors_are_cut_and_oom_keeps_its_first_line() -> None:
    bench, _ = _run(_case(), _raise(RuntimeError("x" * 2000)))
    assert bench.extra_info["error"].startswith("RuntimeError: xxx") and len(bench.extra_info["error"]) == 500
    bench, _ = _run(_case(), _raise(torch.cuda.OutOfMemoryError("Tried to allocate 2.00 GiB\nstack")))
    assert bench.extra_info["status"] == "oom"
    assert bench.extra_info["error"] == "OutOfMemoryError: Tried to allocate 2.00 GiB"


def test_a_skipped_case_is_recorded_without_running() -> None:
    calls: list[str] = []
    build = lambda: calls.append("build") or (lambda: None)  # noqa: E731
    after = lambda: calls.append("after") or {}  # noqa: E731
    bench, sink = _run(_case(), build, skip="interpreted: not timed", after=after)
    assert calls == [] and bench.stats is None
    assert bench.extra_info["status"] == "skipped" and bench.extra_info["error"] == "interpreted: not timed"
    assert "time_s" not in bench.extra_info and "peak_mem_bytes" not in bench.extra_info
    assert len(sink) == 1 and sink[0]["stats"] is None and sink[0]["extra_info"]["op"] == "matmul"


def test_after_metrics_are_merged_after_timing() -> None:
    bench, sink = _run(_case(state_bytes_per_param=2.03125), lambda: lambda: torch.ones(3), after=lambda: {"pi": 3})
    assert bench.extra_info["pi"] == 3 and bench.extra_info["state_bytes_per_param"] == 2.03125
    assert bench.extra_info["time_s"] == pytest.approx(9e-3) and sink[0]["extra_info"]["pi"] == 3
    assert "err_max" not in bench.extra_info  # no reference


@CPU_BYTES
def test_an_output_without_held_tensors_is_its_own_bytes() -> None:
    bench, _ = _run(_case(), lambda: lambda: torch.ones(3))
    assert bench.extra_info["peak_mem_bytes"] == 12  # 3 floats


def _telemetry(**fields: Any) -> SimpleNamespace:
    """A stand-in NVML sampler: `active` while its sample() block runs; no clock, no energy unless given."""

    @contextmanager
    def sample() -> Any:
        telemetry.active = True
        yield
        telemetry.active = False

    telemetry = SimpleNamespace(active=False, error=None, sample=sample, max_sm_clock_mhz=None)
    telemetry.sm_clock, telemetry.energy_mj = lambda: None, lambda: None
    telemetry.summary = lambda: {"sm_clock_mhz": 1980.0, "throttle_reasons": []}
    vars(telemetry).update(fields)
    return telemetry


def test_telemetry_samples_while_the_rounds_run() -> None:
    telemetry = _telemetry()
    timer = FakeTimer(probe=lambda: telemetry.active)
    bench, _ = _run(_case(), lambda: lambda: torch.ones(2), telemetry=telemetry, timer=timer)
    assert timer.seen == [True] * 5 and telemetry.active is False
    assert bench.extra_info["telemetry"] == telemetry.summary() and bench.extra_info["telemetry_error"] is None


def test_rounds_below_75_percent_of_the_maximum_sm_clock_are_discarded() -> None:
    clocks = iter([1900.0, 1000.0] * 10)  # every other round throttled (1000 < 0.75 * 2000)
    telemetry = _telemetry(max_sm_clock_mhz=2000.0, sm_clock=lambda: next(clocks))
    bench, sink = _run(_case(), lambda: lambda: torch.ones(2), telemetry=telemetry)
    info = bench.extra_info
    assert info["throttled_rounds"] == 4 and info["rounds"] == 5  # rounds 1, 3, 5, 7, 9 kept
    assert sink[0]["stats"]["data"] == pytest.approx([1e-3, 9e-3, 25e-3, 49e-3, 81e-3])
    assert info["time_s"] == pytest.approx(25e-3)


def test_energy_comes_from_nvml_s_counter_around_the_rounds() -> None:
    readings = iter([1_000_000.0, 1_000_500.0])  # 0.5 J over the rounds
    telemetry = _telemetry(energy_mj=lambda: next(readings))
    bench, _ = _run(_case(), lambda: lambda: torch.ones(2), telemetry=telemetry)
    info = bench.extra_info
    assert info["energy_power_w"] > 0 and info["energy_j"] == pytest.approx(info["energy_power_w"] * 9e-3)
    assert info["j_per_token"] == pytest.approx(info["energy_j"] / 8)
    assert "energy_j" not in _run(_case(), lambda: lambda: torch.ones(2))[0].extra_info  # no NVML: no energy


def test_a_telemetry_failure_is_recorded_and_the_case_stands() -> None:
    @contextmanager
    def sample() -> Any:
        yield
        telemetry.error = "NVMLError_GpuIsLost: GPU is lost"

    telemetry = _telemetry(sample=sample, summary=lambda: None)
    bench, _ = _run(_case(), lambda: lambda: torch.ones(2), telemetry=telemetry)
    info = bench.extra_info
    assert info["status"] == "ok" and info["time_s"] == pytest.approx(9e-3)
    assert info["telemetry"] is None and info["telemetry_error"] == "NVMLError_GpuIsLost: GPU is lost"


def test_the_method_is_recorded_for_machine_info() -> None:
    method = Meter(PROFILE, PEAKS, None, lambda _: None, timer=FakeTimer(), flush=TinyFlush()).method()
    assert method["timer"] == "fake" and method["timer_spin"] is None  # not an event timer
    assert (method["flush_bytes"], method["cache_bytes"], method["warmup_rounds"]) == (2**21, 2**20, 2)
    assert method["stopping"] == {"noise": 1e-9, "min_rounds": 3, "max_rounds": 5, "min_time_s": 0.0, "timeout_s": 60}
    assert method["noise_estimate"] == "sqrt(pi/2) * (IQR / 1.349) / sqrt(n) / median"
    assert method["throttle_floor"] is None  # no NVML clock to judge by
    judged = Meter(PROFILE, PEAKS, _telemetry(max_sm_clock_mhz=1980.0), lambda _: None, flush=TinyFlush())
    assert judged.method()["throttle_floor"] == 0.75 and judged.floor_mhz == pytest.approx(1485.0)
