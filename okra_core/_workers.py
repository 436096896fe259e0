"""Worker threads that run guest code off the event loop.

Guest calls are synchronous and may block (CPU, or a host function waiting on I/O), so
they never run on the loop. A plain `run_in_executor` costs two future layers and a
thread-pool handshake per call; this is the same idea cut to the bone: a queue, N
threads, and one `call_soon_threadsafe` back to the loop with the outcome.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable
from typing import Any

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

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run `fn(*args)` on a worker and wait for its result."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()

        def done(result: Any, exc: BaseException | None) -> None:
            if future.done():
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
