"""Supervision of one service's instances: start them, back off when they fail to start,
and log and count what happens to them.

A trapped instance is never reused (the pool or the activation discards it) and the next
call gets a fresh one. What needs watching is the start: a module that traps in its
initialiser would otherwise be restarted on every call, a hot loop that burns CPU and
floods the log. After a failed start, the next start waits `backoff` seconds, doubling
with each further failure up to `max_backoff`; calls in that window fail at once with
UNAVAILABLE and the reason. One good start resets it.

Events go to the service's logger and are counted in `counts`, which `Runtime.stats`
reports: `started` (every instance started), `start_failed`, `trapped` (discarded after a
trap, a deadline or an ABI fault), `replaced` (a start that replaced a discarded one),
`passivated` (instances released after idle time) and `reactivated` (the first start
after that).
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from okra_core.status import RpcError, StatusCode

#: The events a supervisor counts, and the level each is logged at.
EVENTS = {
    "started": logging.DEBUG,
    "start_failed": logging.ERROR,
    "trapped": logging.WARNING,
    "replaced": logging.INFO,
    "passivated": logging.INFO,
    "reactivated": logging.INFO,
}


class Supervisor:
    def __init__(
        self,
        service: str,
        create: Callable[[], Any],
        logger: logging.Logger,
        *,
        backoff: float = 0.1,
        max_backoff: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.service = service
        self._create = create
        self.log = logger
        self.backoff = backoff
        self.max_backoff = max_backoff
        self._clock = clock
        self.counts: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()  # starts run on worker threads
        self._failures = 0
        self._retry_at = 0.0
        self._reason = ""
        #: Starts owed to discarded instances: the next `replaced_by_start` starts count
        #: as replacements.
        self._owed = 0

    def event(self, name: str, detail: str = "") -> None:
        """Count an event and log it (thread-safe)."""
        with self._lock:
            self.counts[name] += 1
        # The service's own logger (okra.service.<name>) names the service.
        message = f"instance {name.replace('_', ' ')}"
        self.log.log(EVENTS[name], "%s%s", message, f": {detail}" if detail else "")

    def trapped(self, reason: str) -> None:
        """An instance failed and was discarded; the next start replaces it."""
        with self._lock:
            self._owed += 1
        self.event("trapped", reason)

    def start(self) -> Any:
        """Start an instance (blocking: call it on a worker thread). Raises RpcError
        UNAVAILABLE while backing off after failed starts."""
        with self._lock:
            wait = self._retry_at - self._clock()
            if self._failures and wait > 0:
                raise RpcError(
                    StatusCode.UNAVAILABLE,
                    f"{self.service}: instances fail to start ({self._reason}); "
                    f"{self._failures} failed in a row, next attempt in {wait:.1f}s",
                )
        try:
            instance = self._create()
        except Exception as exc:
            reason = (str(exc) or type(exc).__name__).removeprefix(f"{self.service}: ")
            with self._lock:
                self._failures += 1
                delay = min(self.backoff * 2 ** (self._failures - 1), self.max_backoff)
                self._retry_at = self._clock() + delay
                self._reason = reason
            self.event("start_failed", f"{reason} (retry in {delay:.1f}s)")
            raise RpcError(
                StatusCode.UNAVAILABLE, f"{self.service}: an instance failed to start: {reason}"
            ) from exc
        with self._lock:
            self._failures = 0
            replaced = self._owed > 0
            if replaced:
                self._owed -= 1
        self.event("started")
        if replaced:
            self.event("replaced")
        return instance
