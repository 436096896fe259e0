"""CORS, so browser clients (connect-web, grpc-web) on other origins may call.

Off unless origins are configured. The allowed request headers are the ones Connect and
gRPC-Web clients send, plus those the operator names (e.g. ``x-request-id``); the
exposed response headers are the ones those clients read.
"""

from __future__ import annotations

from collections.abc import Iterable

#: Request headers Connect and gRPC-Web clients send (connectrpc/cors-go's list).
PROTOCOL_REQUEST_HEADERS = (
    "content-type",
    "connect-protocol-version",
    "connect-timeout-ms",
    "connect-accept-encoding",
    "connect-content-encoding",
    "grpc-timeout",
    "grpc-accept-encoding",
    "grpc-encoding",
    "x-grpc-web",
    "x-user-agent",
)

#: Response headers those clients read.
PROTOCOL_RESPONSE_HEADERS = (
    "grpc-status",
    "grpc-message",
    "grpc-status-details-bin",
    "grpc-encoding",
    "connect-content-encoding",
    "content-encoding",
)


class CorsPolicy:
    """Which origins may call, and the headers to answer them with."""

    def __init__(self, origins: Iterable[str], *, headers: Iterable[str] = (), max_age: int = 7200):
        self.origins = frozenset(origin.lower() for origin in origins)
        self.any_origin = "*" in self.origins
        request_headers = [*PROTOCOL_REQUEST_HEADERS]
        request_headers += [h for h in headers if h not in request_headers]
        self._preflight = [
            (b"access-control-allow-methods", b"GET, POST"),
            (b"access-control-allow-headers", ", ".join(request_headers).encode("latin-1")),
            (b"access-control-max-age", str(int(max_age)).encode()),
        ]
        self._expose = (
            b"access-control-expose-headers",
            ", ".join(PROTOCOL_RESPONSE_HEADERS).encode("latin-1"),
        )

    def allows(self, origin: bytes) -> bool:
        return self.any_origin or origin.decode("latin-1").lower() in self.origins

    def preflight_headers(self, origin: bytes) -> list[tuple[bytes, bytes]]:
        return [
            (b"access-control-allow-origin", origin),
            (b"vary", b"Origin"),
            *self._preflight,
        ]

    def response_headers(self, origin: bytes) -> list[tuple[bytes, bytes]]:
        return [(b"access-control-allow-origin", origin), (b"vary", b"Origin"), self._expose]
