"""Where guest code runs: worker threads, or inline on the loop once proven short.

Guest calls are synchronous and may block (CPU, or a host function waiting on I/O), so by
default they run on worker threads. A plain `run_in_executor` costs two future layers and
a thread-pool handshake per call; `WorkerThreads` is the same idea cut to the bone: a
queue, N threads, and one `call_soon_threadsafe` back to the loop with the outcome.

Even so, handing a call to a thread and back costs 30-100 us, against 2-5 us for a short
guest call itself. `CallRunner` therefore runs a service's calls inline on the loop once
they have proven short, and only for services whose host functions never block: after
`promote_after` consecutive calls under `fast` seconds of the worker's CPU (and
`max_wall` of wall time) it goes inline. CPU, because on a busy process a thread waits
for the GIL and even a 5 us guest call can take milliseconds of wall time. Two inline
calls over `slow` seconds of CPU (or `max_wall` of wall time) within 16 calls send it
back to threads (one may be the loop's own pause), and the next promotion needs twice
as many short calls, so a service whose calls are sometimes long stops flapping. An
inline call may block the loop for `inline_budget` seconds at most: the engine stops it
then (InlineOverrun) and the caller runs it again from the start on a thread, with a fresh
instance. That is why only guests whose host functions never block (and so only log or
compute) qualify.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from okra_core.engine import GuestTimeout, GuestTrap

_STOP = None


class WorkerThreads:
    def __init__(self, count: int, name: str):
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._threads = [
            threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True)
            for i in range(count)
        ]
        for thread in self._threads:
            thread.start()
        self._closed = False

    def submit(
        self,
        loop: asyncio.AbstractEventLoop,
        done: Callable[[Any, BaseException | None], None],
        fn: Callable[..., Any],
        *args: Any,
    ) -> None:
        """Run `fn(*args)` on a worker; then `done(result, exception)` on the loop."""
        if self._closed:
            raise RuntimeError("worker threads are closed")
        self._queue.put((loop, done, fn, args))

    async def run(
        self,
        fn: Callable[..., Any],
        *args: Any,
        abandoned: Callable[[Any], None] | None = None,
    ) -> Any:
        """Run `fn(*args)` on a worker and wait for its result. If the waiter is gone
        (cancelled) when the result comes, `abandoned(result)` disposes of it (an
        instance started for a caller that gave up must still be closed)."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()

        def done(result: Any, exc: BaseException | None) -> None:
            if future.done():
                if exc is None and abandoned is not None:
                    abandoned(result)
                return
            if exc is None:
                future.set_result(result)
            else:
                future.set_exception(exc)

        self.submit(loop, done, fn, *args)
        return await future

    def _work(self) -> None:
        get = self._queue.get
        while True:
            item = get()
            if item is _STOP:
                return
            loop, done, fn, args = item
            try:
                result = fn(*args)
            except BaseException as exc:  # delivered to the loop, never lost here
                outcome = (None, exc)
            else:
                outcome = (result, None)
            try:
                loop.call_soon_threadsafe(done, *outcome)
            except RuntimeError:
                pass  # the loop is closed: nobody is waiting any more

    def close(self) -> None:
        """Let queued calls finish, then stop the threads (does not wait for them)."""
        if not self._closed:
            self._closed = True
            for _ in self._threads:
                self._queue.put(_STOP)


class InlineOverrun(GuestTrap):
    """An inline call ran past the inline budget and was stopped; run it on a thread."""


_STRIKE = 16  # what a slow inline call weighs; each short one takes 1 off


class CallRunner:
    """Runs one service's unary guest calls inline or on its worker threads."""

    def __init__(
        self,
        threads: WorkerThreads,
        *,
        inline_allowed: bool,
        fast: float = 1e-3,
        slow: float = 1e-3,
        promote_after: int = 100,
        max_promote_after: int = 100_000,
        inline_budget: float = 0.05,
        max_wall: float = 0.05,
    ):
        self.threads = threads
        self.inline_allowed = inline_allowed
        self.fast = fast
        self.slow = slow
        self.promote_after = promote_after
        self.max_promote_after = max_promote_after
        self.inline_budget = inline_budget
        self.max_wall = max_wall
        self.inline = False
        self._streak = 0
        self._strikes = 0
        #: How often an inline call was too slow and sent the service back to threads.
        self.demotions = 0

    def call(
        self,
        loop: asyncio.AbstractEventLoop,
        done: Callable[[Any, BaseException | None], None],
        fn: Callable[..., Any],
        instance: Any,
        request: Any,
        deadline: float,
    ) -> None:
        """Run `fn(instance, request, deadline)` (deadline in monotonic time), then
        `done(result, exception)` on the loop (immediately if the call ran inline)."""
        if self.inline:
            start, cpu = time.monotonic(), time.thread_time()
            budget = min(deadline, start + self.inline_budget)
            try:
                result = fn(instance, request, budget)
            except GuestTimeout as exc:
                self._demote()
                if budget < deadline:
                    exc = InlineOverrun(f"stopped after the inline budget: {exc}")
                done(None, exc)
            except BaseException as exc:
                self._inline_took(time.thread_time() - cpu, time.monotonic() - start)
                done(None, exc)
            else:
                self._inline_took(time.thread_time() - cpu, time.monotonic() - start)
                done(result, None)
        elif self.inline_allowed:
            self.threads.submit(loop, done, self._timed, fn, (instance, request, deadline))
        else:
            self.threads.submit(loop, done, fn, instance, request, deadline)

    def _timed(self, fn: Callable[..., Any], args: tuple) -> Any:
        # A call is short by the CPU its thread spent, not by wall time: on a busy loop a
        # worker waits for the GIL (up to the 5 ms switch interval) and a short call
        # would never look short. Wall time still bounds it, so a guest that waits (a
        # WASI sleep) is not taken for a short one.
        start, cpu = time.monotonic(), time.thread_time()
        try:
            return fn(*args)
        finally:
            # Runs on the worker; a lost update between threads only delays a promotion.
            if time.thread_time() - cpu < self.fast and time.monotonic() - start < self.max_wall:
                self._streak += 1
                if self._streak >= self.promote_after:
                    self.inline = True
            else:
                self._streak = 0

    def _inline_took(self, cpu: float, wall: float) -> None:
        # Slow is CPU over `slow` (wall time would count the loop thread's own waits for
        # the GIL, which other threads hold for milliseconds) or wall time over
        # `max_wall` (a guest that waits). One slow call may be the loop's own pause (a
        # garbage collection); a second one within 16 calls is the guest's.
        if cpu > self.slow or wall > self.max_wall:
            self._strikes += _STRIKE
            if self._strikes > _STRIKE:
                self._demote()
        elif self._strikes:
            self._strikes -= 1

    def _demote(self) -> None:
        self.inline = False
        self._streak = 0
        self._strikes = 0
        self.demotions += 1
        self.promote_after = min(self.promote_after * 2, self.max_promote_after)
