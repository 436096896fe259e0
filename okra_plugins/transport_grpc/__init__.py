"""The gRPC transport plugin: serves deployed services over gRPC, with the standard
health and reflection services. `client.call_json` is the client behind `okra call`."""

from __future__ import annotations

from okra_core.hookspecs import hookimpl


@hookimpl
def register_transports(register):
    from ._transport import GrpcTransport

    register("grpc", GrpcTransport)
