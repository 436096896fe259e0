"""okra.uuid: a host API, from a plugin outside OKRA, that hands guests UUIDs.

`v4` is 122 random bits (RFC 9562, section 5.4). `v7` (section 5.7) starts with the Unix
time in milliseconds from the runtime's clock, so ids sort by when they were made, and
goes on with a counter (section 6.2, method 1), so ids made within one millisecond sort
in the order they were made too. A guest gets the 16 bytes; the text form is its own
business.

Written as any third party writes a plugin: it imports only okra_core's public modules
and is found through the `okra` entry-point group of its distribution (pyproject.toml).
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Mapping, Sequence
from typing import Any

from okra_core.clock import Clock
from okra_core.errors import ConfigError
from okra_core.hookspecs import hookimpl
from okra_core.hostapi import HostContext, HostEnvironment, HostError, HostFunction
from okra_core.status import StatusCode

#: The v7 counter: 12 bits in rand_a and the top 30 of rand_b; the other 32 are random.
COUNTER_BITS = 42
COUNTER_MAX = (1 << COUNTER_BITS) - 1
#: A new millisecond seeds the counter with this many random bits (the top bit stays 0),
#: leaving room for at least 2**41 more ids in that millisecond.
SEED_BITS = COUNTER_BITS - 1
#: The largest timestamp a UUIDv7 holds: 48 bits of milliseconds, until the year 10889.
TIMESTAMP_MAX = (1 << 48) - 1

_VERSION_7 = 0x7 << 76
_VARIANT_RFC = 0b10 << 62


def new_v4() -> bytes:
    """A random UUID: 16 bytes from the OS's CSPRNG, version 4, variant 10."""
    data = bytearray(os.urandom(16))
    data[6] = (data[6] & 0x0F) | 0x40
    data[8] = (data[8] & 0x3F) | 0x80
    return bytes(data)


class V7Generator:
    """UUIDv7s from one clock that always increase, from any number of threads.

    Layout (as CPython 3.14's uuid.uuid7): unix_ts_ms (48) | version 0111 | counter's
    high 12 bits | variant 10 | counter's low 30 bits | 32 random bits. A millisecond
    later than the last seeds the counter afresh; the same millisecond, or a clock that
    went backwards (an NTP step), keeps the last millisecond and takes the next counter
    value; a counter that runs out moves the timestamp one millisecond ahead of the
    clock (RFC 9562, section 6.2). So ids never repeat or go backwards.
    """

    def __init__(self, clock: Clock):
        self._clock = clock
        self._lock = threading.Lock()
        #: The millisecond and counter of the last id (None before the first).
        self.last_ms: int | None = None
        self.counter = 0

    def next(self) -> bytes:
        now_ms = self._clock.time_ns() // 1_000_000
        with self._lock:
            if self.last_ms is None or now_ms > self.last_ms:
                ms, counter = now_ms, _seed()
            else:
                ms, counter = self.last_ms, self.counter + 1
                if counter > COUNTER_MAX:
                    ms, counter = ms + 1, _seed()
            if not 0 <= ms <= TIMESTAMP_MAX:
                raise HostError(
                    StatusCode.OUT_OF_RANGE,
                    f"the host's clock ({ms} ms since the Unix epoch) is outside what a "
                    f"UUIDv7 timestamp holds (0 to {TIMESTAMP_MAX} ms)",
                )
            self.last_ms, self.counter = ms, counter
        value = (
            ms << 80
            | _VERSION_7
            | (counter >> 30) << 64
            | _VARIANT_RFC
            | (counter & 0x3FFF_FFFF) << 32
            | int.from_bytes(os.urandom(4), "big")
        )
        return value.to_bytes(16, "big")


def _seed() -> int:
    return int.from_bytes(os.urandom(6), "big") >> (48 - SEED_BITS)


class UuidAPI:
    namespace = "okra.uuid"
    description = "random (v4) and time-ordered (v7) UUIDs, 16 bytes each"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # One v7 generator per runtime (each has its own clock, maybe a FakeClock), kept
        # across deploys, so a redeployed package's ids still sort after its old ones.
        self._generators: weakref.WeakKeyDictionary[HostEnvironment, V7Generator] = (
            weakref.WeakKeyDictionary()
        )

    def function_names(self) -> Sequence[str]:
        return ("v4", "v7")

    def generator(self, env: HostEnvironment) -> V7Generator:
        """The v7 generator of the runtime that `env` belongs to."""
        with self._lock:
            generator = self._generators.get(env)
            if generator is None:
                generator = self._generators[env] = V7Generator(env.clock)
            return generator

    def functions(self, config: Mapping[str, Any], env: HostEnvironment) -> Sequence[HostFunction]:
        if config:
            raise ConfigError(
                f"unknown okra.uuid settings: {', '.join(sorted(map(str, config)))} "
                "(okra.uuid has no settings)"
            )
        generator = self.generator(env)

        def v4(ctx: HostContext, out_ptr: int, out_cap: int) -> int:
            return ctx.return_data(new_v4(), out_ptr, out_cap)

        def v7(ctx: HostContext, out_ptr: int, out_cap: int) -> int:
            return ctx.return_data(generator.next(), out_ptr, out_cap)

        # Neither waits on anything, so a service granted only these may run inline.
        return (
            HostFunction(self.namespace, "v4", ("i32", "i32"), v4, blocking=False),
            HostFunction(self.namespace, "v7", ("i32", "i32"), v7, blocking=False),
        )


@hookimpl
def register_host_apis(register):
    register(UuidAPI())
