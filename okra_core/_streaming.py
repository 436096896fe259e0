"""Server-streaming calls: each response message goes to the caller as the guest sends it.

A streaming call is one `okra_handle` call on a worker thread (never inline: the guest
may wait for its caller), during which the guest calls `okra.abi.send` once per message
(`docs/abi.md`, version 2). `send` puts the message into a `ResponseStream`, a small
bounded buffer that the caller reads on the event loop. When the buffer is full, `send`
blocks the guest's thread until the caller reads: that is the backpressure, and no
stream is ever held in memory whole. When the caller goes away or the deadline passes,
`send` fails with CANCELLED or DEADLINE_EXCEEDED so the guest stops; the instance stays
lent to the call until the guest returns from `okra_handle`.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from okra_core import abi
from okra_core.descriptors import MethodSchema
from okra_core.callchain import CallChain
from okra_core.engine import GuestFault, GuestInterrupted, GuestTimeout, GuestTrap
from okra_core.hostapi import HostError
from okra_core.status import RpcError, StatusCode

if TYPE_CHECKING:
    from okra_core._service import ServiceActor


class CallExpired(Exception):
    """The call's deadline passed before a worker thread could start it; the guest was
    never entered, so its instance (and a singleton's or a key's state) is kept."""

#: How many messages of one stream may wait for a slow caller before the guest pauses.
DEFAULT_BUFFER = 8
#: How long after its deadline a streaming guest is stopped by the engine: time to see
#: `send` fail and return cleanly, keeping its instance.
STOP_GRACE = 0.25

_END = object()  # the terminal state of a stream that ended well


@dataclasses.dataclass(frozen=True, slots=True)
class InvokeStream:
    """Call server-streaming `method` with `payload`; answered with a ResponseStream."""

    method: str
    payload: bytes
    metadata: Sequence[tuple[str, str]]
    deadline: float  # event-loop time
    #: The chain of calls this one belongs to; None for a call from outside.
    chain: CallChain | None = None


class ResponseStream:
    """The messages of one streaming call, from the guest's thread to the event loop.

    The guest side (`send`, an `abi.StreamSink`) runs on the worker thread; everything
    else runs on the loop. Iterate it for the messages; `close()` cancels the call.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        path: str,
        *,
        capacity: int = DEFAULT_BUFFER,
        validate: Callable[[bytes], Any] | None = None,
        output_name: str = "",
    ):
        if capacity < 1:
            raise ValueError(f"a stream buffer holds at least one message, got {capacity}")
        self.path = path
        self._loop = loop
        self._capacity = capacity
        self._validate = validate
        self._output_name = output_name
        self._items: collections.deque[bytes] = collections.deque()
        self._cond = threading.Condition(threading.Lock())
        #: Set once the guest may send no more: what `send` raises from then on.
        self._stop: HostError | None = None
        #: Delivered at once, dropping buffered messages (cancelled, deadline passed).
        self._abort: RpcError | None = None
        #: Delivered after the buffered messages: _END, or the error the call ended with.
        self._end: object = None
        #: The caller is done with the stream (saw its end, or closed it).
        self._over = False
        self._waiter: asyncio.Future | None = None
        self._timer: asyncio.TimerHandle | None = None

    # -- the guest's side (worker thread) ---------------------------------------------

    def send(self, message: bytes) -> None:
        if self._validate is not None:
            try:
                self._validate(message)
            except Exception as exc:
                error = RpcError(
                    StatusCode.INTERNAL,
                    f"guest sent a message that is not a valid {self._output_name} in "
                    f"{self.path}: {exc}",
                )
                self._fail(error, HostError(StatusCode.INTERNAL, error.message))
                raise self._stop from None
        with self._cond:
            while self._stop is None and len(self._items) >= self._capacity:
                self._cond.wait()
            if self._stop is not None:
                raise self._stop
            self._items.append(message)
            waiter, self._waiter = self._waiter, None
        if waiter is not None:
            self._loop.call_soon_threadsafe(_wake, waiter)

    def _fail(self, error: RpcError, stop: HostError) -> None:
        """The guest broke the stream: deliver `error` after what it sent (any thread)."""
        with self._cond:
            if self._stop is None:
                self._stop = stop
            if self._end is None:
                self._end = error
            waiter, self._waiter = self._waiter, None
        if waiter is not None:
            self._loop.call_soon_threadsafe(_wake, waiter)

    # -- the call's side (event loop) -------------------------------------------------

    def expire_at(self, deadline: float, message: str | None = None) -> None:
        """Fail the stream with DEADLINE_EXCEEDED at `deadline` (`message`, or a plain
        "deadline exceeded")."""
        self._timer = self._loop.call_at(
            deadline, self.cancel, StatusCode.DEADLINE_EXCEEDED,
            message or f"{self.path}: deadline exceeded",
        )

    def finish(self, error: RpcError | None) -> None:
        """The guest returned from `okra_handle`: the stream ends after its messages."""
        with self._cond:
            if self._stop is None:
                self._stop = HostError(StatusCode.FAILED_PRECONDITION, "the call has ended")
            if self._end is None:
                self._end = _END if error is None else error
            waiter, self._waiter = self._waiter, None
        if waiter is not None:
            _wake(waiter)

    def cancel(self, code: StatusCode, message: str) -> None:
        """End the call now: the caller gets RpcError(code, message) unless it already
        saw the end, buffered messages are dropped, and the guest's next `send` fails."""
        with self._cond:
            if self._stop is None:
                self._stop = HostError(code, message)
            if not self._over and self._abort is None:
                self._abort = RpcError(code, message)
            self._items.clear()
            self._cond.notify_all()
            waiter, self._waiter = self._waiter, None
        if waiter is not None:
            _wake(waiter)

    def close(self) -> None:
        """The caller is done: cancel the call if it is still going. Idempotent."""
        self.cancel(StatusCode.CANCELLED, f"{self.path}: the caller closed the stream")
        self._done()

    def _done(self) -> None:
        self._over = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def __aiter__(self) -> ResponseStream:
        return self

    async def __anext__(self) -> bytes:
        while True:
            with self._cond:
                if self._over:
                    raise StopAsyncIteration
                if self._abort is not None:
                    self._done()
                    raise self._abort
                if self._items:
                    message = self._items.popleft()
                    self._cond.notify()  # a sender waiting for room may go on
                    return message
                end = self._end
                if end is None:
                    waiter = self._waiter = self._loop.create_future()
            if end is not None:
                self._done()
                if end is _END:
                    raise StopAsyncIteration
                raise end  # type: ignore[misc]
            await waiter


