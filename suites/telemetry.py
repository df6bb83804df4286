"""NVML telemetry while a case runs: SM and memory clocks, power, temperature, throttle reasons, energy; and the
GPU's settings for machine_info (maximum and default clocks, power limit, ECC, persistence, MIG).

`open_telemetry(index)` finds torch's CUDA device `index` in NVML (`nvml_handle`: by PCI bus id, then UUID, so
that CUDA_VISIBLE_DEVICES given as indices, UUIDs or MIG instances, and CUDA's own device order, all lead to the
physical GPU) and opens it through nvidia-ml-py; `with telemetry.sample():` runs a sampling thread (every
`PERIOD_S`, and once at the end) and `.summary()` gives the medians and the union of throttle reasons in
SCHEMA.md's form. `sm_clock()` reads the SM clock once (the Meter calls it after every round to discard the
throttled ones, against `max_sm_clock_mhz`), `energy_mj()` NVML's total-energy counter (the Meter reads it around
the rounds), `facts()` the settings. Without an NVIDIA device (or without nvidia-ml-py, or where the GPU cannot
be matched) `open_telemetry` returns None and the cases record `telemetry: null`. An NVML read that fails while sampling
ends the sampling, never the case: `.summary()` is then None and `.error` says why (the case records it as
`telemetry_error`).
"""

from __future__ import annotations

import os
import statistics
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

