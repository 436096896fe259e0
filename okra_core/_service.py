"""The service actor: receives calls for one service and runs them on its instances.

Unary calls (`Invoke`) are answered with the output; server-streaming calls
(`InvokeStream`, see `_streaming`) with a stream of messages. Where a call runs depends
on the service's kind: any instance of the pool (regular), or its key's activation
(keyed, and singleton: one activation), see `_activations`. Either way one call runs in
one instance at a time, under the service's limits (`ServiceLimits`), and an instance
that trapped, overran its deadline or broke the ABI is discarded.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Sequence
from typing import Any

from okra_core import abi
from okra_core._activations import Activations
from okra_core._streaming import (
    DEFAULT_BUFFER,
    CallExpired,
    InvokeStream,
    ResponseStream,
    open_stream,
)
from okra_core._supervisor import Supervisor
from okra_core._workers import CallRunner, InlineOverrun, WorkerThreads
from okra_core.callchain import CallChain, hop_name
from okra_core.descriptors import MethodSchema, ServiceSchema, parse_input
from okra_core.engine import GuestFault, GuestInterrupted, GuestTimeout, GuestTrap, Instance
from okra_core.hostapi import HostContext
from okra_core.manifest import KeySource
from okra_core.pool import WorkerPool
from okra_core.status import RpcError, StatusCode

#: Longest key a keyed service accepts (the key is kept while its activation lives).
MAX_KEY_LENGTH = 1024


@dataclasses.dataclass(frozen=True, slots=True)
class Invoke:
    """Call `method` with `payload` (binary protobuf); answered with the output bytes."""

    method: str
    payload: bytes
    metadata: Sequence[tuple[str, str]]
    deadline: float  # event-loop time
    #: The chain of calls this one belongs to; None for a call from outside.
    chain: CallChain | None = None


@dataclasses.dataclass(frozen=True)
class ServiceLimits:
    """The limits one service runs under: the manifest's, capped by the operator's."""

    call_seconds: float = 300.0
    #: Who set `call_seconds`, for the error that names it.
    call_seconds_source: str = "limits.timeout_seconds"
    request_bytes: int = 4 * 1024 * 1024
    response_bytes: int = 4 * 1024 * 1024


class Guest:
    """An instance and its HostContext (the host functions' view of the call)."""

    __slots__ = ("instance", "context", "handle", "abi_version", "stderr")

    def __init__(self, instance: Instance, context: HostContext, stderr: Any = None):
        self.instance = instance
        self.context = context
        #: The first stderr line of the current call (`runtime.StderrWatch`), or None.
        self.stderr = stderr
        self.handle = instance.handle
        self.abi_version = instance.abi_version

    def begin(self, chain: CallChain | None, key: str | None, metadata: Any, deadline: float) -> None:
        """Tell the host functions about the call the instance is about to run.
        `deadline` is event-loop time, which is `time.monotonic()`."""
        context = self.context
        context.chain = chain
        context.key = key
        context.metadata = metadata
        context.deadline = deadline

    def close(self) -> None:
        self.context.chain = None
        self.instance.close()


class ServiceActor:
    """One per deployed service. Concurrent: its pool (or its activations) bound how
    many calls run."""

    concurrency = None

    def __init__(
        self,
        schema: ServiceSchema,
        pool: WorkerPool | None,
        workers: WorkerThreads,
        runner: CallRunner,
        logger: logging.Logger,
        *,
        validate_output: bool = True,
        abi_version: int = abi.ABI_VERSION,
        stream_buffer: int = DEFAULT_BUFFER,
        activations: Activations | None = None,
        key: KeySource | None = None,
        limits: ServiceLimits = ServiceLimits(),
        supervisor: Supervisor | None = None,
    ):
        if (pool is None) == (activations is None):
            raise ValueError("a service runs on a pool or on activations, not both")
        self.schema = schema
        self.pool = pool
        #: Keyed services and singletons: an activation per key (one key for a singleton).
        self.activations = activations
        #: Where a keyed service's key comes from (None: a singleton, one key).
        self.key = key
        self.limits = limits
        self.supervisor = supervisor
        self.workers = workers
        self.runner = runner
        self.log = logger
        self.validate_output = validate_output
        #: The guest ABI version the service's package speaks.
        self.abi_version = abi_version
        #: How many messages of a stream may wait for a slow caller (`_streaming`).
        self.stream_buffer = stream_buffer
        #: Streaming calls whose guest is still running.
        self.streams: set[ResponseStream] = set()
        #: The outcomes of unary calls whose guest is still running.
        self.calls: set[asyncio.Future] = set()
        self._prefixes = {
            name: abi.request_prefix(schema.name, name, stream=m.server_streaming)
            for name, m in schema.methods.items()
        }

    async def receive(self, message: Invoke) -> bytes:
        if message.__class__ is InvokeStream:
            return await open_stream(self, message)
        method = self.schema.methods.get(message.method)
        if method is None:
            raise RpcError(
                StatusCode.UNIMPLEMENTED,
                f"method {message.method} not found in service {self.schema.name}",
            )
        if method.client_streaming or method.server_streaming:
            raise RpcError(
                StatusCode.UNIMPLEMENTED,
                f"{method.full_path} is a streaming method; Runtime.invoke serves unary methods "
                "only (server-streaming methods: Runtime.invoke_stream)",
            )
        payload = message.payload
        if self.pool is not None and len(payload) <= self.limits.request_bytes:
            key = None  # the common case, inline: a regular service's request in bounds
            try:
                parse_input(method, payload)
            except ValueError as exc:
                raise _invalid_request(method, exc) from None
        else:
            key = self.check_request(method, payload, message.metadata)
        envelope = abi.encode_request(
            self._prefixes[message.method],
            message.payload,
            abi.encode_metadata(message.metadata) if message.metadata else b"",
        )
        loop = asyncio.get_running_loop()
        path = method.full_path
        deadline = min(message.deadline, loop.time() + self.limits.call_seconds)
        pool = self.pool
        while True:
            if pool is not None:  # the common case, inline: no coroutine for `lend`
                lease = guest = await pool.acquire(deadline - loop.time())
                chain = message.chain
                guest.begin(
                    None if chain is None else chain.then(self.schema.name), None,
                    message.metadata, deadline,
                )
            else:
                lease, guest = await self.lend(key, message.chain, deadline, message.metadata)
            outcome = loop.create_future()

            def done(result, exc, lease=lease, outcome=outcome) -> None:
                # Runs on the loop when the guest is done, even if the caller gave up.
                self.calls.discard(outcome)
                self.finished(lease, exc)
                if not outcome.done():
                    if exc is None:
                        outcome.set_result(result)
                    else:
                        outcome.set_exception(exc)

            self.calls.add(outcome)
            if guest.stderr is not None:
                guest.stderr.line = None
            self.runner.call(loop, done, _call_guest, guest, envelope, deadline)
            # An inline call is already done: no timer to set and cancel.
            timer = None if outcome.done() else loop.call_at(
                deadline, _expire, outcome,
                self.limit_message(path) if deadline < message.deadline
                else f"{path}: deadline exceeded",
            )
            try:
                response = await outcome
            except InlineOverrun:
                continue  # stopped on the loop; the service is back on threads: run it there
            except CallExpired:
                raise RpcError(StatusCode.DEADLINE_EXCEEDED, f"{path}: deadline exceeded") from None
            except GuestTimeout:
                raise self.timeout_error(path, message.deadline, deadline) from None
            except GuestInterrupted:
                raise RpcError(
                    StatusCode.UNAVAILABLE,
                    f"{path}: stopped: {self.schema.name} is shutting down",
                ) from None
            except GuestTrap as exc:
                text = f"guest trapped in {path}: {exc}"
                if guest.stderr is not None:
                    text = guest.stderr.note(text)
                raise RpcError(StatusCode.INTERNAL, text) from None
            except GuestFault as exc:
                raise RpcError(StatusCode.INTERNAL, f"guest broke the ABI in {path}: {exc}") from None
            finally:
                if timer is not None:
                    timer.cancel()
            break
        output, code, text = response
        if code:
            raise RpcError(StatusCode.from_wire(code), text)
        if len(output) > self.limits.response_bytes:
            raise RpcError(
                StatusCode.RESOURCE_EXHAUSTED,
                f"{path}: the response is {len(output)} bytes, over the service's limit of "
                f"{self.limits.response_bytes} (limits.response_bytes)",
            )
        if self.validate_output:
            try:
                method.output_class.FromString(output)
            except Exception as exc:
                raise RpcError(
                    StatusCode.INTERNAL,
                    f"guest returned output that is not a valid {method.output.full_name}: {exc}",
                ) from None
        return output

    # -- shared by unary and streaming calls ---------------------------------------------

    def check_request(
        self, method: MethodSchema, payload: bytes, metadata: Sequence[tuple[str, str]]
    ) -> str | None:
        """Check the request's size and type; return its key (None unless keyed)."""
        if len(payload) > self.limits.request_bytes:
            raise RpcError(
                StatusCode.RESOURCE_EXHAUSTED,
                f"{method.full_path}: the request is {len(payload)} bytes, over the service's "
                f"limit of {self.limits.request_bytes} (limits.request_bytes)",
            )
        key = self.key
        if key is not None and key.field is not None:
            try:
                request = method.input_class.FromString(payload)
            except Exception as exc:
                raise _invalid_request(method, exc) from None
            return self._key_value(getattr(request, key.field), f"request field {key.field!r}")
        try:
            parse_input(method, payload)
        except ValueError as exc:
            raise _invalid_request(method, exc) from None
        if key is None:
            return None if self.activations is None else ""
        name = key.metadata
        for k, v in metadata:
            if k.lower() == name:
                return self._key_value(v, f"metadata {name!r}")
        raise RpcError(
            StatusCode.INVALID_ARGUMENT,
            f"{self.schema.name} is a keyed service: send its key in metadata {name!r} "
            f"(e.g. okra call -H '{name}: ...')",
        )

    def _key_value(self, value: Any, where: str) -> str:
        if isinstance(value, bytes):
            value = value.hex()
        elif not isinstance(value, str):
            value = str(int(value))  # integers, bools and enums
        if not value:
            raise RpcError(
                StatusCode.INVALID_ARGUMENT,
                f"{where} is empty, but it is the key of {self.schema.name}: every call "
                "needs a key",
            )
        if len(value) > MAX_KEY_LENGTH:
            raise RpcError(
                StatusCode.INVALID_ARGUMENT,
                f"{where} is {len(value)} characters long; a key has at most {MAX_KEY_LENGTH}",
            )
        return value

    async def lend(
        self, key: str | None, chain: CallChain | None, deadline: float,
        metadata: Sequence[tuple[str, str]] = (),
    ) -> tuple[Any, Guest]:
        """An instance for one call (and the lease to give back to `finished`), with
        the call's chain, key, metadata and deadline set on its context."""
        remaining = deadline - asyncio.get_running_loop().time()
        if self.activations is None:
            guest = await self.pool.acquire(remaining)
            guest.begin(
                None if chain is None else chain.then(self.schema.name), None, metadata, deadline
            )
            return guest, guest
        if chain is None:
            chain = CallChain.new()
        activation = await self.activations.acquire(key, chain, remaining)
        guest = activation.instance
        guest.begin(chain.then(hop_name(self.schema.name, key or None)), key, metadata, deadline)
        return activation, guest

    def finished(self, lease: Any, exc: BaseException | None) -> None:
        """Give an instance back; discard it if the call failed."""
        discard = exc is not None and exc.__class__ is not CallExpired
        if not discard:
            pass  # a good call, or one that never entered the guest
        elif isinstance(exc, GuestInterrupted):
            self.log.info("instance stopped at shutdown, after the grace period")
        elif isinstance(exc, InlineOverrun):
            self.log.debug("instance discarded: %s", exc)
        elif isinstance(exc, (GuestTrap, GuestFault)):
            if self.supervisor is not None:
                self.supervisor.trapped(str(exc))
            else:
                self.log.warning("instance discarded: %s", exc)
        elif exc is not None:
            self.log.error("instance discarded after a host error: %r", exc)
            if self.supervisor is not None:
                self.supervisor.trapped(f"host error: {exc!r}")
        if self.activations is None:
            self.pool.release(lease, discard=discard)
        else:
            self.activations.release(lease, discard=discard)

    def limit_message(self, path: str) -> str:
        limits = self.limits
        return (
            f"{path}: the call reached the service's time limit of {limits.call_seconds:g}s "
            f"({limits.call_seconds_source}), counted from its arrival: time spent waiting "
            "for an instance or a worker thread counts too"
        )

    def timeout_error(self, path: str, asked: float, deadline: float) -> RpcError:
        if deadline < asked:
            limits = self.limits
            return RpcError(
                StatusCode.DEADLINE_EXCEEDED,
                f"{path}: the guest was stopped at the service's time limit of "
                f"{limits.call_seconds:g}s ({limits.call_seconds_source})",
            )
        return RpcError(
            StatusCode.DEADLINE_EXCEEDED, f"{path}: deadline exceeded; the guest was stopped"
        )

    async def _returned(self, guests: list[Guest], timeout: float) -> None:
        """Wait (a little) for interrupted calls to come back, so their callers are
        answered before the service is gone."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        lent = self.pool.lent if self.pool is not None else self.activations.lent
        while loop.time() < end and any(g in guests for g in lent()):
            await asyncio.sleep(0.01)

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.pool is not None:
            out["pool"] = dataclasses.asdict(self.pool.stats)
        else:
            out["activations"] = len(self.activations)
            out["busy"] = self.activations.busy
        if self.supervisor is not None:
            out["events"] = dict(self.supervisor.counts)
        return out

    def passivate(self) -> int:
        """Release every idle instance now; returns how many."""
        if self.pool is not None:
            before = self.pool.stats.idle
            self.pool.passivate()
            return before
        return self.activations.passivate_idle()

    async def on_stop(self, grace: float) -> None:
        # Closing waits for lent instances, so for the running streams too.
        if self.pool is not None:
            await self.pool.close(grace=grace)
            running = self.pool.lent()
        else:
            await self.activations.close(grace=grace)
            running = self.activations.lent()
        if running:  # still running after the grace period: stop them
            n = len(running)
            self.log.warning(
                "stopping %d call%s still running after the grace period", n, "" if n == 1 else "s"
            )
            for guest in running:
                guest.instance.interrupt()
            # Answer their callers now: a guest waiting in a host function only sees
            # the interrupt when that returns.
            stopped = f"{self.schema.name} is shutting down; the call was stopped"
            for outcome in list(self.calls):
                if not outcome.done():
                    outcome.set_exception(RpcError(StatusCode.UNAVAILABLE, stopped))
            for stream in list(self.streams):
                stream.cancel(StatusCode.UNAVAILABLE, stopped)
            await self._returned(running, timeout=2.0)
        for stream in list(self.streams):  # still running after the grace period
            stream.cancel(StatusCode.UNAVAILABLE, f"{self.schema.name} is shutting down")
        self.workers.close()


def _invalid_request(method: MethodSchema, exc: Exception) -> RpcError:
    return RpcError(
        StatusCode.INVALID_ARGUMENT, f"request is not a valid {method.input.full_name}: {exc}"
    )


def _expire(outcome: asyncio.Future, text: str) -> None:
    """The call's deadline passed (the engine stops a running guest at the same instant,
    but its GuestTimeout reaches the loop after this timer)."""
    if not outcome.done():
        outcome.set_exception(RpcError(StatusCode.DEADLINE_EXCEEDED, text))


def _call_guest(guest: Guest, envelope: bytes, deadline: float) -> tuple[bytes, int, str]:
    """One call into the guest, stopped at `deadline` (loop time, which is monotonic
    time), then its envelope decoded (a malformed envelope is the guest's fault, so the
    instance is discarded)."""
    if time.monotonic() >= deadline:
        raise CallExpired()  # waited too long for a worker thread: do not enter the guest
    response = guest.handle(envelope, deadline)
    try:
        return abi.decode_response(response)
    except ValueError as exc:
        raise GuestFault(f"malformed response envelope: {exc}") from None