def _wake(waiter: asyncio.Future) -> None:
    if not waiter.done():
        waiter.set_result(None)


async def open_stream(actor: ServiceActor, message: InvokeStream) -> ResponseStream:
    """Check a streaming call like a unary one, lend it an instance and start the guest
    on a worker thread; the instance goes back to the pool when the guest returns."""
    schema = actor.schema
    method = schema.methods.get(message.method)
    if method is None:
        raise RpcError(
            StatusCode.UNIMPLEMENTED,
            f"method {message.method} not found in service {schema.name}",
        )
    _check_streamable(method, actor.abi_version)
    key = actor.check_request(method, message.payload, message.metadata)
    envelope = abi.encode_request(
        actor._prefixes[message.method],
        message.payload,
        abi.encode_metadata(message.metadata) if message.metadata else b"",
    )
    loop = asyncio.get_running_loop()
    deadline = min(message.deadline, loop.time() + actor.limits.call_seconds)
    lease, guest = await actor.lend(key, message.chain, deadline, message.metadata)
    stream = ResponseStream(
        loop,
        method.full_path,
        capacity=actor.stream_buffer,
        validate=method.output_class.FromString if actor.validate_output else None,
        output_name=method.output.full_name,
    )

    def done(result: Any, exc: BaseException | None) -> None:
        # On the loop once the guest has returned, whether or not anyone still listens.
        actor.streams.discard(stream)
        actor.finished(lease, exc)
        if isinstance(exc, GuestTimeout):
            stream.finish(actor.timeout_error(method.full_path, message.deadline, deadline))
        else:
            stream.finish(_outcome(method, result, exc))

    try:
        actor.workers.submit(
            loop, done, _run_guest, guest, envelope, stream, deadline + STOP_GRACE
        )
    except BaseException:
        actor.finished(lease, None)
        raise
    actor.streams.add(stream)
    limited = deadline < message.deadline  # the service's time limit, not the caller's
    stream.expire_at(deadline, actor.limit_message(method.full_path) if limited else None)
    return stream


def _check_streamable(method: MethodSchema, abi_version: int) -> None:
    if method.client_streaming:
        kind = "bidirectional-streaming" if method.server_streaming else "client-streaming"
        raise RpcError(
            StatusCode.UNIMPLEMENTED,
            f"{method.full_path} is a {kind} method; OKRA serves unary and server-streaming "
            "methods only",
        )
    if not method.server_streaming:
        raise RpcError(
            StatusCode.UNIMPLEMENTED,
            f"{method.full_path} is a unary method: call it with Runtime.invoke",
        )
    if abi_version < abi.STREAMING_ABI_VERSION:
        raise RpcError(
            StatusCode.UNIMPLEMENTED,
            f"{method.full_path} is a server-streaming method, but its package speaks guest "
            f"ABI v{abi_version}, which serves unary methods only: rebuild it with an SDK "
            f"that speaks v{abi.STREAMING_ABI_VERSION}",
        )


def _run_guest(
    instance, envelope: bytes, stream: ResponseStream, deadline: float
) -> tuple[bytes, int, str]:
    """Runs on a worker thread: the one call into the guest, with `okra.abi.send` bound
    to `stream` for its duration. The engine stops a guest still running at `deadline`
    (one that computes without sending would never see `send` fail)."""
    if time.monotonic() >= deadline:
        raise CallExpired()  # waited too long for a worker thread: do not enter the guest
    abi.bind_stream(stream)
    try:
        response = instance.handle(envelope, deadline)
    finally:
        abi.bind_stream(None)
    try:
        return abi.decode_response(response)
    except ValueError as exc:
        raise GuestFault(f"malformed response envelope: {exc}") from None


def _outcome(method: MethodSchema, result: Any, exc: BaseException | None) -> RpcError | None:
    """How the call ended, from the guest's final envelope or its failure."""
    path = method.full_path
    if isinstance(exc, CallExpired):
        return RpcError(StatusCode.DEADLINE_EXCEEDED, f"{path}: deadline exceeded")
    if isinstance(exc, GuestInterrupted):
        return RpcError(StatusCode.UNAVAILABLE, f"{path}: stopped: the service is shutting down")
    if isinstance(exc, GuestTrap):
        return RpcError(StatusCode.INTERNAL, f"guest trapped in {path}: {exc}")
    if isinstance(exc, GuestFault):
        return RpcError(StatusCode.INTERNAL, f"guest broke the ABI in {path}: {exc}")
    if exc is not None:
        return RpcError(StatusCode.INTERNAL, f"{path} failed in the host: {exc!r}")
    output, code, text = result
    if code:
        return RpcError(StatusCode.from_wire(code), text)
    if output:
        return RpcError(
            StatusCode.INTERNAL,
            f"guest broke the ABI in {path}: the final response of a streaming call carries "
            "output; stream messages go through okra.abi.send",
        )
    return None
