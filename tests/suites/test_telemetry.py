"""suites/telemetry.py with a fake NVML: readings and their summary, failures that degrade to no telemetry (never
an error of the case), and how torch's CUDA device is found in NVML (PCI bus id, UUID, MIG, CUDA_VISIBLE_DEVICES)."""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from suites.measure import Meter
from suites.telemetry import Telemetry, nvml_handle, open_telemetry
from tests.suites.test_measure import PEAKS, PROFILE, FakeBenchmark, TinyFlush, _case


class NVMLError(Exception):
    """pynvml.NVMLError's stand-in."""


class FakeNVML:
    """The nvidia-ml-py calls telemetry.py makes. `fail_after`: reads that succeed before every read raises;
    devices: NVML's own list of (uuid, pci bus id, parent index or None for a GPU)."""

    NVML_CLOCK_SM, NVML_CLOCK_MEM, NVML_TEMPERATURE_GPU = 0, 1, 0

    def __init__(self, fail_after: int | None = None, devices: list[tuple[str, str, int | None]] | None = None):
        self.fail_after, self.reads = fail_after, 0
        self.devices = devices or [("GPU-0000", "00000000:18:00.0", None)]

    def _read(self, value: Any) -> Any:
        if self.fail_after is not None and self.reads > self.fail_after:
            raise NVMLError("GPU is lost")
        return value

    def nvmlDeviceGetCurrentClocksThrottleReasons(self, h: int) -> int:
        self.reads += 1
        return self._read(0x1 | 0x4)  # idle (dropped) and the software power cap

    def nvmlDeviceGetClockInfo(self, h: int, clock: int) -> int:
        return self._read(1980 if clock == self.NVML_CLOCK_SM else 2619)

    def nvmlDeviceGetPowerUsage(self, h: int) -> int:
        return self._read(350_000)

    def nvmlDeviceGetTemperature(self, h: int, sensor: int) -> int:
        return self._read(61)

    def nvmlDeviceGetMaxClockInfo(self, h: int, clock: int) -> int:
        return 1980 if clock == self.NVML_CLOCK_SM else 2619

    def nvmlDeviceGetTotalEnergyConsumption(self, h: int) -> int:
        self.reads += 1
        return self._read(123_456_789)

    def nvmlDeviceGetEnforcedPowerLimit(self, h: int) -> int:
        return 700_000  # mW

    def nvmlDeviceGetEccMode(self, h: int) -> list[int]:
        return [1, 1]  # current, pending

    def nvmlDeviceGetPersistenceMode(self, h: int) -> int:
        return 0

    def nvmlDeviceGetMigMode(self, h: int) -> list[int]:
        raise NVMLError("Not Supported")  # no MIG on this GPU

    def nvmlDeviceGetDefaultApplicationsClock(self, h: int, clock: int) -> int:
        return 1755 if clock == self.NVML_CLOCK_SM else 2619

    def _find(self, column: int, key: Any) -> int:
        for i, device in enumerate(self.devices):
            if device[column] == key:
                return i
        raise NVMLError(f"not found: {key}")

    def nvmlDeviceGetHandleByPciBusId(self, bus_id: str) -> int:
        return self._find(1, bus_id)

    def nvmlDeviceGetHandleByUUID(self, uuid: str) -> int:
        return self._find(0, uuid)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        if not 0 <= index < len(self.devices):
            raise NVMLError(f"no device {index}")
        return index

    def nvmlDeviceIsMigDeviceHandle(self, handle: int) -> int:
        return int(self.devices[handle][2] is not None)

    def nvmlDeviceGetDeviceHandleFromMigDeviceHandle(self, handle: int) -> int:
        parent = self.devices[handle][2]
        assert parent is not None
        return parent


def _sampled(telemetry: Telemetry, until: Any = lambda: True, seconds: float = 0.05) -> None:
    """A sampled block of `seconds`, longer if need be until `until()` (5 s at most)."""
    start = time.monotonic()
    with telemetry.sample():
        while time.monotonic() - start < seconds or (not until() and time.monotonic() - start < 5):
            time.sleep(0.005)


