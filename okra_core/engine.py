"""The WebAssembly engine interface: engine -> compiled module -> instance.

Engines are plugins (`register_engines`). The runtime and the worker pool only see these
types, so an engine can be swapped without touching them. An engine knows how to compile
and run modules and how to speak the guest ABI's memory protocol (`docs/abi.md`); it
knows nothing of services, packages or transports.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

from okra_core.hostapi import HostContext, HostFunction

#: Receives what the guest writes to stdout (fd 1) or stderr (fd 2), in chunks as written.
StdioSink = Callable[[int, bytes], None]

#: An engine's `cache_dir` option left unset (see `cache_dir_option`).
CACHE_DIR_UNSET: Any = object()


def cache_home() -> pathlib.Path:
    """Where OKRA caches things by default: `$XDG_CACHE_HOME/okra`, else `~/.cache/okra`."""
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = pathlib.Path(xdg).expanduser() if xdg else pathlib.Path.home() / ".cache"
    return base / "okra"


def cache_dir_option(
    value: Any, default: Callable[[], pathlib.Path], without: str
) -> pathlib.Path | None:
    """An engine plugin's `cache_dir` option: CACHE_DIR_UNSET for `default()`; None,
    False or "" for no cache; else a directory path. Anything else is a ConfigError
    saying that null means `without` (e.g. "to disable the compiled-module cache")."""
    from okra_core.errors import ConfigError

    if value is CACHE_DIR_UNSET:
        return default()
    if value is False or value is None or value == "":
        return None
    if not isinstance(value, (str, os.PathLike)):
        raise ConfigError(
            f"engine option cache_dir={value!r} must be a directory path, or null {without}"
        )
    return pathlib.Path(value)


#: What `PackageError`s about a module's bytes start with, whichever engine finds them.
NOT_A_MODULE = "service.wasm is not a valid WebAssembly module"


def check_core_module(wasm: bytes) -> None:
    """Refuse bytes that are not a WebAssembly core module, saying what they are, before
    an engine's own less specific error. For engine plugins' `compile`."""
    from okra_core.errors import PackageError

    if not wasm.startswith(b"\0asm"):
        raise PackageError(
            f"{NOT_A_MODULE}: it does not start with the \\0asm magic bytes (is it a "
            "WebAssembly binary?)"
        )
    if wasm[4:8] == b"\x0d\x00\x01\x00":
        raise PackageError(
            "service.wasm is a WebAssembly component, but OKRA runs core modules: "
            "build a wasm32 core module (e.g. GOOS=wasip1 GOARCH=wasm)"
        )


class GuestTrap(Exception):
    """The guest trapped (unreachable, out-of-bounds access, stack overflow...).

    The instance is in an unknown state afterwards and must be discarded.
    """


class GuestTimeout(GuestTrap):
    """The call ran past its deadline and the engine stopped it (a hard deadline, not a
    caller giving up). Like any trap, the instance must be discarded."""


class GuestInterrupted(GuestTrap):
    """The host stopped the call (`Instance.interrupt`, e.g. at shutdown once the grace
    period is over). Like any trap, the instance must be discarded."""


class GuestFault(Exception):
    """The guest broke the ABI (a response outside memory, a missing buffer...).

    Like a trap, the instance must be discarded.
    """


@dataclasses.dataclass(frozen=True)
class ImportSpec:
    """One import of a module: `module.name`, its kind and, for functions, its type."""

    module: str
    name: str
    kind: str  # "func", "memory", "table", "global", "tag"
    params: tuple[str, ...] = ()
    results: tuple[str, ...] = ()

    @property
    def qualified_name(self) -> str:
        return f"{self.module}.{self.name}"


@dataclasses.dataclass(frozen=True)
class ExportSpec:
    name: str
    kind: str
    params: tuple[str, ...] = ()
    results: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class InstanceLimits:
    """What one instance may consume; None means the engine's default (no limit of
    OKRA's own).

    A dataclass rather than a bare number so that further limits (tables, fuel,
    instances) can join it without changing `CompiledModule.instantiate` again.
    """

    #: The most linear memory the instance may have, in bytes. A `memory.grow` past it
    #: fails inside the guest (returns -1; the host is unaffected); a module whose
    #: initial memory is larger cannot be instantiated.
    memory_bytes: int | None = None
    #: How long the module's start function and `_initialize` may run, in seconds: an
    #: engine with the `deadline` capability stops them then (GuestTimeout), so a guest
    #: that never finishes starting cannot hang a deploy.
    start_seconds: float | None = None

    def __post_init__(self) -> None:
        memory = self.memory_bytes
        if memory is not None and (type(memory) is not int or memory < 0):
            raise ValueError(f"memory_bytes must be a number of bytes >= 0, not {memory!r}")
        start = self.start_seconds
        if start is not None and (isinstance(start, bool) or not isinstance(start, (int, float)) or not start > 0):
            raise ValueError(f"start_seconds must be a number of seconds > 0, not {start!r}")


@dataclasses.dataclass(frozen=True)
class EngineCapabilities:
    """What an engine enforces and supports. The runtime refuses, at deploy, a service
    that requires a limit its engine cannot enforce (docs/engines.md); `okra plugins`
    shows these."""

    #: A call still running at its deadline is stopped (GuestTimeout).
    deadline: bool
    #: `Instance.interrupt` stops a call that is running, not only later ones.
    interrupt: bool
    #: `InstanceLimits.memory_bytes` is enforced.
    memory_limit: bool
    #: Instances run guest code in parallel threads (the GIL is released while wasm runs).
    parallel: bool
    #: Which WASI the engine gives guests, e.g. "preview1".
    wasi: str
    #: Whether it runs WebAssembly components (OKRA runs core modules either way).
    component_model: bool = False

    def to_json(self) -> dict[str, object]:
        return dataclasses.asdict(self)


@runtime_checkable
class Instance(Protocol):
    """One instantiated module. Not thread-safe: one call at a time."""

    def abi_version(self) -> int:
        """Call the guest's `okra_abi_version` export."""

    def handle(self, request: bytes, deadline: float | None = None) -> bytes:
        """Run one request envelope through `okra_handle`; return the response envelope.

        `deadline` is a `time.monotonic()` instant: a guest still running then is stopped
        (GuestTimeout). Raises GuestTrap or GuestFault; the caller must then discard the
        instance.
        """

    def interrupt(self) -> None:
        """Stop the call running in this instance as soon as possible; it fails with
        GuestInterrupted. Callable from any thread; idempotent.

        Sticky: the instance is done. A call that starts afterwards (e.g. one already
        handed the instance but still waiting for a thread) fails with GuestInterrupted
        without entering the guest, so an interrupt racing with the start of a call is
        never lost; discard the instance. A call that completes before the engine
        stops it returns normally. A guest inside a host function is stopped once that
        returns. (wasmtime: within ~50 ms of wasm execution; without epoch checks,
        `epoch_interruption=false`, a running call cannot be stopped, only later ones
        refused.)"""

    def close(self) -> None:
        """Release the instance's memory. Idempotent."""


