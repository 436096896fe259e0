"""Key-value state for services, behind one interface.

State stores are plugins (`register_state_stores`); the host API `okra.state` uses one on
a service's behalf, in a namespace of its own (per key for a keyed service), so a service
only ever sees its own keys.

The interface is synchronous and thread-safe: host functions run on the worker thread of
the guest that calls them, so a blocking call there costs one thread, never the event
loop. Async code (an embedder's) calls a store through `asyncio.to_thread`.

Semantics every store keeps (the conformance suite, tests/test_state_stores.py, checks
them):

* Every write of a key (set, compare-and-set, increment) gives it a new version, larger
  than any version the key had before in that namespace; a missing key has version 0.
* `ttl` (seconds) makes a value expire; an expired value reads as missing. A write
  without `ttl` clears any earlier expiry.
* `ttl` is above 0 and at most a century (ValueError otherwise).
* `increment` keeps the counter as a decimal integer (b"42", `-?[0-9]+` within signed 64
  bits), so `get` reads it; it raises `NotAnInteger` if the stored value is something
  else, and `OverflowError` (changing nothing) if the result would leave 64 bits.
* `list` returns entries in byte order of key, `limit` at a time; the page's `cursor`,
  passed back, continues after the last key returned (None when nothing is left). A
  cursor is a key: `cursor=k` lists the keys after `k`, so a caller may cut a page short
  and continue from the last key it kept.
* Namespaces are isolated: nothing in one can be read, listed or changed through another.
"""

from __future__ import annotations

import dataclasses
from typing import Protocol, runtime_checkable

#: Largest `limit` a `list` call may ask for.
MAX_LIST_LIMIT = 1000


class NotAnInteger(ValueError):
    """`increment` found a value that is not a decimal integer."""


@dataclasses.dataclass(frozen=True, slots=True)
class Entry:
    value: bytes
    version: int


@dataclasses.dataclass(frozen=True, slots=True)
class Page:
    """One page of `list`: (key, entry) pairs in key order, and where the next starts."""

    entries: list[tuple[bytes, Entry]]
    cursor: bytes | None


@runtime_checkable
class StateStore(Protocol):
    name: str

    def get(self, namespace: str, key: bytes) -> Entry | None: ...

    def set(self, namespace: str, key: bytes, value: bytes, *, ttl: float | None = None) -> int:
        """Store `value`; return its new version."""

    def delete(self, namespace: str, key: bytes) -> bool:
        """Return whether the key existed."""

    def compare_and_set(
        self, namespace: str, key: bytes, value: bytes, *, version: int, ttl: float | None = None
    ) -> int | None:
        """Store `value` only if the key's version is `version` (0: only if it does not
        exist). Return the new version, or None if the version did not match."""

    def increment(
        self, namespace: str, key: bytes, delta: int, *, ttl: float | None = None
    ) -> int:
        """Add `delta` to the counter at `key` (a missing key counts as 0); return the
        new value. Raise NotAnInteger if the value is not a decimal integer."""

    def list(
        self, namespace: str, prefix: bytes = b"", *, cursor: bytes | None = None,
        limit: int = 100,
    ) -> Page: ...

    def close(self) -> None: ...
