"""The ASGI application: CORS and routing in front of connectrpc's protocol handling.

connectrpc (`ConnectASGIApplication`) speaks the protocols: Connect unary and streaming,
GET requests, gRPC-Web, compression, deadlines, size limits, error bodies. This layer
adds what a server whose services come and go needs: a path is resolved against the
runtime first, and one that has no endpoint gets an error that names what is deployed,
in the form its client reads (a Connect error body, or gRPC-Web status headers).
"""

from __future__ import annotations

import json
import re
import urllib.parse
from collections.abc import Callable, Iterable
from typing import Any

from connectrpc.codec import Codec
from connectrpc.method import StreamType
from connectrpc.server import ConnectASGIApplication

from okra_core.status import StatusCode

from ._codecs import BinaryCodec, JsonCodec
from ._cors import CorsPolicy
from ._routes import Refusal, Routes
from ._status import TO_CONNECT

Scope = dict[str, Any]
Receive = Callable[[], Any]
Send = Callable[[dict[str, Any]], Any]


class _Connect(ConnectASGIApplication):
    """connectrpc's application over the dynamic routes."""

    path = "/"


METRICS_PATH = "/metrics"
PROMETHEUS_TEXT = b"text/plain; version=0.0.4; charset=utf-8"


class ConnectApp:
    """Serves every deployed service at ``/package.Service/Method``."""

    def __init__(
        self,
        routes: Routes,
        *,
        max_body_size: int,
        cors: CorsPolicy | None = None,
        codecs: Iterable[Codec] = (BinaryCodec(), JsonCodec()),
        metrics: Callable[[], str] | None = None,
    ):
        self.routes = routes
        self.cors = cors
        #: Renders the runtime's metrics (Prometheus text), served at GET /metrics.
        self.metrics = metrics
        self._connect = _Connect(
            service=None,
            endpoints=lambda _service: routes,
            read_max_bytes=max_body_size,
            codecs=list(codecs),
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind != "http":
            if kind == "lifespan":
                await _lifespan(receive, send)
            return  # websockets: the server refuses the handshake
        content_type = origin = preflight = None
        for name, value in scope["headers"]:
            if not value.isascii() and not _is_utf8(value):
                # connectrpc reads headers as UTF-8; say so instead of failing inside it.
                await _error(
                    send,
                    400,
                    StatusCode.INVALID_ARGUMENT,
                    f"request header {name.decode('latin-1')!r} is not valid UTF-8",
                )
                return
            if name == b"content-type":
                content_type = value
            elif name == b"origin":
                origin = value
            elif name == b"access-control-request-method":
                preflight = value
        if self.cors is not None and origin is not None:
            if preflight is not None and scope["method"] == "OPTIONS":
                await self._preflight(origin, send)
                return
            if self.cors.allows(origin):
                send = _adding_headers(send, self.cors.response_headers(origin))
        if scope["path"] == METRICS_PATH and self.metrics is not None and scope["method"] == "GET":
            body = self.metrics().encode()
            await _respond(send, 200, [(b"content-type", PROMETHEUS_TEXT)], body)
            return
        target = self.routes.resolve(scope["path"])
        if type(target) is Refusal:
            await _refuse(content_type or b"", send, target)
            return
        if target.method.stream_type is StreamType.SERVER_STREAM and (
            content_type is None or content_type.split(b";")[0].strip() in _UNARY_TYPES
        ):
            await _error(
                send,
                400,
                StatusCode.INVALID_ARGUMENT,
                f"{target.method.service_name}/{target.method.name} streams its responses: "
                "send an enveloped request as application/connect+json or "
                "application/connect+proto (or use gRPC-Web)",
            )
            return
        if (
            content_type is not None
            and content_type.startswith(b"application/grpc")
            and not content_type.startswith(b"application/grpc-web")
            and "http.response.trailers" not in scope.get("extensions", {})
        ):
            await _error(
                send,
                415,
                StatusCode.UNIMPLEMENTED,
                "gRPC needs HTTP/2 with trailers: call the gRPC port, or use the Connect "
                "or gRPC-Web protocol here",
            )
            return
        if scope["method"] == "GET":
            problem = _bad_get_message(scope.get("query_string", b""))
            if problem is not None:
                await _error(send, 400, StatusCode.INVALID_ARGUMENT, problem)
                return
        await self._connect(scope, receive, send)

    async def _preflight(self, origin: bytes, send: Send) -> None:
        assert self.cors is not None
        if not self.cors.allows(origin):
            await _respond(send, 403, [(b"content-type", b"text/plain")], b"origin not allowed\n")
            return
        await _respond(send, 204, self.cors.preflight_headers(origin), b"")


#: What a Connect GET's base64 `message` may hold: the URL-safe alphabet (the standard
#: one is accepted too, as connect-go does), with or without padding.
_BASE64 = re.compile(r"[A-Za-z0-9_\-+/]*={0,2}")


def _bad_get_message(query: bytes) -> str | None:
    """Why a Connect GET's base64 message is not base64, or None. (The protocol library
    decodes leniently: invalid characters would be dropped and the rest, often nothing,
    sent on as the request.)"""
    params = urllib.parse.parse_qs(query.decode("latin-1"), keep_blank_values=True)
    if params.get("base64", ["0"])[0] != "1":
        return None
    message = params.get("message", [""])[0]
    if _BASE64.fullmatch(message) is None or len(message.rstrip("=")) % 4 == 1:
        return "the GET message is not valid base64 (base64=1 asks for URL-safe base64, padding optional)"
    return None


_UNARY_TYPES = frozenset({b"application/json", b"application/proto", b""})


async def _refuse(content_type: bytes, send: Send, refusal: Refusal) -> None:
    if content_type.startswith(b"application/grpc"):
        # gRPC and gRPC-Web read the status from (trailers-only) headers.
        headers = [
            (b"content-type", content_type.split(b";")[0]),
            (b"grpc-status", str(int(refusal.code)).encode()),
            (b"grpc-message", urllib.parse.quote(refusal.message, safe="").encode()),
        ]
        await _respond(send, 200, headers, b"")
        return
    await _error(send, refusal.http_status, refusal.code, refusal.message)


async def _error(send: Send, status: int, code: StatusCode, message: str) -> None:
    """A Connect error: JSON `{"code", "message"}` with the given HTTP status."""
    body = json.dumps({"code": TO_CONNECT[code].value, "message": message}, ensure_ascii=False)
    await _respond(send, status, [(b"content-type", b"application/json")], body.encode("utf-8"))


async def _respond(send: Send, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


def _adding_headers(send: Send, extra: list[tuple[bytes, bytes]]) -> Send:
    async def wrapped(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", ()), *extra]}
        await send(message)

    return wrapped


def _is_utf8(value: bytes) -> bool:
    try:
        value.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
