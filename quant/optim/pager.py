"""A byte-budgeted pager for optimizer states: device residency, host backing, LRU eviction, counters.

Each entry (one parameter's state: a few named tensors) is resident on the compute device or paged out to
host memory (pinned when the device is CUDA). At most `budget_bytes` are resident at any time: bringing an
entry in first evicts least-recently-used entries (never the one being updated). `budget_bytes=None` keeps
everything resident and never moves a byte.

On CUDA every copy runs on a side stream, so the next parameter's page-in (`prefetch`) overlaps the current
update; events order the streams, and `record_stream` keeps the caching allocator from reusing a buffer a
pending copy still reads. On the CPU the same logic runs with synchronous copies: the two pools are both
host tensors, but residency, the budget and the traffic counters behave exactly as on a GPU.

A host buffer, once allocated, backs its entry for good (a later page-out reuses it, as pinned allocations
are slow), so host memory holds up to every state; the device holds at most the budget.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field

import torch

__all__ = ["PagerStats", "StatePager"]


@dataclass(frozen=True)
class PagerStats:
    """A snapshot of the pager's counters (bytes are state bytes; page-ins exclude first allocations)."""

    budget_bytes: int | None
    total_bytes: int  # every entry's state, resident or not
    resident_bytes: int
    peak_resident_bytes: int
    page_ins: int
    page_outs: int
    bytes_moved: int  # host->device plus device->host


@dataclass
class _Entry:
    nbytes: int
    device: dict[str, torch.Tensor] | None  # resident copy (None when paged out)
    host: dict[str, torch.Tensor] | None = None  # backing store, allocated on the first page-out
    ready: torch.cuda.Event | None = field(default=None, repr=False)  # CUDA: the last copy of this entry


