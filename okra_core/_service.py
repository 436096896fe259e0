"""The service actor: receives calls for one service and runs them on its worker pool."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from okra_core import abi
from okra_core.descriptors import ServiceSchema, parse_input
from okra_core.engine import GuestFault, GuestTrap
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
        executor: ThreadPoolExecutor,
        logger: logging.Logger,
        *,
        validate_output: bool = True,
    ):
        self.schema = schema
        self.pool = pool
        self.executor = executor
        self.log = logger
        self.validate_output = validate_output
        self._prefixes = {
            name: abi.request_prefix(schema.name, name) for name in schema.methods
        }

    async def receive(self, message: Invoke) -> bytes:
        method = self.schema.methods.get(message.method)
        if method is None:
            raise RpcError(
                StatusCode.UNIMPLEMENTED,
                f"method {message.method} not found in service {self.schema.name}",
            )
        if method.client_streaming or method.server_streaming:
            raise RpcError(
                StatusCode.UNIMPLEMENTED,
                f"{method.full_path} is a streaming method; guest ABI v1 serves unary methods only",
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
        instance = await self.pool.acquire(message.deadline - loop.time())
        future = loop.run_in_executor(self.executor, _call_guest, instance, envelope)
        future.add_done_callback(lambda f: self._finished(f, instance))
        try:
            response = await asyncio.wait_for(
                asyncio.shield(future), message.deadline - loop.time()
            )
        except asyncio.TimeoutError:
            raise RpcError(
                StatusCode.DEADLINE_EXCEEDED, f"{method.full_path}: deadline exceeded"
            ) from None
        except GuestTrap as exc:
            raise RpcError(StatusCode.INTERNAL, f"guest trapped in {method.full_path}: {exc}") from None
        except GuestFault as exc:
            raise RpcError(StatusCode.INTERNAL, f"guest broke the ABI in {method.full_path}: {exc}") from None
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

    def _finished(self, future: asyncio.Future, instance) -> None:
        """Return the instance once the guest is done, even if the caller gave up."""
        exc = None if future.cancelled() else future.exception()
        if isinstance(exc, (GuestTrap, GuestFault)):
            self.log.warning("instance discarded: %s", exc)
            self.pool.release(instance, discard=True)
        elif exc is not None:
            self.log.error("instance discarded after a host error: %r", exc)
            self.pool.release(instance, discard=True)
        else:
            self.pool.release(instance)

    async def on_stop(self) -> None:
        await self.pool.close(grace=10.0)
        self.executor.shutdown(wait=False)


def _call_guest(instance, envelope: bytes) -> tuple[bytes, int, str]:
    """Runs on a worker thread: one call into the guest, then its envelope decoded (a
    malformed envelope is the guest's fault, so the instance is discarded)."""
    response = instance.handle(envelope)
    try:
        return abi.decode_response(response)
    except ValueError as exc:
        raise GuestFault(f"malformed response envelope: {exc}") from None