def test_readings_are_summarised() -> None:
    telemetry = Telemetry(FakeNVML(), 0)
    _sampled(telemetry)
    summary = telemetry.summary()
    assert summary is not None and telemetry.error is None
    assert summary["sm_clock_mhz"] == 1980 and summary["mem_clock_mhz"] == 2619
    assert summary["power_w"] == 350.0 and summary["temp_c"] == 61
    assert summary["throttle_reasons"] == ["sw_power_cap"] and summary["samples"] >= 1


@pytest.mark.parametrize("fail_after", [0, 2])
def test_a_failing_read_degrades_to_no_telemetry(fail_after: int) -> None:
    """At once (the final read too) or after a few readings in the thread: nothing raised, summary None."""
    nvml = FakeNVML(fail_after=fail_after)
    telemetry = Telemetry(nvml, 0)
    _sampled(telemetry, until=lambda: nvml.reads > fail_after)  # the old final read in `finally` raised here
    assert telemetry.summary() is None and telemetry.error == "NVMLError: GPU is lost"
    reads = nvml.reads
    time.sleep(0.03)
    assert nvml.reads == reads  # the sampling stopped
    nvml.fail_after = None
    _sampled(telemetry)  # the next case starts afresh
    assert telemetry.error is None and telemetry.summary() is not None


def test_the_gpu_s_settings_for_machine_info() -> None:
    facts = Telemetry(FakeNVML(), 0).facts()
    assert facts == {
        "sm_clock_max_mhz": 1980.0,
        "mem_clock_max_mhz": 2619.0,
        "sm_clock_default_mhz": 1755.0,
        "mem_clock_default_mhz": 2619.0,
        "sm_clock_applications_mhz": None,  # not in this NVML (FakeNVML lacks it): unknown, not an error
        "power_limit_w": 700.0,
        "ecc": True,
        "persistence": False,
        "mig": None,  # NVMLError_NotSupported
    }


def test_the_sm_clock_and_the_energy_counter() -> None:
    nvml = FakeNVML()
    telemetry = Telemetry(nvml, 0)
    assert telemetry.max_sm_clock_mhz == 1980.0
    assert telemetry.sm_clock() == 1980.0 and telemetry.energy_mj() == 123_456_789.0
    nvml.fail_after = 0
    assert telemetry.energy_mj() is None and telemetry.error is None  # no counter: no energy, not a failure
    assert telemetry.sm_clock() is None and telemetry.error == "NVMLError: GPU is lost"
    nvml.fail_after = None
    assert telemetry.sm_clock() is None  # after a failure the rounds go unjudged until the next sample() block


def test_the_case_stands_when_telemetry_fails() -> None:
    bench, sink = FakeBenchmark(), []
    Meter(PROFILE, PEAKS, Telemetry(FakeNVML(fail_after=0), 0), sink.append, flush=TinyFlush()).run(
        bench, _case(), lambda: lambda: torch.ones(2)
    )
    info = bench.extra_info
    assert info["status"] == "ok" and info["error"] is None and info["time_s"] > 0
    assert info["telemetry"] is None and info["telemetry_error"] == "NVMLError: GPU is lost"
    assert len(sink) == 1


GPUS = [  # NVML's order (PCI bus order): two GPUs and a MIG instance of the second
    ("GPU-aaaa", "00000000:18:00.0", None),
    ("GPU-bbbb", "00000000:3B:00.0", None),
    ("MIG-cccc", "00000000:3B:00.0", 1),
]


def _props(uuid: str | None = None, pci: tuple[int, int, int] | None = None) -> SimpleNamespace:
    props = SimpleNamespace(uuid=uuid)
    if pci is not None:
        props.pci_domain_id, props.pci_bus_id, props.pci_device_id = pci
    return props