def _nbytes(tensors: dict[str, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors.values())


class StatePager:
    """Keeps named state tensors per key, at most `budget_bytes` of them resident on `device`.

    Raises:
        ValueError: a negative budget_bytes.
    """

    def __init__(self, device: torch.device | str, budget_bytes: int | None = None) -> None:
        if budget_bytes is not None and budget_bytes < 0:
            raise ValueError(f"budget_bytes: {budget_bytes!r}; expected None (unlimited) or >= 0")
        self.device = torch.device(device)
        self.budget_bytes = budget_bytes
        self._entries: OrderedDict[Hashable, _Entry] = OrderedDict()  # resident LRU order: oldest first
        self._active: Hashable | None = None  # the entry being updated: never evicted
        self._cuda = self.device.type == "cuda"
        self._stream = torch.cuda.Stream(self.device) if self._cuda else None
        self.resident_bytes = 0
        self.peak_resident_bytes = 0
        self.page_ins = 0
        self.page_outs = 0
        self.bytes_moved = 0

    # -- public ----------------------------------------------------------------------------------------

    def __contains__(self, key: Hashable) -> bool:
        return key in self._entries

    def is_resident(self, key: Hashable) -> bool:
        return self._entries[key].device is not None

    def stats(self) -> PagerStats:
        total = sum(e.nbytes for e in self._entries.values())
        return PagerStats(
            self.budget_bytes,
            total,
            self.resident_bytes,
            self.peak_resident_bytes,
            self.page_ins,
            self.page_outs,
            self.bytes_moved,
        )

    def add(self, key: Hashable, tensors: dict[str, torch.Tensor]) -> None:
        """Store a copy of `tensors` (any device) as `key`'s state, resident, replacing any previous state.

        Raises:
            ValueError: the state alone exceeds budget_bytes.
        """
        self.create(key, _nbytes(tensors), lambda: {k: t.to(self.device, copy=True) for k, t in tensors.items()})

    def create(self, key: Hashable, nbytes: int, make: Callable[[], dict[str, torch.Tensor]]) -> None:
        """Make room for `nbytes`, then store `make()` (tensors on the device, `nbytes` in all) as `key`'s state.

        Room is made before `make` allocates, so device memory never holds more than the budget.

        Raises:
            ValueError: the state alone exceeds budget_bytes.
        """
        self._check_fits(key, nbytes)
        self.remove(key)
        fits = self._make_room(nbytes, protect=())  # the active entry's update is enqueued: it may go
        assert fits
        tensors = make()
        if _nbytes(tensors) != nbytes:
            raise AssertionError(f"state of {key!r}: {_nbytes(tensors)} bytes made, {nbytes} accounted")
        self._entries[key] = _Entry(nbytes, tensors)
        self._grow(nbytes)

    def remove(self, key: Hashable) -> None:
        """Drop `key`'s state (resident or not); a missing key is a no-op."""
        entry = self._entries.pop(key, None)
        if entry is not None and entry.device is not None:
            self.resident_bytes -= entry.nbytes
        if self._active == key:
            self._active = None

    def acquire(self, key: Hashable) -> dict[str, torch.Tensor]:
        """`key`'s state on the device, ready for the current stream; it stays resident until the next acquire.

        The returned tensors are the resident copy: update them in place.
        """
        self._active = key
        entry = self._page_in(key, protect=(key,))
        assert entry is not None and entry.device is not None  # an entry always fits the budget alone
        self._entries.move_to_end(key)
        if self._cuda and entry.ready is not None:
            current = torch.cuda.current_stream(self.device)
            current.wait_event(entry.ready)
            for t in entry.device.values():
                t.record_stream(current)  # allocated on the side stream, used on this one
            entry.ready = None
        return entry.device

    def prefetch(self, key: Hashable) -> None:
        """Start bringing `key` in (a side-stream copy on CUDA) if it fits without evicting the active entry."""
        if key in self._entries and self._entries[key].device is None:
            self._page_in(key, protect=(key, self._active), required=False)

    def layout(self, key: Hashable) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        """(shape, dtype) of each of `key`'s state tensors, from whichever copy holds them (no copy, no wait)."""
        entry = self._entries[key]
        source = entry.device if entry.device is not None else entry.host
        assert source is not None
        return {k: (tuple(t.shape), t.dtype) for k, t in source.items()}

    def snapshot(self, key: Hashable) -> dict[str, torch.Tensor]:
        """A CPU copy of `key`'s current state (for state dicts; not counted as paging traffic)."""
        entry = self._entries[key]
        if entry.ready is not None:
            entry.ready.synchronize()
        source = entry.device if entry.device is not None else entry.host
        assert source is not None
        return {k: t.to("cpu", copy=True) for k, t in source.items()}

    # -- internals -------------------------------------------------------------------------------------

    def _check_fits(self, key: Hashable, nbytes: int) -> None:
        if self.budget_bytes is not None and nbytes > self.budget_bytes:
            raise ValueError(
                f"budget_bytes: {self.budget_bytes}; the state of {key!r} alone needs {nbytes} bytes, "
                "expected a budget of at least the largest parameter's state"
            )

    def _grow(self, nbytes: int) -> None:
        self.resident_bytes += nbytes
        self.peak_resident_bytes = max(self.peak_resident_bytes, self.resident_bytes)

    def _make_room(self, nbytes: int, protect: tuple[Hashable, ...]) -> bool:
        """Evict LRU entries outside `protect` until `nbytes` more fit; False if they cannot."""
        if self.budget_bytes is None:
            return True
        if nbytes > self.budget_bytes - sum(
            self._entries[k].nbytes for k in protect if k in self._entries and self._entries[k].device is not None
        ):
            return False
        for key in list(self._entries):
            if self.resident_bytes + nbytes <= self.budget_bytes:
                break
            if key not in protect and self._entries[key].device is not None:
                self._page_out(key)
        return self.resident_bytes + nbytes <= self.budget_bytes

    def _page_in(self, key: Hashable, protect: tuple[Hashable, ...], required: bool = True) -> _Entry | None:
        entry = self._entries[key]
        if entry.device is not None:
            return entry
        if not self._make_room(entry.nbytes, protect):
            if required:
                raise AssertionError("an entry that fits the budget alone found no room")
            return None
        assert entry.host is not None  # a non-resident entry has been paged out
        if self._cuda:
            assert self._stream is not None
            with torch.cuda.stream(self._stream):  # host buffers were last written on this stream: ordered
                entry.device = {k: t.to(self.device, non_blocking=True) for k, t in entry.host.items()}
                entry.ready = torch.cuda.Event()
                entry.ready.record(self._stream)
        else:
            entry.device = {k: t.clone() for k, t in entry.host.items()}
        self._entries.move_to_end(key)
        self._grow(entry.nbytes)
        self.page_ins += 1
        self.bytes_moved += entry.nbytes
        return entry

    def _page_out(self, key: Hashable) -> None:
        entry = self._entries[key]
        assert entry.device is not None
        pin = self._cuda
        if entry.host is None:
            entry.host = {k: torch.empty(t.shape, dtype=t.dtype, pin_memory=pin) for k, t in entry.device.items()}
        if self._cuda:
            assert self._stream is not None
            self._stream.wait_stream(torch.cuda.current_stream(self.device))  # the update that wrote it is done
            with torch.cuda.stream(self._stream):
                for k, t in entry.device.items():
                    entry.host[k].copy_(t, non_blocking=True)
                    t.record_stream(self._stream)  # freed below while the copy may still read it
                entry.ready = torch.cuda.Event()
                entry.ready.record(self._stream)
        else:
            for k, t in entry.device.items():
                entry.host[k].copy_(t)
        entry.device = None
        self.resident_bytes -= entry.nbytes
        self.page_outs += 1
        self.bytes_moved += entry.nbytes
