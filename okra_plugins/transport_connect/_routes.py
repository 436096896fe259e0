"""Connect endpoints built at run time from the descriptors of what is deployed.

connectrpc serves a mapping of URL path -> `Endpoint`, normally written by its code
generator. `Routes` is that mapping, filled on demand: `/package.Service/Method` is looked
up in the runtime on first use, turned into an endpoint whose handler forwards the
request bytes to `Runtime.invoke` (or `invoke_stream`), and cached until the runtime
reports a deploy or undeploy. Unknown paths are never cached, so a client cannot grow the
cache.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import AsyncIterator, Collection, Iterator, Mapping
from typing import Any

from connectrpc.code import Code
from connectrpc.errors import ConnectError
from connectrpc.method import IdempotencyLevel, MethodInfo, StreamType
from connectrpc.request import RequestContext
from connectrpc.server import Endpoint
from google.protobuf import descriptor_pb2

from okra_core.descriptors import MethodSchema, ServiceSchema
from okra_core.metadata import filter_metadata
from okra_core.status import RpcError, StatusCode

from ._codecs import Reply
from ._status import TO_CONNECT

log = logging.getLogger("okra.transport.connect")

#: Request headers of the gRPC-Web framing that the shared metadata rule does not know
#: (gRPC never sees them): dropped before it applies.
GRPC_WEB_HEADERS = frozenset({"x-grpc-web"})

_NO_SIDE_EFFECTS = descriptor_pb2.MethodOptions.NO_SIDE_EFFECTS
_IDEMPOTENT = descriptor_pb2.MethodOptions.IDEMPOTENT


@dataclasses.dataclass(frozen=True)
class Refusal:
    """Why a path has no endpoint: a Connect code, an HTTP status and a message."""

    code: StatusCode
    http_status: int
    message: str


class Routes(Mapping[str, Endpoint]):
    """URL path -> connectrpc endpoint of a deployed method, resolved on demand."""

    def __init__(
        self, runtime: Any, *, allow_headers: Collection[str] = (), max_response_size: int | None = None
    ):
        self._runtime = runtime
        self._allow = frozenset(allow_headers)
        self._max_response = max_response_size
        self._cache: dict[str, Endpoint] = {}
        #: The tasks of calls in progress, so that a shutdown can end them with an error
        #: the client understands rather than a cut connection.
        self._calls: set[asyncio.Task] = set()
        self._aborting = False

    def forget(self) -> None:
        """Drop every cached endpoint (the runtime deployed or undeployed something)."""
        self._cache.clear()

    def abort_calls(self) -> int:
        """End every call in progress with UNAVAILABLE (the server is shutting down and
        its grace period is over); returns how many there were."""
        self._aborting = True
        calls = list(self._calls)
        for task in calls:
            task.cancel(_SHUTDOWN)
        return len(calls)

    def _track(self) -> asyncio.Task | None:
        task = asyncio.current_task()
        if task is not None:
            self._calls.add(task)
        return task

    def _aborted(self, task: asyncio.Task | None) -> bool:
        """Whether the CancelledError being handled is abort_calls' (then it is
        consumed, so the handler can answer with an error)."""
        if task is None or not self._aborting or not task.cancelling():
            return False
        task.uncancel()
        return True

    def resolve(self, path: str) -> Endpoint | Refusal:
        endpoint = self._cache.get(path)
        if endpoint is not None:
            return endpoint
        service_name, _, method_name = path.lstrip("/").partition("/")
        schema = self._runtime.schema(service_name) if service_name else None
        if schema is None:
            deployed = ", ".join(sorted(self._runtime.services())) or "none"
            return Refusal(
                StatusCode.UNIMPLEMENTED, 404, f"unknown service {service_name!r} (deployed: {deployed})"
            )
        method = schema.methods.get(method_name)
        if method is None or "/" in method_name:
            known = ", ".join(schema.methods) or "none"
            return Refusal(
                StatusCode.UNIMPLEMENTED,
                404,
                f"service {service_name} has no method {method_name!r} (methods: {known})",
            )
        if method.client_streaming:
            return Refusal(
                StatusCode.UNIMPLEMENTED,
                501,
                f"{service_name}/{method_name} streams requests: only unary and "
                "server-streaming methods are served",
            )
        if method.server_streaming and not hasattr(self._runtime, "invoke_stream"):
            return Refusal(
                StatusCode.UNIMPLEMENTED,
                501,
                f"{service_name}/{method_name} is a streaming method: this runtime has no "
                "streaming calls",
            )
        endpoint = self._endpoint(schema, method)
        self._cache[path] = endpoint
        return endpoint

    # -- the Mapping connectrpc reads ------------------------------------------------

    def get(self, path: str, default: Any = None) -> Endpoint | Any:
        endpoint = self._cache.get(path)
        if endpoint is None:
            endpoint = self.resolve(path)
            if isinstance(endpoint, Refusal):
                return default
        return endpoint

    def __getitem__(self, path: str) -> Endpoint:
        endpoint = self.get(path)
        if endpoint is None:
            raise KeyError(path)
        return endpoint

    def __iter__(self) -> Iterator[str]:
        for service in self._runtime.services():
            schema = self._runtime.schema(service)
            if schema is not None:
                for method in schema.methods.values():
                    if not method.client_streaming:
                        yield method.full_path

    def __len__(self) -> int:
        return sum(1 for _ in self)

    # -- endpoints -------------------------------------------------------------------

    def _endpoint(self, schema: ServiceSchema, method: MethodSchema) -> Endpoint:
        options = schema.descriptor.methods_by_name[method.name].GetOptions()
        info = MethodInfo(
            name=method.name,
            service_name=schema.name,
            input=method.input_class,
            output=method.output_class,
            idempotency_level=_idempotency(options.idempotency_level),
            stream_type=StreamType.SERVER_STREAM if method.server_streaming else StreamType.UNARY,
        )
        if method.server_streaming:
            return Endpoint.server_stream(info, self._streaming(schema.name, method))
        return Endpoint.unary(info, self._unary(schema.name, method))

    def _unary(self, service: str, method: MethodSchema):
        invoke = self._runtime.invoke
        allow = self._allow
        name = method.name
        output_class = method.output_class
        limit = self._max_response

        async def call(request: bytes, ctx: RequestContext) -> Reply:
            task = self._track()
            try:
                response = await invoke(
                    service,
                    name,
                    request,
                    metadata=forwarded_metadata(ctx, allow),
                    timeout=_timeout(ctx),
                )
            except RpcError as error:
                raise ConnectError(TO_CONNECT[error.code], error.message) from None
            except asyncio.CancelledError:
                if self._aborted(task):
                    raise _shutting_down() from None
                raise
            except Exception:
                log.exception("%s/%s failed with an unexpected error", service, name)
                raise ConnectError(Code.INTERNAL, "internal error; see the server log") from None
            finally:
                self._calls.discard(task)
            if limit is not None and len(response) > limit:
                raise _too_large(response, limit)
            return Reply(response, output_class)

        return call

    def _streaming(self, service: str, method: MethodSchema):
        runtime = self._runtime
        allow = self._allow
        name = method.name
        output_class = method.output_class
        limit = self._max_response

        async def call(request: bytes, ctx: RequestContext) -> AsyncIterator[Reply]:
            stream = None
            task = self._track()
            try:
                stream = runtime.invoke_stream(
                    service,
                    name,
                    request,
                    metadata=forwarded_metadata(ctx, allow),
                    timeout=_timeout(ctx),
                )
                async for response in stream:
                    if limit is not None and len(response) > limit:
                        raise _too_large(response, limit)
                    yield Reply(response, output_class)
            except RpcError as error:
                raise ConnectError(TO_CONNECT[error.code], error.message) from None
            except ConnectError:
                raise
            except asyncio.CancelledError:
                if self._aborted(task):
                    raise _shutting_down() from None
                raise
            except Exception:
                log.exception("%s/%s failed with an unexpected error", service, name)
                raise ConnectError(Code.INTERNAL, "internal error; see the server log") from None
            finally:
                self._calls.discard(task)
                # The client may be gone: closing the runtime's stream cancels the call.
                close = getattr(stream, "aclose", None)
                if close is not None:
                    await close()

        return call


def forwarded_metadata(ctx: RequestContext, allow: Collection[str]) -> list[tuple[str, str]]:
    """The request headers a guest sees: `okra_core.metadata`'s rule, as for gRPC."""
    return filter_metadata(
        (item for item in ctx.request_headers.allitems() if item[0] not in GRPC_WEB_HEADERS),
        allow,
    )


_SHUTDOWN = "okra: the server is shutting down"


def _shutting_down() -> ConnectError:
    return ConnectError(Code.UNAVAILABLE, "the server is shutting down; retry elsewhere or later")


def _too_large(response: bytes, limit: int) -> ConnectError:
    return ConnectError(
        Code.RESOURCE_EXHAUSTED,
        f"the response message ({len(response)} bytes) is larger than the server's limit "
        f"({limit} bytes)",
    )


def _timeout(ctx: RequestContext) -> float | None:
    remaining = ctx.timeout_ms
    return None if remaining is None else max(remaining, 0.0) / 1000.0


def _idempotency(level: int) -> IdempotencyLevel:
    if level == _NO_SIDE_EFFECTS:
        return IdempotencyLevel.NO_SIDE_EFFECTS
    if level == _IDEMPOTENT:
        return IdempotencyLevel.IDEMPOTENT
    return IdempotencyLevel.UNKNOWN
