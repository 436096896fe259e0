"""The gRPC transport: a grpc.aio server on the runtime's event loop."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

import grpc

from okra_core.errors import ConfigError
from okra_core.metadata import normalize_allow
from okra_core.units import parse_size as _parse_size

from ._health import Health
from ._reflection import DynamicReflection, FileSet
from ._router import DynamicRouter

log = logging.getLogger("okra.transport.grpc")

#: gRPC's own default receive limit; responses get the same limit here.
DEFAULT_MAX_MESSAGE_SIZE = 4 * 1024 * 1024


class GrpcTransport:
    """Serves every deployed service over gRPC (HTTP/2, plaintext).

    Options (`okra_core.plugins.Registry.transport("grpc", **options)`):

    * ``max_message_size`` -- largest request or response message, in bytes (an int, or
      a string such as ``"4MiB"``, ``"512KiB"``); larger ones fail with
      RESOURCE_EXHAUSTED. Default 4 MiB.
    * ``allow_headers`` -- header names forwarded to guests even though they look like
      credentials (see `okra_core.metadata.is_forwarded`), e.g. ``["authorization"]``.
    * ``reflection`` -- serve grpc.reflection v1 and v1alpha (default True).
    * ``health`` -- serve grpc.health.v1 (default True).
    * ``server_options`` -- extra grpc channel arguments, ``[(name, value), ...]``.
    """

    name = "grpc"

    def __init__(
        self,
        *,
        max_message_size: int | str = DEFAULT_MAX_MESSAGE_SIZE,
        allow_headers: Iterable[str] | str = (),
        reflection: bool = True,
        health: bool = True,
        server_options: Sequence[tuple[str, Any]] = (),
    ):
        self.max_message_size = parse_size(max_message_size)
        if isinstance(allow_headers, str):
            allow_headers = allow_headers.split(",")
        self.allow_headers = normalize_allow(allow_headers)
        self.reflection = bool(reflection)
        self.health = bool(health)
        self.server_options = tuple(server_options)
        self._server: grpc.aio.Server | None = None
        self._runtime: Any = None
        self._router: DynamicRouter | None = None
        self._health: Health | None = None
        self._filesets: dict[bytes, FileSet] = {}
        self._stopped = False

    async def start(self, runtime: Any, host: str, port: int) -> tuple[str, int]:
        if self._server is not None:
            raise RuntimeError("this gRPC transport is already started; create another one")
        self._runtime = runtime
        self._router = DynamicRouter(
            runtime, allow_headers=self.allow_headers, max_response_size=self.max_message_size
        )
        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", self.max_message_size),
                # Responses are limited per service call by the router, which can say
                # why; a channel-wide limit would also cut reflection's answers (a schema
                # larger than the limit) and log each refusal as a crash.
                ("grpc.max_send_message_length", -1),
                # Without this a second server on the same port silently shares it.
                ("grpc.so_reuseport", 0),
                *self.server_options,
            ]
        )
        if self.health:
            self._health = Health()
            self._health.add_to(server)
        if self.reflection:
            reflection = DynamicReflection(runtime.services, self._deployed_filesets)
            server.add_generic_rpc_handlers(reflection.handlers())
        # Last: it answers every path the fixed services above do not.
        server.add_generic_rpc_handlers((self._router,))

        address = _join(host, port)
        try:
            bound = server.add_insecure_port(address)
        except RuntimeError:
            bound = 0
        if not bound:
            raise ConfigError(
                f"cannot listen for gRPC on {address}: the address is in use or not local; "
                "pick another host or port (port 0 picks a free one)"
            )
        runtime.subscribe(self._on_event)
        if self._health is not None:
            await self._health.start(runtime.services())
        await server.start()
        self._server = server
        log.debug("gRPC listening on %s", _join(host, bound))
        return host, bound

    async def stop(self, grace: float) -> None:
        if self._server is None or self._stopped:
            return
        self._stopped = True
        unsubscribe = getattr(self._runtime, "unsubscribe", None)
        if unsubscribe is not None:
            unsubscribe(self._on_event)
        if self._health is not None:
            await self._health.shut_down()
        await self._server.stop(grace)

    def _on_event(self, event: str, service: str) -> None:
        if self._stopped:
            return
        self._router.forget()
        if self._health is not None:
            self._health.on_event(event, service)

    def _deployed_filesets(self) -> list[FileSet]:
        """One file set per deployed package (services of one package share theirs).
        File sets are kept while their package stays deployed, so a reflection stream's
        preference for a package survives other packages' deploys."""
        current: dict[bytes, FileSet] = {}
        for service in self._runtime.services():
            schema = self._runtime.schema(service)
            if schema is None or schema.descriptor_set in current:
                continue
            fileset = self._filesets.get(schema.descriptor_set)
            if fileset is None:
                fileset = FileSet.from_descriptor_set(schema.descriptor_set, schema.pool)
            current[schema.descriptor_set] = fileset
        self._filesets = current
        return list(current.values())


def parse_size(value: int | str) -> int:
    """Bytes from an int or a string like "4MiB"; a clear ConfigError otherwise."""
    return _parse_size(value, "max_message_size")


def _join(host: str, port: int) -> str:
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{host}:{port}"
