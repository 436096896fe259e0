"""An ASGI application served by uvicorn on the running event loop.

uvicorn normally owns its process (its own loop, signal handlers, logging config). A
transport shares the runtime's loop and process instead, so this drives uvicorn's
`Server` by its parts: a socket bound here (port 0 works, and a port in use is a clear
error rather than uvicorn's `sys.exit`), `startup`, the once-a-second tick that keeps
the Date header current, and a shutdown that drains connections within a grace period.
uvicorn with httptools served HTTP/1.1 fastest of the ASGI servers measured
(`benchmarks/connect_echo.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable, Mapping
from typing import Any

import uvicorn
from uvicorn.importer import ImportFromStringError

from okra_core.errors import ConfigError


#: How long requests ended by `abort` have to send their error before they are cancelled.
ABORT_WAIT = 1.0


class AsgiServer:
    """One uvicorn server for one application, started and stopped on the caller's loop."""

    def __init__(self, app: Any, options: Mapping[str, Any] | None = None):
        settings = {
            "http": _http_implementation(),
            "ws": "none",
            "lifespan": "off",
            "log_config": None,  # leave the process's logging alone
            "access_log": False,
            "server_header": False,
            "proxy_headers": False,
            **(options or {}),
        }
        try:
            self.config = uvicorn.Config(app, **settings)
            self.config.load()
        except (TypeError, ValueError, ImportError, ImportFromStringError) as exc:
            raise ConfigError(f"bad server_options: {exc}") from None
        self._server: uvicorn.Server | None = None
        self._socket: socket.socket | None = None
        self._ticker: asyncio.Task | None = None

    async def start(self, host: str, port: int) -> int:
        """Listen on host:port (0 picks a free port); returns the bound port."""
        sock = listen(host, port)
        server = uvicorn.Server(self.config)
        server.lifespan = self.config.lifespan_class(self.config)
        try:
            await server.startup(sockets=[sock])
        except BaseException:
            sock.close()
            raise
        self._server, self._socket = server, sock
        self._ticker = asyncio.get_running_loop().create_task(server.main_loop())
        return sock.getsockname()[1]

    async def stop(self, grace: float, abort: Callable[[], int] | None = None) -> None:
        """As uvicorn's own shutdown, polled more finely: close the listener, close idle
        keep-alive connections at once and the others after their response, give
        in-flight requests `grace` seconds, then cancel what still runs.

        `abort`, if given, is called when the grace period is over, to end the requests
        still running with a proper error response; they get a moment to send it
        before they are cancelled."""
        server, self._server = self._server, None
        if server is None:
            return
        server.should_exit = True
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
        loop = asyncio.get_running_loop()
        state = server.server_state
        for listener in server.servers:
            listener.close()
        for connection in list(state.connections):
            connection.shutdown()
        deadline = loop.time() + max(grace, 0)
        while (state.connections or state.tasks) and loop.time() < deadline:
            await asyncio.sleep(0.01)
        if abort is not None and state.tasks and abort():
            deadline = loop.time() + ABORT_WAIT
            while state.tasks and loop.time() < deadline:
                await asyncio.sleep(0.01)
        for task in list(state.tasks):
            task.cancel()
        for connection in list(state.connections):
            connection.transport.close()
        for listener in server.servers:
            await listener.wait_closed()
        if self._socket is not None:
            self._socket.close()


def listen(host: str, port: int) -> socket.socket:
    """A listening socket on host:port (port 0 picks a free one), or a ConfigError."""
    address = join(host, port)
    try:
        family, kind, proto, _, sockaddr = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, kind, proto)
    except (OSError, UnicodeError) as exc:
        raise ConfigError(f"cannot listen for HTTP on {address}: {exc}") from None
    try:
        # Lets a restarted server reuse a port whose old connections linger in
        # TIME_WAIT; two servers still cannot listen on one port.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(sockaddr)
        sock.listen(2048)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise ConfigError(
            f"cannot listen for HTTP on {address}: {exc.strerror or exc}; pick another host "
            "or port (port 0 picks a free one)"
        ) from None
    return sock


def join(host: str, port: int) -> str:
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{host}:{port}"


def _http_implementation() -> str:
    try:
        import httptools  # noqa: F401
    except ImportError:  # pragma: no cover - a dependency; h11 is the pure-Python fallback
        return "h11"
    return "httptools"
