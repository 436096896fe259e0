"""One deadline for a whole fetch, across connecting, sending, every redirect and every
read of the body.

httpx's timeouts bound each network operation, not their sum, so a server that sends a
byte just before each read timeout could hold a guest's thread for far longer than its
call deadline. This network backend bounds every blocking socket operation by the
deadline of the fetch running on the calling thread (`deadline(...)`); past it, the
operation fails with httpcore's timeout error, which httpx raises as its own.
"""

from __future__ import annotations

import contextlib
import ssl
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any

import httpcore

_current = threading.local()


@contextlib.contextmanager
def deadline(at: float) -> Iterator[None]:
    """Bound the network operations of this thread by `at` (time.monotonic() seconds)."""
    previous = getattr(_current, "at", None)
    _current.at = at
    try:
        yield
    finally:
        _current.at = previous


def _clamp(timeout: float | None, error: type[Exception]) -> float | None:
    at = getattr(_current, "at", None)
    if at is None:
        return timeout
    left = at - time.monotonic()
    if left <= 0:
        raise error("the fetch's deadline has passed")
    return left if timeout is None else min(timeout, left)


class DeadlineStream(httpcore.NetworkStream):
    def __init__(self, stream: httpcore.NetworkStream):
        self._stream = stream

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._stream.read(max_bytes, _clamp(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._stream.write(buffer, _clamp(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._stream.close()

    def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        stream = self._stream.start_tls(
            ssl_context, server_hostname, _clamp(timeout, httpcore.ConnectTimeout)
        )
        return DeadlineStream(stream)

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)


class DeadlineBackend(httpcore.NetworkBackend):
    """httpcore's synchronous sockets, each operation bounded by the thread's deadline.

    (Name resolution inside connect is not: the system resolver takes no timeout.)
    """

    def __init__(self) -> None:
        self._backend = httpcore.SyncBackend()

    def connect_tcp(
        self, host: str, port: int, timeout: float | None = None,
        local_address: str | None = None, socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        stream = self._backend.connect_tcp(
            host, port, _clamp(timeout, httpcore.ConnectTimeout), local_address, socket_options
        )
        return DeadlineStream(stream)

    def connect_unix_socket(
        self, path: str, timeout: float | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        raise httpcore.ConnectError("okra.http does not connect to unix sockets")

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)
