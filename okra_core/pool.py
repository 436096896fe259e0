"""The worker pool: the WASM instances of one service.

Each call runs single-threaded inside one instance that the pool lends exclusively.
The pool keeps `min` instances warm, grows to `max`, makes callers wait in arrival order
(up to their deadline, and at most `queue` of them: the next one fails at once with
RESOURCE_EXHAUSTED) when every instance is busy, and replaces instances that are
returned as discarded (after a trap, an instance is in an unknown state).

With `idle_seconds`, a pool that served no call for that long releases every instance,
even below `min` (scale to zero); the next call waits while an instance starts, then the
pool warms back to `min`.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
from collections.abc import Callable
from typing import Protocol, runtime_checkable

from okra_core.engine import Instance
from okra_core.status import RpcError, StatusCode

log = logging.getLogger("okra.pool")


@dataclasses.dataclass
class PoolStats:
    idle: int = 0
    busy: int = 0
    waiting: int = 0
    created: int = 0
    discarded: int = 0
    #: True while passivated (no instances until the next call).
    passivated: bool = False


@runtime_checkable
class WorkerPool(Protocol):
    async def start(self) -> None:
        """Warm the minimum number of instances; raise if the first cannot start."""

    async def acquire(self, timeout: float | None) -> Instance:
        """Lend an instance; wait in line when all are busy. Raises RpcError:
        DEADLINE_EXCEEDED when `timeout` passes, UNAVAILABLE when closed or when a new
        instance cannot be started."""

    def release(self, instance: Instance, *, discard: bool = False) -> None:
        """Give an instance back; `discard` destroys it (it will be replaced)."""

    async def close(self, grace: float) -> None:
        """Stop lending; wait up to `grace` for lent instances, then destroy all."""

    @property
    def stats(self) -> PoolStats: ...


class InstancePool:
    """A WorkerPool over any engine: `create` makes one ready instance (blocking, run in
    `run_blocking`), so the pool never sees engine types."""

    def __init__(
        self,
        create: Callable[[], Instance],
        *,
        min_size: int,
        max_size: int,
        run_blocking: Callable,
        name: str = "pool",
        queue: int | None = None,
        idle_seconds: float | None = None,
        on_event: Callable[[str, str], None] | None = None,
    ):
        if not 0 <= min_size <= max_size or max_size < 1:
            raise ValueError(f"invalid pool size min={min_size} max={max_size}")
        if queue is not None and queue < 0:
            raise ValueError(f"invalid pool queue {queue}")
        #: Callers that may wait when every instance is busy; None: no bound.
        self.queue = queue
        self.idle_seconds = idle_seconds
        self._on_event = on_event
        self._passivated = False
        self._last_active = 0.0
        self._idle_timer: asyncio.TimerHandle | None = None
        self._create = create
        self._run_blocking = run_blocking
        self.min_size = min_size
        self.max_size = max_size
        self.name = name
        self._idle: collections.deque[Instance] = collections.deque()
        self._waiters: collections.deque[asyncio.Future] = collections.deque()
        #: Instances alive or being created, and free slots handed to a waiter.
        self._size = 0
        self._busy = 0
        #: Instances lent out now (to stop their calls at shutdown).
        self._lent: set[Instance] = set()
        self._closed = False
        self._drained: asyncio.Event | None = None
        self._stats = PoolStats()
        self._background: set[asyncio.Task] = set()
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def stats(self) -> PoolStats:
        s = self._stats
        return PoolStats(
            len(self._idle), self._busy, len(self._waiters), s.created, s.discarded,
            self._passivated,
        )

    def adopt(self, instance: Instance) -> None:
        """Take an instance created elsewhere (the deploy's probe) as an idle one."""
        self._size += 1
        self._stats.created += 1
        self._idle.append(instance)

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        missing = self.min_size - self._size
        if missing > 0:
            instances = await asyncio.gather(*(self._new_instance() for _ in range(missing)))
            self._idle.extend(instances)
        # A pool that is never called passivates too.
        self._last_active = self._loop.time()
        self._arm_idle_timer()

    async def _new_instance(self, *, reserved: bool = False) -> Instance:
        """Start an instance, in a slot of its own (`reserved`: one handed to us)."""
        if not reserved:
            self._size += 1
        try:
            instance = await self._run_blocking(self._create)
        except BaseException:
            self._size -= 1
            self._hand_slot()  # the first waiter may start one itself
            raise
        self._stats.created += 1
        return instance

    async def _start_instance(self, *, reserved: bool) -> Instance:
        try:
            return await self._new_instance(reserved=reserved)
        except RpcError:
            raise
        except Exception as exc:
            raise RpcError(
                StatusCode.UNAVAILABLE, f"{self.name}: cannot start an instance: {exc}"
            ) from exc

    async def acquire(self, timeout: float | None) -> Instance:
        self._loop = loop = asyncio.get_running_loop()
        if self._closed:
            raise RpcError(StatusCode.UNAVAILABLE, f"{self.name} is shutting down")
        self._last_active = loop.time()
        if self._passivated:
            self._passivated = False
            self._event("reactivated", "a call arrived")
            self._replenish(self.min_size - 1)  # this call starts one itself
        if self._idle:
            instance = self._idle.pop()  # LIFO: the warmest instance
        elif self._size < self.max_size:
            instance = await self._start_instance(reserved=False)
        else:
            if self.queue is not None and len(self._waiters) >= self.queue:
                raise RpcError(
                    StatusCode.RESOURCE_EXHAUSTED,
                    f"{self.name}: all {self.max_size} instances are busy and {self.queue} "
                    "calls are already waiting; try again later",
                )
            handed = await self._wait(timeout)
            if handed is None:
                # A free slot, already counted as taken (so that a caller arriving
                # before this one resumes cannot take it): start an instance in it.
                instance = await self._start_instance(reserved=True)
            else:
                instance = handed
        self._busy += 1
        self._lent.add(instance)
        return instance

    async def _wait(self, timeout: float | None) -> Instance | None:
        """Wait for a released instance (returned) or a free slot kept for us (None)."""
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            return await asyncio.wait_for(waiter, timeout)
        except BaseException as exc:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                # Handed an instance or a slot just as we gave up: pass it on.
                handed = waiter.result()
                if handed is None:
                    self._size -= 1
                    self._hand_slot()
                elif not self._wake_one(handed):
                    self._idle.append(handed)
                    self._arm_idle_timer()
            elif waiter in self._waiters:
                self._waiters.remove(waiter)
            if isinstance(exc, asyncio.TimeoutError):
                raise RpcError(
                    StatusCode.DEADLINE_EXCEEDED,
                    f"{self.name}: deadline exceeded while waiting for a free instance "
                    f"(all {self.max_size} busy)",
                ) from None
            raise

    def _hand_slot(self) -> bool:
        """A slot is free: hand it to the first waiter, which starts an instance in it.
        It counts as taken from now on, so no caller arriving meanwhile takes it."""
        if self._wake_one(None):
            self._size += 1
            return True
        return False

    def _wake_one(self, instance: Instance | None = None) -> bool:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(instance)
                return True
        return False

    def lent(self) -> list[Instance]:
        """The instances lent out now."""
        return list(self._lent)

    def release(self, instance: Instance, *, discard: bool = False) -> None:
        self._busy -= 1
        self._lent.discard(instance)
        if discard or self._closed:
            self._destroy(instance)
            if discard:
                self._stats.discarded += 1
            if not self._closed:
                if not self._hand_slot() and self._size < self.min_size:
                    self._replenish(1)
        elif not self._wake_one(instance):
            self._idle.append(instance)
        if self._busy == 0:
            if self._drained is not None:
                self._drained.set()
            if self.idle_seconds is not None and not self._closed:
                assert self._loop is not None
                self._last_active = now = self._loop.time()
                if self._idle_timer is None:
                    self._idle_timer = self._loop.call_at(now + self.idle_seconds, self._check_idle)

    def _arm_idle_timer(self) -> None:
        """Check for passivation in `idle_seconds` (an instance went idle), unless a
        check is due already."""
        if self.idle_seconds is None or self._closed or self._idle_timer is not None:
            return
        assert self._loop is not None
        now = self._loop.time()
        self._idle_timer = self._loop.call_at(now + self.idle_seconds, self._check_idle)

    def _check_idle(self) -> None:
        self._idle_timer = None
        if self._closed or self._busy or self._waiters:
            # The next instance to become idle (released, or started for callers that
            # gave up meanwhile) schedules the next check.
            return
        assert self._loop is not None and self.idle_seconds is not None
        due = self._last_active + self.idle_seconds
        if self._loop.time() < due:
            self._idle_timer = self._loop.call_at(due, self._check_idle)
        else:
            self.passivate(f"after {self.idle_seconds:g}s idle")

    def passivate(self, why: str = "on request") -> None:
        """Release every idle instance now (scale to zero); the next call starts one."""
        released = len(self._idle)
        while self._idle:
            self._destroy(self._idle.pop())
        if released and not self._passivated:
            self._passivated = True
            self._event("passivated", f"{released} released {why}")

    def _event(self, name: str, detail: str) -> None:
        if self._on_event is not None:
            self._on_event(name, detail)

    def _destroy(self, instance: Instance) -> None:
        self._size -= 1
        try:
            instance.close()
        except Exception:
            log.exception("%s: closing an instance failed", self.name)

    def _replenish(self, count: int) -> None:
        """Start `count` instances in the background (to get back to `min`)."""

        async def replace() -> None:
            # Only up to `min`: since this was scheduled, a caller may have started an
            # instance itself (one that finds the pool passivated starts its own while
            # instances lent before the passivation are still out), and starting another
            # would take the pool past `max`.
            if self._closed or self._passivated or self._size >= self.min_size:
                return
            try:
                instance = await self._new_instance()
            except Exception as exc:
                log.warning("%s: could not start an instance: %s", self.name, exc)
                return
            if self._closed or self._passivated:
                self._destroy(instance)
            elif not self._wake_one(instance):
                self._idle.append(instance)
                self._arm_idle_timer()

        assert self._loop is not None
        for _ in range(count):
            task = self._loop.create_task(replace())
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def close(self, grace: float) -> None:
        self._closed = True
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(
                    RpcError(StatusCode.UNAVAILABLE, f"{self.name} is shutting down")
                )
        if self._busy:
            self._drained = asyncio.Event()
            try:
                await asyncio.wait_for(self._drained.wait(), grace)
            except asyncio.TimeoutError:
                log.debug("%s: %d calls still running after %.1fs", self.name, self._busy, grace)
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        while self._idle:
            self._destroy(self._idle.pop())