@runtime_checkable
class CompiledModule(Protocol):
    """A compiled module, ready to instantiate many times."""

    @property
    def imports(self) -> Sequence[ImportSpec]: ...

    @property
    def exports(self) -> Sequence[ExportSpec]: ...

    def instantiate(
        self,
        host_functions: Sequence[HostFunction],
        stdio: StdioSink,
        context: HostContext,
        *,
        limits: InstanceLimits | None = None,
    ) -> Instance:
        """Link WASI (no preopens, no environment, no arguments; fd 1 and 2 go to
        `stdio`), then exactly `host_functions`, instantiate, run `_initialize` if
        exported and set up the ABI request buffer.

        `context` is the instance's HostContext, passed to every host function call;
        the engine sets its `memory` to the new instance's memory. `limits` bound the
        instance's resources (None: no limits beyond the engine's own).

        Raises GuestTrap if the initialiser traps, and a DeployError (or subclass) if
        the module cannot be linked or its initial memory is over `limits`.
        """


@runtime_checkable
class Engine(Protocol):
    """A WebAssembly engine."""

    name: str

    def compile(self, wasm: bytes) -> CompiledModule:
        """Compile (or load from the engine's on-disk cache) a module.

        Raises PackageError if the bytes are not a valid module.
        """

    def describe(self) -> dict[str, str]:
        """Version and settings, for `okra plugins` and cache keys."""

    def capabilities(self) -> EngineCapabilities:
        """What this engine, as configured, enforces and supports."""


#: What `register_engines` registers: a name and a factory taking the engine options.
EngineFactory = Callable[..., Engine]
