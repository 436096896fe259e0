"""A guest for calling host functions without an engine: a bytearray-backed GuestMemory
(bounds-checked as the engine's is), a HostContext around it, and a HostEnvironment with
the real clock/metrics/audit parts and state/invoke that fail the test if used.

Host functions are called through `okra_core.hostapi.call_host_function`, the path every
engine takes, so error codes and pending messages are exactly what a guest would see.
"""

from __future__ import annotations

import dataclasses
import logging
import struct
import threading
from collections.abc import Callable, Mapping
from typing import Any

import pytest

from okra_core.audit import Audit
from okra_core.clock import FakeClock
from okra_core.hostapi import (
    GuestMemory,
    HostContext,
    HostEnvironment,
    HostError,
    HostFunction,
    call_host_function,
)
from okra_core.metrics import Metrics
from okra_core.plugins import Registry, make_plugin_manager
from okra_core.status import StatusCode


class ByteMemory:
    """Guest linear memory: a bytearray, with a bump allocator for test data. Address 0
    up to 16 is never handed out, so a 0 pointer is never valid data."""

    def __init__(self, size: int = 64 * 1024):
        self.data = bytearray(size)
        self._next = 16

    def _check(self, ptr: int, length: int) -> None:
        if ptr < 0 or length < 0 or ptr + length > len(self.data):
            raise HostError(
                StatusCode.INVALID_ARGUMENT,
                f"memory range {ptr}..{ptr + length} is outside the guest's {len(self.data)}-byte memory",
            )

    def read(self, ptr: int, length: int) -> bytes:
        self._check(ptr, length)
        return bytes(self.data[ptr : ptr + length])

    def write(self, ptr: int, data: bytes) -> None:
        self._check(ptr, len(data))
        self.data[ptr : ptr + len(data)] = data

    def alloc(self, size: int) -> int:
        ptr = self._next
        self._next += max(size, 1)
        assert self._next <= len(self.data), "test guest memory exhausted"
        return ptr

    def reset(self) -> None:
        """Forget every allocation (the data stays until overwritten)."""
        self._next = 16

    def put(self, data: bytes) -> tuple[int, int]:
        ptr = self.alloc(len(data))
        self.write(ptr, data)
        return ptr, len(data)

    def i64(self, ptr: int) -> int:
        return struct.unpack("<q", self.read(ptr, 8))[0]


assert isinstance(ByteMemory(), GuestMemory)


@dataclasses.dataclass
class Result:
    """What a guest sees after a call: the return code and the data it then holds (the
    result written to out, or fetched with okra.abi.take; or the error message)."""

    code: int
    data: bytes = b""

    @property
    def ok(self) -> bool:
        return self.code >= 0

    @property
    def message(self) -> str:
        assert self.code < 0, f"call succeeded ({self.code})"
        return self.data.decode()


class Guest:
    """One instance of `service` linked to one host API's functions."""

    def __init__(
        self, api: Any, config: Mapping[str, Any], env: HostEnvironment,
        service: str = "shop.v1.Cart", memory_size: int = 64 * 1024,
    ):
        self.ctx = HostContext(service, logging.getLogger(f"okra.service.{service}"))
        self.memory = ByteMemory(memory_size)
        self.ctx.memory = self.memory
        self.functions: dict[str, HostFunction] = {f.name: f for f in api.functions(config, env)}

    def call(self, name: str, *args: int) -> int:
        return call_host_function(self.functions[name], self.ctx, args)

    def error(self, code: int) -> Result:
        """The result of a failed call: its code and pending message (as okra.abi.take)."""
        assert code < 0, code
        message, self.ctx.pending = self.ctx.pending or b"", None
        return Result(code, message)

    def fetch(self, name: str, arg: bytes, cap: int = 256) -> Result:
        """Call a (ptr, len, out_ptr, out_cap) function as a guest would, taking a result
        too big for `cap` from the pending result."""
        ptr, length = self.memory.put(arg)
        out = self.memory.alloc(cap)
        code = self.call(name, ptr, length, out, cap)
        if code < 0:
            return self.error(code)
        if code <= cap:
            assert self.ctx.pending is None
            return Result(code, self.memory.read(out, code))
        data, self.ctx.pending = self.ctx.pending, None
        assert data is not None and len(data) == code
        return Result(code, data)


def unused(what: str) -> Callable[..., Any]:
    def fail(*args: Any, **kwargs: Any) -> Any:
        pytest.fail(f"this host API must not use {what}")

    return fail


def make_env(*, secrets: Callable[[], Any] | None = None, clock: Any = None) -> HostEnvironment:
    metrics = Metrics()
    return HostEnvironment(
        clock=clock or FakeClock(),
        metrics=metrics,
        audit=Audit(metrics),
        state=unused("the state store"),
        secrets=secrets or unused("the secrets provider"),
        invoke=unused("invoke"),
    )


def registry() -> Registry:
    """The built-in plugins' registry, as the runtime builds it (no entry points)."""
    return Registry(make_plugin_manager(entrypoints=False))


def run_threads(targets: list[Callable[[], None]], timeout: float = 60) -> None:
    """Run each target in a thread of its own and wait for all; an exception in any
    thread fails the test (a plain Thread would only print it)."""
    errors: list[BaseException] = []

    def guarded(target: Callable[[], None]) -> None:
        try:
            target()
        except BaseException as exc:  # noqa: BLE001 - reported to the test below
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=(t,)) for t in targets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout)
        assert not thread.is_alive(), "a test thread did not finish"
    if errors:
        raise errors[0]
