"""Transports expose deployed services to clients (gRPC, Connect...).

A transport is a plugin (`register_transports`). It serves whatever the runtime has
deployed at the moment of each call, so deploys and undeploys never restart it. It calls
`Runtime.invoke` with raw protobuf bytes and maps `RpcError` codes onto its protocol.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from okra_core.runtime import Runtime


@runtime_checkable
class Transport(Protocol):
    #: Short name, e.g. "grpc".
    name: str

    async def start(self, runtime: Runtime, host: str, port: int) -> tuple[str, int]:
        """Start serving on `host:port` (port 0 picks a free one), on the running event
        loop. Returns the address actually bound."""

    async def stop(self, grace: float) -> None:
        """Stop accepting calls, let in-flight calls finish for up to `grace` seconds."""


#: What `register_transports` registers: a factory taking the transport's options.
TransportFactory = type[Transport] | Any
