"""The local actor system: actors as asyncio tasks of one event loop.

Each actor has a mailbox and one task that takes messages from it. A message is handled
inline by that task (concurrency 1, the classic actor) or in a task of its own, up to the
actor's `concurrency`. An actor with no concurrency limit (a service actor, whose pool
is its limit) has no mailbox to queue in: `ask` runs `receive` in the asker's own task,
which saves a task and two loop turns per call. Stopping an actor refuses new messages,
lets the queued and in-flight ones finish (up to a grace period), then fails the queued
rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from okra_core.actors import Actor, ActorNotFound, ActorRef, ActorStopped

log = logging.getLogger("okra.actors")

_STOP = object()


class _Cell:
    """The running state of one actor: mailbox, task, in-flight handlers."""

    def __init__(self, address: str, actor: Actor):
        self.address = address
        self.actor = actor
        self.mailbox: asyncio.Queue = asyncio.Queue()
        self.accepting = True
        self.inflight: set[asyncio.Task] = set()
        limit = actor.concurrency
        self.slots = asyncio.Semaphore(limit) if limit and limit > 1 else None
        #: Unbounded actors are asked directly, in the asker's task.
        self.direct = limit is None
        self.direct_calls = 0
        self.direct_idle: asyncio.Event | None = None
        self.task = asyncio.get_running_loop().create_task(
            self._run(), name=f"actor:{address}"
        )

    async def ask_direct(self, message: Any) -> Any:
        if not self.accepting:
            raise ActorStopped(f"actor {self.address} is stopping")
        self.direct_calls += 1
        try:
            return await self.actor.receive(message)
        finally:
            self.direct_calls -= 1
            if not self.direct_calls and self.direct_idle is not None:
                self.direct_idle.set()

    def post(self, message: Any, reply: asyncio.Future | None) -> None:
        if not self.accepting:
            raise ActorStopped(f"actor {self.address} is stopping")
        self.mailbox.put_nowait((message, reply))

    async def _run(self) -> None:
        concurrency = self.actor.concurrency
        while True:
            message, reply = await self.mailbox.get()
            if message is _STOP:
                break
            if concurrency == 1:
                await self._handle(message, reply)
            else:
                if self.slots is not None:
                    await self.slots.acquire()
                task = asyncio.get_running_loop().create_task(self._handle(message, reply))
                self.inflight.add(task)
                task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task) -> None:
        self.inflight.discard(task)
        if self.slots is not None:
            self.slots.release()

    async def _handle(self, message: Any, reply: asyncio.Future | None) -> None:
        try:
            result = await self.actor.receive(message)
        except BaseException as exc:  # answered to the asker, never lost
            if reply is None:
                if not isinstance(exc, asyncio.CancelledError):
                    log.exception("actor %s failed on a told message", self.address)
            elif not reply.done():
                reply.set_exception(exc)
            if isinstance(exc, (asyncio.CancelledError, KeyboardInterrupt, SystemExit)):
                raise
        else:
            if reply is not None and not reply.done():
                reply.set_result(result)

    async def stop(self, grace: float) -> None:
        self.accepting = False
        self.mailbox.put_nowait((_STOP, None))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        try:
            await asyncio.sleep(0)  # the mailbox task takes the stop marker, even at grace 0
            if not self.task.done():
                await asyncio.wait_for(asyncio.shield(self.task), grace)
            if self.inflight:
                await asyncio.wait(set(self.inflight), timeout=max(0, deadline - loop.time()))
            if self.direct_calls:
                self.direct_idle = asyncio.Event()
                await asyncio.wait_for(self.direct_idle.wait(), max(0, deadline - loop.time()))
        except asyncio.TimeoutError:
            pass
        running = len(self.inflight) + self.direct_calls
        if running:
            log.warning(
                "actor %s: %d call%s still running after %.1fs",
                self.address, running, "" if running == 1 else "s", grace,
            )
        for task in list(self.inflight):
            task.cancel()
        self.task.cancel()
        # Anything still queued behind the stop marker is answered, not dropped silently.
        while not self.mailbox.empty():
            message, reply = self.mailbox.get_nowait()
            if reply is not None and not reply.done():
                reply.set_exception(ActorStopped(f"actor {self.address} stopped"))
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
        try:
            await self.actor.on_stop(max(0.0, deadline - loop.time()))
        except Exception:
            log.exception("actor %s failed to stop cleanly", self.address)


class LocalActorRef:
    __slots__ = ("address", "_cell")

    def __init__(self, cell: _Cell):
        self.address = cell.address
        self._cell = cell

    async def ask(self, message: Any) -> Any:
        cell = self._cell
        if cell.direct:
            return await cell.ask_direct(message)
        reply = asyncio.get_running_loop().create_future()
        cell.post(message, reply)
        return await reply

    def tell(self, message: Any) -> None:
        self._cell.post(message, None)

    def __repr__(self) -> str:
        return f"<ActorRef {self.address}>"


class LocalActorSystem:
    def __init__(self) -> None:
        self._cells: dict[str, _Cell] = {}
        #: Replaced actors still finishing their in-flight messages.
        self._retiring: set[asyncio.Task] = set()

    async def spawn(self, address: str, actor: Actor, *, replace: bool = False) -> ActorRef:
        old = self._cells.get(address)
        if old is not None and not replace:
            raise ValueError(f"an actor is already registered at {address}")
        cell = _Cell(address, actor)
        self._cells[address] = cell
        if old is not None:
            task = asyncio.get_running_loop().create_task(old.stop(grace=30.0))
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)
        return LocalActorRef(cell)

    def lookup(self, address: str) -> ActorRef:
        try:
            return LocalActorRef(self._cells[address])
        except KeyError:
            raise ActorNotFound(address) from None

    def addresses(self) -> list[str]:
        return sorted(self._cells)

    async def stop(self, address: str, *, grace: float = 10.0) -> None:
        cell = self._cells.pop(address, None)
        if cell is None:
            raise ActorNotFound(address)
        await cell.stop(grace)

    async def shutdown(self, *, grace: float = 10.0) -> None:
        cells = list(self._cells.values())
        self._cells.clear()
        await asyncio.gather(*(cell.stop(grace) for cell in cells), *self._retiring)