__all__ = ["PERIOD_S", "Telemetry", "nvml_handle", "open_telemetry"]

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
        self.error: str | None = None  # why the last `sample()` block's readings failed, if they did
        self.max_sm_clock_mhz: float | None = _setting(nvml, "nvmlDeviceGetMaxClockInfo", handle, nvml.NVML_CLOCK_SM)

    def sm_clock(self) -> float | None:
        """The SM clock now (MHz); None once a read failed (the failure is kept in `error`, never raised)."""
        if self.error is not None:
            return None
        try:
            return float(self._nvml.nvmlDeviceGetClockInfo(self._handle, self._nvml.NVML_CLOCK_SM))
        except Exception as exc:  # NVMLError_GpuIsLost, ...: the rounds stand, unjudged
            self.error = f"{type(exc).__name__}: {exc}"[:300]
            return None

    def energy_mj(self) -> float | None:
        """NVML's total-energy counter (mJ since the driver loaded); None where the GPU lacks it (before Volta) or
        the read fails (no energy is then recorded; the case stands)."""
        try:
            return float(self._nvml.nvmlDeviceGetTotalEnergyConsumption(self._handle))
        except Exception:  # NVMLError_NotSupported, ...
            return None

    def facts(self) -> dict[str, Any]:
        """The GPU's settings that decide its speed (machine_info["qkbench"]["gpu"]); a setting NVML cannot read
        (not supported on this GPU or driver) is None."""
        n, h = self._nvml, self._handle
        ecc = _setting(n, "nvmlDeviceGetEccMode", h)
        mig = _setting(n, "nvmlDeviceGetMigMode", h)
        limit = _setting(n, "nvmlDeviceGetEnforcedPowerLimit", h)
        persistence = _setting(n, "nvmlDeviceGetPersistenceMode", h)
        return {
            "sm_clock_max_mhz": self.max_sm_clock_mhz,
            "mem_clock_max_mhz": _setting(n, "nvmlDeviceGetMaxClockInfo", h, n.NVML_CLOCK_MEM),
            "sm_clock_default_mhz": _setting(n, "nvmlDeviceGetDefaultApplicationsClock", h, n.NVML_CLOCK_SM),
            "mem_clock_default_mhz": _setting(n, "nvmlDeviceGetDefaultApplicationsClock", h, n.NVML_CLOCK_MEM),
            "sm_clock_applications_mhz": _setting(n, "nvmlDeviceGetApplicationsClock", h, n.NVML_CLOCK_SM),
            "power_limit_w": None if limit is None else limit / 1000.0,  # NVML gives mW
            "ecc": None if ecc is None else bool(ecc[0]),  # (current, pending)
            "persistence": None if persistence is None else bool(persistence),
            "mig": None if mig is None else bool(mig[0]),  # (current, pending)
        }

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

    def _take(self) -> bool:
        """Append one reading; on an NVML failure keep its message in `error` instead, and say False."""
        try:
            self._samples.append(self._read())
        except Exception as exc:  # NVMLError_GpuIsLost, _Unknown, ...: no telemetry, but the case stands
            self.error = f"{type(exc).__name__}: {exc}"[:300]
            return False
        return True

    @contextmanager
    def sample(self) -> Iterator[None]:
        """Sample every PERIOD_S while the block runs (at least once, at its end); a failed read stops the
        sampling and is kept in `error`, never raised."""
        self._samples, self.error = [], None
        stop = threading.Event()

        def loop() -> None:
            while not stop.wait(PERIOD_S) and self._take():
                pass

        thread = threading.Thread(target=loop, name="nvml-telemetry", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()
            if self.error is None:
                self._take()

    def summary(self) -> dict[str, Any] | None:
        """Medians of the last `sample()` block's readings and the throttle reasons seen in any of them; None
        when a reading failed (`error` says why): part of a block's readings would misstate it."""
        samples = self._samples
        if self.error is not None or not samples:
            return None
        out: dict[str, Any] = {
            key: statistics.median(s[key] for s in samples)
            for key in ("sm_clock_mhz", "mem_clock_mhz", "power_w", "temp_c")
        }
        out["throttle_reasons"] = sorted(set().union(*(s["reasons"] for s in samples)))
        out["samples"] = len(samples)
        return out


def _setting(nvml: Any, name: str, *args: Any) -> Any:
    """NVML's function `name` called with args, or None where NVML cannot say (NVMLError_NotSupported on this GPU,
    a driver or nvidia-ml-py without it, ...); an int comes back as a float."""
    try:
        value = getattr(nvml, name)(*args)
    except Exception:  # a setting NVML does not know here
        return None
    return float(value) if isinstance(value, int) and not isinstance(value, bool) else value


def _pci_bus_id(props: Any) -> str | None:
    """NVML's form of a device's PCI address ("00000000:3B:00.0") from torch's properties; None where this
    torch does not give it (pci_domain_id, pci_bus_id, pci_device_id)."""
    ids = [getattr(props, name, None) for name in ("pci_domain_id", "pci_bus_id", "pci_device_id")]
    if not all(isinstance(i, int) for i in ids):
        return None
    domain, bus, device = ids
    return f"{domain:08X}:{bus:02X}:{device:02X}.0"


def _physical(nvml: Any, handle: Any) -> Any:
    """The GPU itself for a MIG instance's handle (clocks, power and temperature are the GPU's), else handle."""
    try:
        is_mig = nvml.nvmlDeviceIsMigDeviceHandle(handle)
    except Exception:  # a driver or GPU without MIG: not a MIG handle
        return handle
    return nvml.nvmlDeviceGetDeviceHandleFromMigDeviceHandle(handle) if is_mig else handle


def nvml_handle(nvml: Any, props: Any, visible: str | None, index: int) -> Any:
    """NVML's handle of the GPU behind torch's CUDA device `index`, whose properties are `props`
    (`torch.cuda.get_device_properties`); `visible` is CUDA_VISIBLE_DEVICES.

    Tried in order, the first that NVML finds wins: the PCI bus id (exact, whatever the device order or MIG);
    the UUID, as a GPU's and as a MIG instance's; CUDA_VISIBLE_DEVICES' entry for `index` (an index, or a UUID
    NVML knows); torch's index itself only without CUDA_VISIBLE_DEVICES. A MIG instance resolves to its GPU.

    Raises:
        LookupError: nothing matched (telemetry of another GPU would be worse than none).
    """
    by_uuid: Callable[[str], Any] = nvml.nvmlDeviceGetHandleByUUID
    tries: list[tuple[Callable[[Any], Any], Any]] = []
    pci = _pci_bus_id(props)
    if pci is not None:
        tries.append((nvml.nvmlDeviceGetHandleByPciBusId, pci))
    uuid = str(getattr(props, "uuid", "") or "").removeprefix("GPU-").removeprefix("MIG-")
    if uuid:
        tries += [(by_uuid, f"GPU-{uuid}"), (by_uuid, f"MIG-{uuid}")]
    entries = [e.strip() for e in visible.split(",")] if visible else []
    entry = entries[index] if index < len(entries) else ""
    if entry.isdigit():
        tries.append((nvml.nvmlDeviceGetHandleByIndex, int(entry)))
    elif entry:
        tries.append((by_uuid, entry))
    elif not entries:
        tries.append((nvml.nvmlDeviceGetHandleByIndex, index))
    for lookup, key in tries:
        try:
            handle = lookup(key)
        except Exception:  # NVMLError_NotFound, _InvalidArgument, ...: the next way
            continue
        return _physical(nvml, handle)
    raise LookupError(f"CUDA device {index}: no NVML device matches (tried {[key for _, key in tries]})")


def open_telemetry(device_index: int) -> Telemetry | None:
    """Telemetry for torch's CUDA device `device_index`, or None where NVML is unavailable (no NVIDIA driver,
    no nvidia-ml-py) or does not list that GPU."""
    try:
        import pynvml

        pynvml.nvmlInit()
        props = torch.cuda.get_device_properties(device_index)
        handle = nvml_handle(pynvml, props, os.environ.get("CUDA_VISIBLE_DEVICES"), device_index)
        return Telemetry(pynvml, handle)
    except Exception:  # ImportError, NVMLError_LibraryNotFound, NVMLError_DriverNotLoaded, LookupError, ...
        return None