@pytest.mark.parametrize(
    ("props", "visible", "index", "expected"),
    [
        (_props("bbbb", (0, 0x3B, 0)), "GPU-bbbb", 0, 1),  # by PCI bus id, whatever CUDA_VISIBLE_DEVICES says
        (_props("bbbb", (0, 0x3B, 0)), "0", 0, 1),  # CUDA's order (fastest first) need not be NVML's
        (_props("bbbb"), "GPU-bbbb", 0, 1),  # a torch without PCI ids: by UUID
        (_props("GPU-bbbb"), None, 0, 1),  # a UUID already prefixed
        (_props("cccc"), "MIG-cccc", 0, 1),  # a MIG instance: its GPU's clocks and power
        (_props(None), "GPU-bbbb", 0, 1),  # no UUID either: CUDA_VISIBLE_DEVICES' entry
        (_props(None), "1,0", 1, 0),  # an index there is taken as NVML's (the old behaviour)
        (_props(None), None, 1, 1),  # nothing else: torch's index
    ],
)
def test_the_gpu_is_found_by_pci_bus_id_then_uuid(props: Any, visible: str | None, index: int, expected: int):
    assert nvml_handle(FakeNVML(devices=GPUS), props, visible, index) == expected


def test_an_unmatched_gpu_is_no_telemetry_not_another_gpu_s() -> None:
    with pytest.raises(LookupError, match="CUDA device 0: no NVML device matches"):
        nvml_handle(FakeNVML(devices=GPUS), _props("dddd"), "GPU-dddd", 0)


def test_no_nvidia_device_is_no_telemetry() -> None:
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    assert open_telemetry(0) is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="NVML's clocks and energy counter need an NVIDIA GPU")
def test_a_real_gpu_s_clock_energy_and_settings() -> None:
    """Where a GPU runs the tests: NVML is found for torch's device, its clock and energy counter move."""
    telemetry = open_telemetry(torch.cuda.current_device())
    if telemetry is None:
        pytest.skip("nvidia-ml-py is not installed or NVML does not list this GPU")
    assert telemetry.max_sm_clock_mhz is not None and telemetry.max_sm_clock_mhz > 500
    a = torch.randn(4096, 4096, device="cuda", dtype=torch.bfloat16)
    before = telemetry.energy_mj()
    start = time.monotonic()
    while time.monotonic() - start < 0.5:  # busy long enough for the counter's updates
        a @ a
        torch.cuda.synchronize()
    after, clock = telemetry.energy_mj(), telemetry.sm_clock()
    assert clock is not None and 0 < clock <= telemetry.max_sm_clock_mhz
    if before is not None and after is not None:  # Volta and later
        assert 10.0 < (after - before) / 1e3 / 0.5 < 1500.0  # watts: between idle and any board's limit
    facts = telemetry.facts()
    assert facts["sm_clock_max_mhz"] == telemetry.max_sm_clock_mhz and set(facts) >= {"power_limit_w", "ecc", "mig"}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA events and NVML need a GPU")
def test_a_gpu_case_end_to_end() -> None:
    """The Meter with the GPU's own timer, flush and telemetry on a bf16 GEMM: events, judged rounds, energy."""
    from suites.measure import Case, Profile, measure_peaks
    from suites.timing import Stopping, default_timer

    device = torch.device("cuda", torch.cuda.current_device())
    timer = default_timer(device)
    profile = Profile("gpu-test", warmup_rounds=2, stopping=Stopping(0.005, 10, 2000, min_time_s=0.1, timeout_s=5.0))
    meter = Meter(profile, measure_peaks(timer), open_telemetry(device.index), lambda _: None, timer=timer)
    x = torch.randn(2048, 4096, device=device, dtype=torch.bfloat16)
    w = torch.randn(4096, 4096, device=device, dtype=torch.bfloat16)
    case = Case("matmul", "matmul", "torch", "bf16", "4096x4096", None, 2048, 4096, 4096)
    case.flops, case.bytes = 2.0 * 2048 * 4096 * 4096, 2.0 * (4096 * 4096 + 2048 * 8192)
    bench = FakeBenchmark()
    meter.run(bench, case, lambda: lambda: x @ w.T)
    info = bench.extra_info
    assert info["status"] == "ok", info["error"]
    assert info["timer"] == "cuda_event" and info["rounds"] >= 10 and info["stop"] in ("noise", "timeout", "max_rounds")
    assert 0 < info["roofline_pct"] <= 100 or info["roofline_flag"]
    assert info["first_call_s"] > 0 and len(bench.stats.stats.data) == info["rounds"]
    if meter.telemetry is not None:
        assert isinstance(info["throttled_rounds"], int) and info["telemetry"]["samples"] >= 1
        if "energy_j" in info:
            assert info["energy_j"] > 0 and 0 < info["energy_busy"] <= 1.0
