"""The service actor: receives calls for one service and runs them on its worker pool.

Unary calls (`Invoke`) are answered with the output; server-streaming calls
(`InvokeStream`, see `_streaming`) with a stream of messages.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Sequence

from okra_core import abi
from okra_core._streaming import DEFAULT_BUFFER, InvokeStream, ResponseStream, open_stream
from okra_core._workers import CallRunner, InlineOverrun, WorkerThreads
from okra_core.descriptors import ServiceSchema, parse_input
from okra_core.engine import GuestFault, GuestTimeout, GuestTrap
from okra_core.pool import WorkerPool
from okra_core.status import RpcError, StatusCode


@dataclasses.dataclass(frozen=True, slots=True)
class Invoke:
    """Call `method` with `payload` (binary protobuf); answered with the output bytes."""

    method: str
    payload: bytes
    metadata: Sequence[tuple[str, str]]
    deadline: float  # event-loop time


class ServiceActor:
    """One per deployed service. Concurrent: its pool bounds how many calls run."""

    concurrency = None

    def __init__(
        self,
        schema: ServiceSchema,
        pool: WorkerPool,
        workers: WorkerThreads,
        runner: CallRunner,
        logger: logging.Logger,
        *,
        validate_output: bool = True,
        abi_version: int = abi.ABI_VERSION,
        stream_buffer: int = DEFAULT_BUFFER,
    ):
        self.schema = schema
        self.pool = pool
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
        try:
            parse_input(method, message.payload)
        except ValueError as exc:
            raise RpcError(
                StatusCode.INVALID_ARGUMENT,
                f"request is not a valid {method.input.full_name}: {exc}",
            ) from None
        envelope = abi.encode_request(
            self._prefixes[message.method],
            message.payload,
            abi.encode_metadata(message.metadata) if message.metadata else b"",
        )
        loop = asyncio.get_running_loop()
        path = method.full_path
        while True:
            instance = await self.pool.acquire(message.deadline - loop.time())
            outcome = loop.create_future()

            def done(result, exc, instance=instance, outcome=outcome) -> None:
                # Runs on the loop when the guest is done, even if the caller gave up.
                self._finished(instance, exc)
                if not outcome.done():
                    if exc is None:
                        outcome.set_result(result)
                    else:
                        outcome.set_exception(exc)

            self.runner.call(loop, done, _call_guest, instance, envelope, message.deadline)
            # An inline call is already done: no timer to set and cancel.
            timer = None if outcome.done() else loop.call_at(message.deadline, _expire, outcome, path)
            try:
                response = await outcome
            except InlineOverrun:
                continue  # stopped on the loop; the service is back on threads: run it there
            except GuestTimeout:
                raise RpcError(
                    StatusCode.DEADLINE_EXCEEDED, f"{path}: deadline exceeded; the guest was stopped"
                ) from None
            except GuestTrap as exc:
                raise RpcError(StatusCode.INTERNAL, f"guest trapped in {path}: {exc}") from None
            except GuestFault as exc:
                raise RpcError(StatusCode.INTERNAL, f"guest broke the ABI in {path}: {exc}") from None
            finally:
                if timer is not None:
                    timer.cancel()
            break
        output, code, text = response
        if code:
            raise RpcError(StatusCode.from_wire(code), text)
        if self.validate_output:
            try:
                method.output_class.FromString(output)
            except Exception as exc:
                raise RpcError(
                    StatusCode.INTERNAL,
                    f"guest returned output that is not a valid {method.output.full_name}: {exc}",
                ) from None
        return output

    def _finished(self, instance, exc: BaseException | None) -> None:
        """Return the instance to the pool; discard it if the call failed."""
        if isinstance(exc, (GuestTrap, GuestFault)):
            self.log.warning("instance discarded: %s", exc)
            self.pool.release(instance, discard=True)
        elif exc is not None:
            self.log.error("instance discarded after a host error: %r", exc)
            self.pool.release(instance, discard=True)
        else:
            self.pool.release(instance)

    async def on_stop(self, grace: float) -> None:
        await self.pool.close(grace=grace)
        for stream in list(self.streams):  # still running after the grace period
            stream.cancel(StatusCode.UNAVAILABLE, f"{self.schema.name} is shutting down")
        self.workers.close()


def _expire(outcome: asyncio.Future, path: str) -> None:
    if not outcome.done():
        outcome.set_exception(RpcError(StatusCode.DEADLINE_EXCEEDED, f"{path}: deadline exceeded"))


def _call_guest(instance, envelope: bytes, deadline: float) -> tuple[bytes, int, str]:
    """One call into the guest, stopped at `deadline` (loop time, which is monotonic
    time), then its envelope decoded (a malformed envelope is the guest's fault, so the
    instance is discarded)."""
    response = instance.handle(envelope, deadline)
    try:
        return abi.decode_response(response)
    except ValueError as exc:
        raise GuestFault(f"malformed response envelope: {exc}") from None
