"""Activations: one instance per key, one call at a time per key (virtual actors).

A keyed service gives every key its own activation, created on its first call. An
activation runs one call at a time; the others for its key wait in arrival order (at
most `queue` of them). Different keys run at once. A singleton is the same thing with
one key and one activation.

The activation for a key is registered (under its key) before its instance starts, and
only removed once it has no call and no waiter, so a key never has two activations. At
most `max_activations` are alive: a new key passivates the least recently used idle
activation, and finds RESOURCE_EXHAUSTED if every one is busy. Activations idle for
`idle_seconds` passivate: their instance is released, the key forgotten, and the next
call for the key starts a new instance.

When a service is redeployed, the new version's activation of a key waits until the old
version's activation of that key has finished its calls (`predecessor`), so a key (and a
singleton) is never active in two versions at once either.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from okra_core.callchain import CallChain, hop_name
from okra_core.status import RpcError, StatusCode

log = logging.getLogger("okra.activations")


class Activation:
    """One key's instance and its line of waiting calls."""

    __slots__ = ("key", "instance", "busy", "chain", "waiters", "last_used", "freed")

    def __init__(self, key: str):
        self.key = key
        self.instance: Any = None  # None until started, and after a discard
        self.busy = False
        #: The chain of the call it runs (re-entry check).
        self.chain: CallChain | None = None
        self.waiters: collections.deque[asyncio.Future] = collections.deque()
        self.last_used = 0.0
        #: Set when it is neither busy nor waited for (for a successor's hand-over).
        self.freed: asyncio.Event | None = None


