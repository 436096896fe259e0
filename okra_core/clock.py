"""Time, as the host hands it to guests (`okra.time`) and state TTLs: swappable, so a
test can run a service against a clock it moves by hand."""

from __future__ import annotations

import threading
import time
from typing import Protocol, runtime_checkable


@runtime_checkable
class Clock(Protocol):
    def time_ns(self) -> int:
        """Wall-clock time: nanoseconds since the Unix epoch."""

    def monotonic_ns(self) -> int:
        """Nanoseconds from an arbitrary start; never goes backwards."""


class SystemClock:
    """The machine's clocks."""

    def time_ns(self) -> int:
        return time.time_ns()

    def monotonic_ns(self) -> int:
        return time.monotonic_ns()


class FakeClock:
    """A clock that moves only when told to (`advance`, `set`), for tests."""

    def __init__(self, start_ns: int = 1_700_000_000 * 10**9):
        self._lock = threading.Lock()
        self._wall = start_ns
        self._mono = 0

    def time_ns(self) -> int:
        with self._lock:
            return self._wall

    def monotonic_ns(self) -> int:
        with self._lock:
            return self._mono

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("a clock does not go backwards")
        step = round(seconds * 1e9)
        with self._lock:
            self._wall += step
            self._mono += step

    def set(self, wall_ns: int) -> None:
        """Set the wall clock (as an operator's NTP might); monotonic time is unchanged."""
        with self._lock:
            self._wall = wall_ns
