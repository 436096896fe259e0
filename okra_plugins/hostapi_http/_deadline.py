"""One deadline for a whole fetch, across connecting, sending, every redirect and every
read of the body.

httpx's timeouts bound each network operation, not their sum, so a server that sends a
byte just before each read timeout could hold a guest's thread for far longer than its
call deadline. This network backend bounds every blocking socket operation, and name
resolution, by the deadline of the fetch running on the calling thread
(`deadline(...)`); past it, the operation fails with httpcore's timeout error, which
httpx raises as its own.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import ipaddress
import socket
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


#: Threads resolving names for fetches; a resolution past its fetch's deadline is
#: abandoned (the system resolver takes no timeout) and ends on its own.
_RESOLVERS = concurrent.futures.ThreadPoolExecutor(max_workers=8, thread_name_prefix="okra-dns")


def _resolve(host: str, port: int, timeout: float | None) -> list[str]:
    """The addresses of `host`, in the resolver's order, within `timeout` seconds."""
    try:
        ipaddress.ip_address(host)
        return [host]
    except ValueError:
        pass
    lookup = _RESOLVERS.submit(socket.getaddrinfo, host, port, type=socket.SOCK_STREAM)
    try:
        infos = lookup.result(timeout)
    except concurrent.futures.TimeoutError:
        raise httpcore.ConnectTimeout(f"resolving {host} did not finish by the fetch's deadline") from None
    except OSError as exc:
        raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from None
    addresses: list[str] = []
    for *_, sockaddr in infos:
        if sockaddr[0] not in addresses:
            addresses.append(sockaddr[0])
    return addresses


class DeadlineBackend(httpcore.NetworkBackend):
    """httpcore's synchronous sockets, each operation bounded by the thread's deadline,
    name resolution included (in `_RESOLVERS`, abandoned at the deadline)."""

    def __init__(self) -> None:
        self._backend = httpcore.SyncBackend()

    def connect_tcp(
        self, host: str, port: int, timeout: float | None = None,
        local_address: str | None = None, socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        addresses = _resolve(host, port, _clamp(timeout, httpcore.ConnectTimeout))
        failure: Exception | None = None
        for address in addresses:  # each in turn, as socket.create_connection does
            try:
                stream = self._backend.connect_tcp(
                    address, port, _clamp(timeout, httpcore.ConnectTimeout), local_address,
                    socket_options,
                )
                return DeadlineStream(stream)
            except httpcore.ConnectError as exc:
                failure = exc
        raise failure or httpcore.ConnectError(f"{host} has no address")

    def connect_unix_socket(
        self, path: str, timeout: float | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        raise httpcore.ConnectError("okra.http does not connect to unix sockets")

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)
