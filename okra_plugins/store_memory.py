"""State store `memory`: a dict behind a lock, gone when the process ends.

For tests and `okra dev`, where state that survives a restart is a surprise, not a
feature. It keeps the whole StateStore contract (versions, TTL on an injectable clock,
counters, ordered listing), so a service behaves the same on it as on `sqlite` or
`redis`. Each namespace keeps its keys sorted (bisect), so `list` costs O(log n + page).
"""

from __future__ import annotations

import bisect
import threading
from typing import Any

from okra_core.clock import Clock, SystemClock
from okra_core.errors import ConfigError
from okra_core.hookspecs import hookimpl
from okra_core.state import Entry, Page
from okra_plugins._state_common import (
    add_counter,
    check_delta,
    check_limit,
    check_version,
    parse_counter,
    prefix_end,
    start_after,
    ttl_ms,
)


class _Namespace:
    __slots__ = ("entries", "keys")

    def __init__(self) -> None:
        #: key -> (value, version, expiry in wall-clock ms or None)
        self.entries: dict[bytes, tuple[bytes, int, int | None]] = {}
        #: The keys of `entries`, sorted.
        self.keys: list[bytes] = []


class MemoryStore:
    name = "memory"

    def __init__(self, clock: Clock | None = None):
        self._clock = clock or SystemClock()
        self._lock = threading.Lock()
        self._namespaces: dict[str, _Namespace] = {}
        #: One counter for every write: versions only grow, even across deletes.
        self._version = 0

    def _now_ms(self) -> int:
        return self._clock.time_ns() // 1_000_000

    def _live(
        self, space: _Namespace | None, key: bytes, now: int
    ) -> tuple[bytes, int, int | None] | None:
        """The key's record if it has not expired; an expired one is dropped."""
        if space is None:
            return None
        record = space.entries.get(key)
        if record is not None and record[2] is not None and record[2] <= now:
            self._drop(space, key)
            return None
        return record

    @staticmethod
    def _drop(space: _Namespace, key: bytes) -> None:
        del space.entries[key]
        index = bisect.bisect_left(space.keys, key)
        del space.keys[index]

    def _write(self, namespace: str, key: bytes, value: bytes, expires: int | None) -> int:
        space = self._namespaces.get(namespace)
        if space is None:
            space = self._namespaces[namespace] = _Namespace()
        if key not in space.entries:
            bisect.insort(space.keys, key)
        self._version += 1
        space.entries[key] = (value, self._version, expires)
        return self._version

    def _expiry(self, ttl: float | None, now: int) -> int | None:
        ms = ttl_ms(ttl)
        return None if ms is None else now + ms

    def get(self, namespace: str, key: bytes) -> Entry | None:
        key = bytes(key)
        with self._lock:
            record = self._live(self._namespaces.get(namespace), key, self._now_ms())
            return None if record is None else Entry(record[0], record[1])

    def set(self, namespace: str, key: bytes, value: bytes, *, ttl: float | None = None) -> int:
        key, value = bytes(key), bytes(value)
        with self._lock:
            now = self._now_ms()
            return self._write(namespace, key, value, self._expiry(ttl, now))

    def delete(self, namespace: str, key: bytes) -> bool:
        key = bytes(key)
        with self._lock:
            space = self._namespaces.get(namespace)
            if self._live(space, key, self._now_ms()) is None:
                return False
            assert space is not None
            self._drop(space, key)
            if not space.keys:
                del self._namespaces[namespace]
            return True

    def compare_and_set(
        self, namespace: str, key: bytes, value: bytes, *, version: int, ttl: float | None = None
    ) -> int | None:
        check_version(version)
        key, value = bytes(key), bytes(value)
        with self._lock:
            now = self._now_ms()
            expires = self._expiry(ttl, now)
            record = self._live(self._namespaces.get(namespace), key, now)
            if (0 if record is None else record[1]) != version:
                return None
            return self._write(namespace, key, value, expires)

    def increment(
        self, namespace: str, key: bytes, delta: int, *, ttl: float | None = None
    ) -> int:
        check_delta(delta)
        key = bytes(key)
        with self._lock:
            now = self._now_ms()
            expires = self._expiry(ttl, now)
            record = self._live(self._namespaces.get(namespace), key, now)
            total = add_counter(0 if record is None else parse_counter(record[0]), delta)
            self._write(namespace, key, str(total).encode(), expires)
            return total

    def list(
        self, namespace: str, prefix: bytes = b"", *, cursor: bytes | None = None,
        limit: int = 100,
    ) -> Page:
        check_limit(limit)
        prefix = bytes(prefix)
        end = prefix_end(prefix)
        start, inclusive = start_after(prefix, None if cursor is None else bytes(cursor))
        entries: list[tuple[bytes, Entry]] = []
        with self._lock:
            now = self._now_ms()
            space = self._namespaces.get(namespace)
            if space is None:
                return Page([], None)
            keys = space.keys
            index = (bisect.bisect_left if inclusive else bisect.bisect_right)(keys, start)
            expired: list[bytes] = []
            more = False
            while index < len(keys):
                key = keys[index]
                index += 1
                if end is not None and key >= end:
                    break
                value, version, expires = space.entries[key]
                if expires is not None and expires <= now:
                    expired.append(key)
                    continue
                if len(entries) == limit:
                    more = True
                    break
                entries.append((key, Entry(value, version)))
            for key in expired:
                self._drop(space, key)
        return Page(entries, entries[-1][0] if more else None)

    def close(self) -> None:
        with self._lock:
            self._namespaces.clear()

    def __repr__(self) -> str:
        return "MemoryStore()"


def make_memory_store(clock: Clock | None = None, **unknown: Any) -> MemoryStore:
    if unknown:
        raise ConfigError(
            f"unknown options for state store memory: {', '.join(sorted(unknown))} "
            "(known: clock)"
        )
    return MemoryStore(clock=clock)


@hookimpl
def register_state_stores(register):
    register("memory", make_memory_store)