class Activations:
    def __init__(
        self,
        service: str,
        start: Callable[[], Awaitable[Any]],
        *,
        max_activations: int,
        queue: int | None,
        idle_seconds: float | None,
        on_event: Callable[[str, str], None] | None = None,
        predecessor: Activations | None = None,
        singleton: bool = False,
    ):
        self.service = service
        self._start = start
        self.max_activations = max_activations
        self.queue = queue
        self.idle_seconds = idle_seconds
        self._on_event = on_event
        self._predecessor = predecessor
        self.singleton = singleton
        #: Live activations, least recently used first.
        self._live: collections.OrderedDict[str, Activation] = collections.OrderedDict()
        self._closed = False
        self._drained: asyncio.Event | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        #: Keys passivated and not yet called again (for `reactivated` events), bounded.
        self._asleep: collections.OrderedDict[str, None] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._live)

    @property
    def busy(self) -> int:
        return sum(1 for a in self._live.values() if a.busy)

    def keys(self) -> list[str]:
        return list(self._live)

    def lent(self) -> list[Any]:
        """The instances running a call now."""
        return [a.instance for a in self._live.values() if a.busy and a.instance is not None]

    def _which(self, key: str) -> str:
        """How an event names the activation (the service's logger names the service)."""
        return "" if self.singleton else f"key {key!r} "

    def _name(self, key: str) -> str:
        return self.service if self.singleton else hop_name(self.service, key)

    # -- lending ------------------------------------------------------------------

    async def acquire(self, key: str, chain: CallChain, timeout: float | None) -> Activation:
        """Wait for `key`'s turn and return its activation, started. Raises RpcError:
        FAILED_PRECONDITION for a call that would wait on its own chain,
        RESOURCE_EXHAUSTED when the key's line (or the activation table) is full,
        DEADLINE_EXCEEDED, UNAVAILABLE (shutting down, or the instance cannot start)."""
        self._loop = loop = asyncio.get_running_loop()
        if self._closed:
            raise RpcError(StatusCode.UNAVAILABLE, f"{self.service} is shutting down")
        activation = self._live.get(key)
        if activation is None:
            activation = self._admit(key)
        else:
            self._live.move_to_end(key)
        if activation.busy:
            if activation.chain is not None and activation.chain.id == chain.id:
                raise RpcError(
                    StatusCode.FAILED_PRECONDITION,
                    f"call chain {chain.describe(self._name(key))} comes back into "
                    f"{self._name(key)} while it is busy with an earlier call of the same "
                    "chain; it runs one call at a time, so this call would wait for itself",
                )
            if self.queue is not None and len(activation.waiters) >= self.queue:
                raise RpcError(
                    StatusCode.RESOURCE_EXHAUSTED,
                    f"{self._name(key)} is busy and {self.queue} calls are already waiting "
                    "for it; try again later",
                )
            waiter = loop.create_future()
            activation.waiters.append(waiter)
            try:
                await asyncio.wait_for(waiter, timeout)
            except BaseException as exc:
                if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                    self._pass_on(activation)  # handed the turn as we gave up
                elif waiter in activation.waiters:
                    activation.waiters.remove(waiter)
                    self._forget_if_unused(activation)
                if isinstance(exc, asyncio.TimeoutError):
                    raise RpcError(
                        StatusCode.DEADLINE_EXCEEDED,
                        f"{self._name(key)}: deadline exceeded while waiting for its "
                        "earlier calls to finish",
                    ) from None
                raise
        else:
            activation.busy = True
        activation.chain = chain
        if activation.instance is None:
            try:
                await self._activate(activation, loop.time() + timeout if timeout else None)
            except BaseException:
                self.release(activation)
                raise
        return activation

    def _admit(self, key: str) -> Activation:
        if len(self._live) >= self.max_activations:
            for old in self._live.values():
                if not old.busy and not old.waiters:
                    self._passivate(old, "to make room for a new key")
                    break
            else:
                raise RpcError(
                    StatusCode.RESOURCE_EXHAUSTED,
                    f"{self.service}: all {self.max_activations} activations are busy; "
                    "try again later (or raise actor.max_activations)",
                )
        activation = self._live[key] = Activation(key)
        return activation

    async def _activate(self, activation: Activation, deadline: float | None) -> None:
        predecessor = self._predecessor
        if predecessor is not None:
            if predecessor.idle():
                self._predecessor = None  # the old version has finished with every key
            else:
                await predecessor.wait_free(activation.key, deadline)
        if activation.key in self._asleep:
            del self._asleep[activation.key]
            self._event("reactivated", self._which(activation.key))
        activation.instance = await self._start()

    def release(self, activation: Activation, *, discard: bool = False) -> None:
        """End the activation's current call; `discard` drops its instance (the next
        call starts a fresh one)."""
        if discard and activation.instance is not None:
            _close(activation.instance)
            activation.instance = None
        activation.chain = None
        self._pass_on(activation)

    def _pass_on(self, activation: Activation) -> None:
        while activation.waiters:
            waiter = activation.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the turn passes: still busy
                return
        activation.busy = False
        assert self._loop is not None
        activation.last_used = self._loop.time()
        if activation.key in self._live:
            self._live.move_to_end(activation.key)
        if activation.freed is not None:
            activation.freed.set()
        if self._closed:
            self._passivate(activation, None)
            if self._drained is not None and not self._live:
                self._drained.set()
        elif activation.instance is None:
            self._forget_if_unused(activation)
        elif self.idle_seconds is not None and self._timer is None:
            self._timer = self._loop.call_at(
                activation.last_used + self.idle_seconds, self._sweep
            )

    def _forget_if_unused(self, activation: Activation) -> None:
        if not activation.busy and not activation.waiters and activation.instance is None:
            if self._live.get(activation.key) is activation:
                del self._live[activation.key]

    # -- passivation ----------------------------------------------------------------

    def _sweep(self) -> None:
        """Passivate the activations idle for `idle_seconds`, oldest first."""
        self._timer = None
        assert self._loop is not None and self.idle_seconds is not None
        now = self._loop.time()
        for activation in list(self._live.values()):
            if activation.busy or activation.waiters:
                continue
            due = activation.last_used + self.idle_seconds
            if due > now:
                self._timer = self._loop.call_at(due, self._sweep)
                return
            self._passivate(activation, f"after {self.idle_seconds}s idle")

    def _passivate(self, activation: Activation, why: str | None) -> None:
        del self._live[activation.key]
        if activation.instance is not None:
            _close(activation.instance)
            activation.instance = None
            if why is not None:
                self._asleep[activation.key] = None
                while len(self._asleep) > self.max_activations:
                    self._asleep.popitem(last=False)
                self._event("passivated", f"{self._which(activation.key)}{why}")

    def passivate_idle(self) -> int:
        """Passivate every idle activation now; returns how many."""
        idle = [a for a in self._live.values() if not a.busy and not a.waiters]
        for activation in idle:
            self._passivate(activation, "on request")
        return len(idle)

    def _event(self, name: str, detail: str) -> None:
        if self._on_event is not None:
            self._on_event(name, detail)

    # -- hand-over and shutdown -------------------------------------------------------

    def idle(self) -> bool:
        """No call runs or waits here, nor in the versions before this one."""
        if self._predecessor is not None and self._predecessor.idle():
            self._predecessor = None  # they have finished with every key
        return self._predecessor is None and not any(
            a.busy or a.waiters for a in self._live.values()
        )

    async def wait_free(self, key: str, deadline: float | None) -> None:
        """Wait until this (retiring) version has no call running or waiting for `key`,
        nor the versions before it: after two quick redeploys, the middle version may
        never have seen the key while the oldest still runs a call for it."""
        if self._predecessor is not None:
            await self._predecessor.wait_free(key, deadline)
        activation = self._live.get(key)
        while activation is not None and (activation.busy or activation.waiters):
            if activation.freed is None:
                activation.freed = asyncio.Event()
            activation.freed.clear()
            timeout = None if deadline is None else deadline - asyncio.get_running_loop().time()
            try:
                await asyncio.wait_for(activation.freed.wait(), timeout)
            except asyncio.TimeoutError:
                raise RpcError(
                    StatusCode.DEADLINE_EXCEEDED,
                    f"{self._name(key)}: deadline exceeded while the previous version "
                    "finished its calls",
                ) from None
            activation = self._live.get(key)

    async def close(self, grace: float) -> None:
        """Refuse new calls, let running and waiting ones finish (up to `grace`), then
        release every instance."""
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for activation in list(self._live.values()):
            if not activation.busy and not activation.waiters:
                self._passivate(activation, None)
        if self._live:
            self._drained = asyncio.Event()
            try:
                await asyncio.wait_for(self._drained.wait(), grace)
            except asyncio.TimeoutError:
                log.debug(
                    "%s: %d activations still busy after %.1fs", self.service, len(self._live), grace
                )
        for activation in list(self._live.values()):
            for waiter in activation.waiters:
                if not waiter.done():
                    waiter.set_exception(
                        RpcError(StatusCode.UNAVAILABLE, f"{self.service} is shutting down")
                    )
            activation.waiters.clear()
            if activation.freed is not None:
                activation.freed.set()
            if not activation.busy:
                self._passivate(activation, None)
            # A busy one's instance is closed by `release` when its call returns.


def _close(instance: Any) -> None:
    try:
        instance.close()
    except Exception:
        log.exception("closing an instance failed")
