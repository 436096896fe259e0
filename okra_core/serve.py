"""Serving: a runtime, its packages and its transports, until told to stop.

Used by `okra serve` and `okra dev`, and by anyone embedding OKRA who wants the same
behaviour: deploy everything first (a package that fails to deploy stops the start, with
its error), then open the transports, then report where each listens.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import signal
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from okra_core.config import RuntimeConfig
from okra_core.errors import ConfigError, DeployError, OkraError
from okra_core.package import Package
from okra_core.plugins import Registry, get_registry
from okra_core.runtime import Runtime
from okra_core.transport import Transport

log = logging.getLogger("okra.serve")


@dataclasses.dataclass(frozen=True)
class Listener:
    """A transport to open: its plugin name, where, and the transport's own options."""

    transport: str
    host: str = "127.0.0.1"
    port: int = 0
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)


class Server:
    """A runtime with transports. `async with Server(...) as server:` serves until exit."""

    def __init__(
        self,
        packages: Sequence[Package],
        listeners: Sequence[Listener],
        *,
        config: RuntimeConfig | None = None,
        registry: Registry | None = None,
        grace: float = 10.0,
    ):
        if not grace >= 0:
            raise ConfigError(f"grace must be 0 seconds or more, not {grace}")
        self.registry = registry or get_registry()
        self.runtime = Runtime(config, self.registry)
        self.packages = list(packages)
        self.listeners = list(listeners)
        self.grace = grace
        self.transports: list[Transport] = []
        #: (transport name, host, port) actually bound, in the order of `listeners`.
        self.addresses: list[tuple[str, str, int]] = []

    async def start(self) -> None:
        # Transports are created first, so bad transport options fail before any deploy.
        transports = [
            self.registry.transport(listener.transport, **listener.options)
            for listener in self.listeners
        ]
        _check_distinct_names(self.packages)
        _check_config_targets(self.packages, self.runtime.config.config_overrides)
        await self.runtime.start()
        try:
            for package in self.packages:
                try:
                    await self.runtime.deploy(package)
                except OkraError as exc:
                    raise type(exc)(f"{_where(package)}: {exc}") from exc
            for listener, transport in zip(self.listeners, transports):
                host, port = await transport.start(self.runtime, listener.host, listener.port)
                self.transports.append(transport)
                self.addresses.append((listener.transport, host, port))
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        """Stop accepting calls, drain in-flight ones (up to `grace`), release all."""
        transports, self.transports = self.transports, []
        # One grace period for all: the runtime drains its calls and, at the end of the
        # grace period, stops what still runs and answers it UNAVAILABLE ("shutting
        # down"); the transports wait a little longer, so that answer reaches the
        # client before they cancel what is left.
        *_, closed = await asyncio.gather(
            *(t.stop(self.grace + _TRANSPORT_MARGIN) for t in transports),
            self.runtime.close(self.grace),
            return_exceptions=True,
        )
        if isinstance(closed, BaseException):
            raise closed

    async def __aenter__(self) -> Server:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


#: How much longer than the runtime the transports wait for calls at shutdown.
_TRANSPORT_MARGIN = 0.5


def _check_config_targets(packages, overrides) -> None:
    """okra.config values set for a package name none of the packages has: a typo that
    would otherwise leave the value unset without a word."""
    names = sorted({package.manifest.name for package in packages})
    for name in overrides:
        if name and name not in names:
            raise ConfigError(
                f"--config sets values for package {name!r}, which is not among the "
                f"packages served ({', '.join(names) or 'none'})"
            )


def _check_distinct_names(packages: Sequence[Package]) -> None:
    """Deploying a package replaces the deployed one of the same name, which is what a
    redeploy wants and never what a list of packages to serve means."""
    seen: dict[str, Package] = {}
    for package in packages:
        name = package.manifest.name
        earlier = seen.setdefault(name, package)
        if earlier is not package:
            if earlier.path is not None and earlier.path == package.path:
                raise DeployError(f"{_where(package)} is given twice: serve it once")
            raise DeployError(
                f"{_where(earlier)} and {_where(package)} are both the package {name!r} "
                f"(versions {earlier.manifest.version} and {package.manifest.version}): "
                "serve one of them"
            )


def _where(package: Package) -> str:
    return str(package.path) if package.path else f"package {package.manifest.name!r}"


async def serve_until_signalled(
    server: Server,
    on_ready: Callable[[Server], Awaitable[None] | None] | None = None,
    *,
    background: Sequence[Callable[[Server], Awaitable[None]]] = (),
) -> None:
    """Start `server`, call `on_ready`, serve until SIGINT or SIGTERM, stop gracefully.

    Each of `background` (such as `okra_core.dev.reload_on_change`) runs as a task while
    the server serves, and is cancelled before the server stops."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    forced = False

    def on_signal() -> None:
        # The first signal drains (up to the grace period); a second one stops now.
        nonlocal forced
        if not stop.is_set():
            stop.set()
        elif not forced:
            forced = True
            log.warning("second signal: stopping now, without waiting for running calls")
            main.cancel()

    main = asyncio.current_task()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, on_signal)
    try:
        async with server:
            if on_ready is not None:
                result = on_ready(server)
                if asyncio.iscoroutine(result):
                    await result
            tasks = [loop.create_task(job(server)) for job in background]
            try:
                await stop.wait()
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
            log.info(
                "shutting down: draining in-flight calls (up to %.0fs; a second signal "
                "stops now)", server.grace,
            )
    except asyncio.CancelledError:
        if not forced:
            raise
