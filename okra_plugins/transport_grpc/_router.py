"""Routes each gRPC call to the service the runtime has deployed at that moment.

One `grpc.GenericRpcHandler` serves every OKRA service: grpc asks it for a handler on
each call, it looks the method up in the runtime, so deploying, undeploying or
redeploying never restarts the server. Requests and responses stay raw bytes (no
(de)serializers): the runtime and the guest own the protobuf parsing.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Collection
from typing import Any

import grpc

from okra_core.metadata import filter_metadata
from okra_core.status import RpcError, StatusCode

from ._status import TO_GRPC

log = logging.getLogger("okra.transport.grpc")


class DynamicRouter(grpc.GenericRpcHandler):
    """Looks `/package.Service/Method` up in the runtime on every call.

    Handlers of deployed unary and server-streaming methods are cached by path; the cache
    is dropped whenever the runtime reports a deploy or undeploy (`forget`). Unknown paths
    are not cached, so a client cannot grow the cache.
    """

    def __init__(
        self,
        runtime: Any,
        *,
        allow_headers: Collection[str] = (),
        max_response_size: int | None = None,
    ):
        self._runtime = runtime
        self._allow = frozenset(allow_headers)
        self._max_response = max_response_size
        self._cache: dict[str, grpc.RpcMethodHandler] = {}

    def forget(self) -> None:
        self._cache.clear()

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        path = handler_call_details.method
        handler = self._cache.get(path)
        if handler is None:
            handler = self._resolve(path)
        return handler

    def _resolve(self, path: str) -> grpc.RpcMethodHandler:
        service_name, _, method_name = path.lstrip("/").partition("/")
        schema = self._runtime.schema(service_name) if service_name else None
        if schema is None:
            deployed = ", ".join(sorted(self._runtime.services())) or "none"
            return _refuse(StatusCode.UNIMPLEMENTED, f"unknown service {service_name!r} (deployed: {deployed})")
        method = schema.methods.get(method_name)
        if method is None:
            known = ", ".join(sorted(schema.methods)) or "none"
            return _refuse(
                StatusCode.UNIMPLEMENTED,
                f"service {service_name} has no method {method_name!r} (methods: {known})",
            )
        if method.client_streaming:
            return _refuse(
                StatusCode.UNIMPLEMENTED,
                f"{service_name}/{method_name} streams requests: only unary and "
                "server-streaming methods are served",
            )
        if method.server_streaming:
            if not hasattr(self._runtime, "invoke_stream"):
                return _refuse(
                    StatusCode.UNIMPLEMENTED,
                    f"{service_name}/{method_name} is a streaming method: this runtime has no "
                    "streaming calls",
                )
            handler = grpc.unary_stream_rpc_method_handler(self._streaming(service_name, method_name))
        else:
            handler = grpc.unary_unary_rpc_method_handler(self._unary(service_name, method_name))
        self._cache[path] = handler
        return handler

    def _unary(self, service: str, method: str):
        invoke = self._runtime.invoke
        allow = self._allow
        limit = self._max_response

        async def call(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            try:
                response = await invoke(
                    service,
                    method,
                    request,
                    metadata=filter_metadata(context.invocation_metadata() or (), allow),
                    timeout=context.time_remaining(),
                )
                if limit is not None and len(response) > limit:
                    raise _too_large(service, method, len(response), limit)
                return response
            except RpcError as error:
                await context.abort(TO_GRPC[error.code], error.message)
            except Exception:
                log.exception("%s/%s failed with an unexpected error", service, method)
                await context.abort(grpc.StatusCode.INTERNAL, "internal error; see the server log")

        return call

    def _streaming(self, service: str, method: str):
        runtime = self._runtime
        allow = self._allow
        limit = self._max_response

        async def call(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
            stream = None
            try:
                stream = runtime.invoke_stream(
                    service,
                    method,
                    request,
                    metadata=filter_metadata(context.invocation_metadata() or (), allow),
                    timeout=context.time_remaining(),
                )
                async for response in stream:
                    if limit is not None and len(response) > limit:
                        raise _too_large(service, method, len(response), limit)
                    yield response
            except RpcError as error:
                await context.abort(TO_GRPC[error.code], error.message)
            except Exception:
                log.exception("%s/%s failed with an unexpected error", service, method)
                await context.abort(grpc.StatusCode.INTERNAL, "internal error; see the server log")
            finally:
                # A client that hangs up cancels this generator: closing the runtime's
                # stream cancels the guest's call too (its next send fails).
                close = getattr(stream, "aclose", None)
                if close is not None:
                    await close()

        return call


def _too_large(service: str, method: str, size: int, limit: int) -> RpcError:
    return RpcError(
        StatusCode.RESOURCE_EXHAUSTED,
        f"{service}/{method} produced a {size}-byte response, over this server's "
        f"max_message_size of {limit} bytes",
    )


def _refuse(code: StatusCode, message: str) -> grpc.RpcMethodHandler:
    """A handler that fails the call at once, whatever the client streams: the request is
    never read, so a streaming client does not hang waiting for the server to read."""
    grpc_code = TO_GRPC[code]

    async def refuse(requests, context: grpc.aio.ServicerContext) -> None:
        await context.abort(grpc_code, message)

    return grpc.stream_stream_rpc_method_handler(refuse)
