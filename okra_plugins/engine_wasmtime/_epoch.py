"""The epoch ticker: what makes a call's deadline stop a running guest.

Modules are compiled with epoch checks (loop back-edges and function entries compare
the engine's epoch with the store's deadline). A daemon thread advances the engine's
epoch every `period` seconds; a call with a deadline sets its store's deadline that many
ticks ahead, and wasmtime traps with an `interrupt` once it passes. So a CPU-bound guest
is stopped within about one period of its deadline, whatever it is doing.
"""

from __future__ import annotations

import math
import threading
import time
import weakref

import wasmtime

#: Ticks far enough away to mean "no deadline".
NEVER = 1 << 62


class EpochTicker:
    def __init__(self, engine: wasmtime.Engine, period: float = 0.01):
        self.period = period
        self._engine = weakref.ref(engine)
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def ticks_until(self, deadline: float) -> int:
        """Ticks from now to the `time.monotonic()` instant `deadline` (at least 1),
        starting the ticker on first use."""
        if self._thread is None:
            self._start()
        remaining = deadline - time.monotonic()
        return max(1, math.ceil(remaining / self.period) + 1)

    def _start(self) -> None:
        with self._lock:
            if self._thread is None:
                thread = threading.Thread(target=self._run, name="okra-epoch", daemon=True)
                thread.start()
                self._thread = thread

    def _run(self) -> None:
        period = self.period
        while True:
            time.sleep(period)
            engine = self._engine()
            if engine is None:
                return  # the engine is gone
            engine.increment_epoch()
            del engine
