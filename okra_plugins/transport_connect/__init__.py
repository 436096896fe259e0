"""The Connect transport plugin: serves deployed services over HTTP/1.1 to Connect
clients (binary and JSON), gRPC-Web clients and plain `curl`, with no generated code."""

from __future__ import annotations

from okra_core.hookspecs import hookimpl


@hookimpl
def register_transports(register):
    from ._transport import ConnectTransport

    register("connect", ConnectTransport)
