"""The standard health service (grpc.health.v1) following the runtime's deploys.

The overall status ("") is SERVING while the server runs; each deployed service is
SERVING, and turns NOT_SERVING when it is undeployed (it stays known, so `Watch`
streams see the change and a redeploy turns it back to SERVING). On stop everything turns
NOT_SERVING before the server stops taking calls, so load balancers drain first.
"""

from __future__ import annotations

import asyncio

import grpc

from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer

SERVICE_NAME = "grpc.health.v1.Health"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class _Servicer(HealthServicer):
    """The standard servicer, whose NOT_FOUND says what was not found."""

    async def Check(self, request: health_pb2.HealthCheckRequest, context):
        if request.service not in self._server_status:
            await context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"no service {request.service!r} is known to this server's health service",
            )
        return await super().Check(request, context)


class Health:
    """Created on the running loop, like the server it belongs to."""

    def __init__(self) -> None:
        self.servicer = _Servicer()
        self._pending: set[asyncio.Task] = set()
        self._loop = asyncio.get_running_loop()

    def add_to(self, server) -> None:
        health_pb2_grpc.add_HealthServicer_to_server(self.servicer, server)

    async def start(self, services: list[str]) -> None:
        for service in services:
            await self.servicer.set(service, SERVING)

    def on_event(self, event: str, service: str) -> None:
        """A runtime listener: called on the loop thread, so it only schedules the
        update. Updates are applied in the order of the events (tasks start in creation
        order and the servicer's locks are fair)."""
        status = SERVING if event == "deployed" else NOT_SERVING
        task = self._loop.create_task(self.servicer.set(service, status))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def settle(self) -> None:
        """Wait until every scheduled update is applied."""
        while self._pending:
            await asyncio.gather(*list(self._pending), return_exceptions=True)

    async def shut_down(self) -> None:
        await self.settle()
        await self.servicer.enter_graceful_shutdown()
