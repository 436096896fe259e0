"""The Connect transport: connectrpc's protocols over the runtime, on uvicorn.

Every protocol served here works over HTTP/1.1: Connect (unary and streaming) and
gRPC-Web carry their status in the body. gRPC itself needs HTTP/2 trailers and has its
own transport.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from typing import Any

from okra_core.errors import ConfigError
from okra_core.metadata import normalize_allow
from okra_core.units import parse_size

from ._app import ConnectApp
from ._codecs import BinaryCodec, JsonCodec
from ._cors import CorsPolicy
from ._routes import Routes
from ._server import AsgiServer, join

log = logging.getLogger("okra.transport.connect")

#: The default request size limit, as gRPC's (and connect-go's read limit is similar).
DEFAULT_MAX_BODY_SIZE = 4 * 1024 * 1024


class ConnectTransport:
    """Serves every deployed service over Connect, gRPC-Web and JSON (HTTP/1.1).

    Options (`okra_core.plugins.Registry.transport("connect", **options)`):

    * ``max_body_size`` -- largest request or response message, in bytes (an int, or a
      string such as ``"4MiB"``, ``"512KiB"``); requests are checked before and after
      decompression. Larger ones fail with ``resource_exhausted``. Default 4 MiB.
    * ``allow_headers`` -- header names forwarded to guests even though they look like
      credentials (see `okra_core.metadata.is_forwarded`), e.g. ``["authorization"]``.
    * ``cors_origins`` -- origins browsers may call from (``"https://app.example.com"``,
      or ``"*"`` for any); none by default, which turns CORS off.
    * ``cors_headers`` -- request headers browsers may send besides the protocols' own
      (e.g. ``["x-request-id"]``); they must also pass the metadata rule to reach a guest.
    * ``cors_max_age`` -- seconds a browser may cache a preflight answer (default 7200).
    * ``json_discard_unknown`` -- ignore unknown fields in JSON requests, as other
      Connect servers do (default True); False rejects them with ``invalid_argument``.
    * ``server_options`` -- extra `uvicorn.Config` arguments, e.g.
      ``{"timeout_keep_alive": 5, "limit_concurrency": 1000}``.
    """

    name = "connect"

    def __init__(
        self,
        *,
        max_body_size: int | str = DEFAULT_MAX_BODY_SIZE,
        allow_headers: Iterable[str] | str = (),
        cors_origins: Iterable[str] | str = (),
        cors_headers: Iterable[str] | str = (),
        cors_max_age: int = 7200,
        json_discard_unknown: bool = True,
        server_options: Mapping[str, Any] | None = None,
    ):
        self.max_body_size = parse_size(max_body_size, "max_body_size")
        self.allow_headers = normalize_allow(_names(allow_headers))
        self.cors_origins = tuple(_origins(cors_origins))
        self.cors_headers = tuple(sorted(normalize_allow(_names(cors_headers))))
        if isinstance(cors_max_age, bool) or not isinstance(cors_max_age, int) or cors_max_age < 0:
            raise ConfigError(f"cors_max_age {cors_max_age!r} is not a number of seconds (0 or more)")
        self.cors_max_age = cors_max_age
        self.json_discard_unknown = bool(json_discard_unknown)
        self.server_options = dict(server_options or {})
        AsgiServer(_no_app, self.server_options)  # checks them now, before any deploy
        self.app: ConnectApp | None = None
        self._runtime: Any = None
        self._server: AsgiServer | None = None
        self._routes: Routes | None = None
        self._stopped = False

    async def start(self, runtime: Any, host: str, port: int) -> tuple[str, int]:
        if self._server is not None:
            raise RuntimeError("this Connect transport is already started; create another one")
        routes = Routes(
            runtime, allow_headers=self.allow_headers, max_response_size=self.max_body_size
        )
        cors = (
            CorsPolicy(self.cors_origins, headers=self.cors_headers, max_age=self.cors_max_age)
            if self.cors_origins
            else None
        )
        self.app = ConnectApp(
            routes,
            max_body_size=self.max_body_size,
            cors=cors,
            codecs=(BinaryCodec(), JsonCodec(discard_unknown=self.json_discard_unknown)),
            metrics=getattr(getattr(runtime, "metrics", None), "render", None),
        )
        server = AsgiServer(self.app, self.server_options)
        bound = await server.start(host, port)
        self._runtime, self._routes, self._server = runtime, routes, server
        runtime.subscribe(self._on_event)
        log.debug("HTTP listening on %s", join(host, bound))
        return host, bound

    async def stop(self, grace: float) -> None:
        if self._server is None or self._stopped:
            return
        self._stopped = True
        unsubscribe = getattr(self._runtime, "unsubscribe", None)
        if unsubscribe is not None:
            unsubscribe(self._on_event)
        await self._server.stop(grace, abort=self._routes.abort_calls if self._routes else None)

    def _on_event(self, event: str, service: str) -> None:
        if not self._stopped:
            self._routes.forget()


async def _no_app(scope, receive, send):  # pragma: no cover - never served
    raise RuntimeError("placeholder application")


def _names(value: Iterable[str] | str) -> list[str]:
    return value.split(",") if isinstance(value, str) else list(value)


def _origins(value: Iterable[str] | str) -> list[str]:
    origins = []
    for origin in _names(value):
        origin = origin.strip().rstrip("/")
        if not origin:
            continue
        if origin != "*" and not re.match(r"^[a-z][a-z0-9+.-]*://[^/\s]+$", origin, re.IGNORECASE):
            raise ConfigError(
                f"CORS origin {origin!r} is not an origin: write scheme://host[:port] "
                '(e.g. "https://app.example.com"), or "*" for any'
            )
        origins.append(origin.lower())
    return origins


