"""What the built-in state stores check and compute alike, so they agree to the byte.

The StateStore contract (okra_core/state.py, docs/state.md) leaves a few details to
pin down; these are the built-in stores' answers, and the conformance suite checks them:

* A counter is a decimal integer: an optional "-", then ASCII digits (leading zeros
  allowed), within the signed 64-bit range, because that is what `okra.state.increment`
  hands a guest. Anything else is `NotAnInteger`. An increment whose result would leave
  that range raises `OverflowError` and changes nothing.
* `ttl` is seconds, > 0 and at most MAX_TTL_SECONDS (ValueError otherwise). Expiry is kept in whole
  milliseconds of the store's clock's wall time, rounded up, so all stores expire a
  value at the same instant.
* A cursor is a key: `list(cursor=k)` continues with the keys after `k`, whoever made
  `k` (the host API relies on it to cut a page short).
"""

from __future__ import annotations

import math
import re

from okra_core.state import MAX_LIST_LIMIT, NotAnInteger

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
#: Longest `ttl`: a century, so an expiry time always fits every store's integers.
MAX_TTL_SECONDS = 100 * 365 * 24 * 3600

_COUNTER = re.compile(rb"-?[0-9]+")


def parse_counter(value: bytes) -> int:
    """The integer a stored counter holds; NotAnInteger for anything else."""
    if not _COUNTER.fullmatch(value):
        raise NotAnInteger(f"the stored value is not a decimal integer ({_preview(value)})")
    digits = value.lstrip(b"-").lstrip(b"0")
    if len(digits) > 19:  # before int(): a megabyte of digits is not worth converting
        raise NotAnInteger(f"the stored value is outside the 64-bit range ({_preview(value)})")
    number = int(value)
    if not INT64_MIN <= number <= INT64_MAX:
        raise NotAnInteger(f"the stored value is outside the 64-bit range ({_preview(value)})")
    return number


def add_counter(current: int, delta: int) -> int:
    """`current + delta`, or OverflowError if that leaves the signed 64-bit range."""
    check_delta(delta)
    total = current + delta
    if not INT64_MIN <= total <= INT64_MAX:
        raise OverflowError(f"incrementing {current} by {delta} leaves the 64-bit range")
    return total


def check_delta(delta: int) -> None:
    if isinstance(delta, bool) or not isinstance(delta, int):
        raise TypeError(f"delta must be an int, got {type(delta).__name__}")
    if not INT64_MIN <= delta <= INT64_MAX:
        raise OverflowError(f"delta {delta} is outside the 64-bit range")


def ttl_ms(ttl: float | None) -> int | None:
    """A `ttl` argument in whole milliseconds (rounded up), or None for no expiry."""
    if ttl is None:
        return None
    if isinstance(ttl, bool) or not isinstance(ttl, (int, float)):
        raise TypeError(f"ttl must be a number of seconds, got {type(ttl).__name__}")
    if not (math.isfinite(ttl) and 0 < ttl <= MAX_TTL_SECONDS):
        raise ValueError(
            f"ttl must be a positive number of seconds, at most {MAX_TTL_SECONDS}, got {ttl!r}"
        )
    return max(1, math.ceil(ttl * 1000))


def check_version(version: int) -> None:
    if isinstance(version, bool) or not isinstance(version, int):
        raise TypeError(f"version must be an int, got {type(version).__name__}")
    if version < 0:
        raise ValueError(f"versions are never negative (got {version})")


def check_limit(limit: int) -> None:
    if isinstance(limit, bool) or not isinstance(limit, int):
        raise TypeError(f"limit must be an int, got {type(limit).__name__}")
    if not 1 <= limit <= MAX_LIST_LIMIT:
        raise ValueError(f"limit must be 1 to {MAX_LIST_LIMIT}, got {limit}")


def prefix_end(prefix: bytes) -> bytes | None:
    """The smallest key after every key that starts with `prefix` (None: no such key,
    the prefix is empty or all 0xff)."""
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return None
    return stripped[:-1] + bytes((stripped[-1] + 1,))


def start_after(prefix: bytes, cursor: bytes | None) -> tuple[bytes, bool]:
    """Where a listing starts: (key, inclusive). The prefix itself, inclusive, unless the
    cursor is at or past it."""
    if cursor is not None and cursor >= prefix:
        return cursor, False
    return prefix, True


def _preview(value: bytes) -> str:
    return repr(value[:24]) + (f"... ({len(value)} bytes)" if len(value) > 24 else "")
