"""NVML telemetry while a case runs: SM and memory clocks, power, temperature, throttle reasons.

`Telemetry(index)` opens the device through nvidia-ml-py; `with telemetry.sample():` runs a sampling thread
(every `PERIOD_S`, and once at the end) and `.summary()` gives the medians and the union of throttle reasons
in SCHEMA.md's form. Without an NVIDIA device (or without nvidia-ml-py) `open_telemetry` returns None and the
cases record `telemetry: null`.
"""

from __future__ import annotations

import statistics
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["PERIOD_S", "Telemetry", "open_telemetry"]

PERIOD_S = 0.01

_REASONS = {  # nvmlClocksEventReason* / nvmlClocksThrottleReason* bit -> name
    0x1: "gpu_idle",
    0x2: "applications_clocks",
    0x4: "sw_power_cap",
    0x8: "hw_slowdown",
    0x10: "sync_boost",
    0x20: "sw_thermal",
    0x40: "hw_thermal",
    0x80: "hw_power_brake",
    0x100: "display_clocks",
}


class Telemetry:
    """Samples one NVML device; see the module docstring."""

    def __init__(self, nvml: Any, handle: Any) -> None:
        self._nvml = nvml
        self._handle = handle
        self._samples: list[dict[str, Any]] = []

    def _read(self) -> dict[str, Any]:
        n, h = self._nvml, self._handle
        mask = n.nvmlDeviceGetCurrentClocksThrottleReasons(h)
        return {
            "sm_clock_mhz": n.nvmlDeviceGetClockInfo(h, n.NVML_CLOCK_SM),
            "mem_clock_mhz": n.nvmlDeviceGetClockInfo(h, n.NVML_CLOCK_MEM),
            "power_w": n.nvmlDeviceGetPowerUsage(h) / 1000.0,
            "temp_c": n.nvmlDeviceGetTemperature(h, n.NVML_TEMPERATURE_GPU),
            "reasons": {name for bit, name in _REASONS.items() if mask & bit and name != "gpu_idle"},
        }

    @contextmanager
    def sample(self) -> Iterator[None]:
        """Sample every PERIOD_S while the block runs (at least once, at its end)."""
        self._samples = []
        stop = threading.Event()

        def loop() -> None:
            while not stop.wait(PERIOD_S):
                self._samples.append(self._read())

        thread = threading.Thread(target=loop, name="nvml-telemetry", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()
            self._samples.append(self._read())

    def summary(self) -> dict[str, Any]:
        """Medians of the last `sample()` block's readings and the throttle reasons seen in any of them."""
        samples = self._samples
        out: dict[str, Any] = {
            key: statistics.median(s[key] for s in samples)
            for key in ("sm_clock_mhz", "mem_clock_mhz", "power_w", "temp_c")
        }
        out["throttle_reasons"] = sorted(set().union(*(s["reasons"] for s in samples)))
        out["samples"] = len(samples)
        return out


def open_telemetry(device_index: int) -> Telemetry | None:
    """Telemetry for CUDA device `device_index`, or None where NVML is unavailable (no NVIDIA driver)."""
    try:
        import pynvml

        pynvml.nvmlInit()
        return Telemetry(pynvml, pynvml.nvmlDeviceGetHandleByIndex(device_index))
    except Exception:  # ImportError, NVMLError_LibraryNotFound, NVMLError_DriverNotLoaded, ...
        return None
