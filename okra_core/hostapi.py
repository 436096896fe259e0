"""Host APIs: the only way a guest touches the world.

A host API is a namespace of functions (`okra.log.write`, `okra.log.enabled`...). Plugins
register host APIs (`register_host_apis`); a package's manifest requests them; operator
policy narrows them; only the granted functions are linked into an instance. The calling
convention is in `docs/abi.md` ("Host function convention").

Host functions are engine-neutral: they receive a `HostContext` (the calling instance's
memory, its service, its pending result) and plain integers, and return an `int`.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from okra_core.status import StatusCode

if TYPE_CHECKING:
    from okra_core.audit import Audit
    from okra_core.clock import Clock
    from okra_core.metrics import Metrics
    from okra_core.secrets import SecretsProvider
    from okra_core.state import StateStore


class HostError(Exception):
    """Raised by a host function to fail with a status code (returned as `-code`).

    The message becomes the instance's pending result, so the guest can read it.
    """

    def __init__(self, code: StatusCode, message: str):
        super().__init__(message)
        self.code = StatusCode(code)
        self.message = message


@runtime_checkable
class GuestMemory(Protocol):
    """Access to the calling instance's linear memory, bounds-checked."""

    def read(self, ptr: int, length: int) -> bytes:
        """Raise HostError(INVALID_ARGUMENT) if the range is outside memory."""

    def write(self, ptr: int, data: bytes) -> None:
        """Raise HostError(INVALID_ARGUMENT) if the range is outside memory."""


class HostContext:
    """What a host function knows about its caller. One per instance.

    The engine sets `memory` when it creates the instance.
    """

    __slots__ = (
        "service", "logger", "memory", "pending", "config", "chain", "key", "metadata",
        "deadline",
    )

    def __init__(self, service: str, logger: logging.Logger):
        self.service = service
        self.logger = logger
        self.memory: GuestMemory | None = None
        #: The pending result of the last data-returning call (see `okra.abi.take`).
        self.pending: bytes | None = None
        #: Per-API configuration from the manifest, keyed by namespace.
        self.config: dict[str, Mapping[str, Any]] = {}
        #: The call chain (`okra_core.callchain.CallChain`) of the call the instance is
        #: running, for host functions that call other services; None between calls.
        self.chain: Any = None
        #: The key of the call the instance is running: the actor key of a keyed service,
        #: "" for a singleton, None for a regular service.
        self.key: str | None = None
        #: The request metadata of the call the instance is running.
        self.metadata: Sequence[tuple[str, str]] = ()
        #: When the running call must end, in `time.monotonic()` seconds (None: between
        #: calls). Host functions that wait bound their wait by it.
        self.deadline: float | None = None

    def remaining(self) -> float | None:
        """Seconds left before the running call's deadline (None if it has none)."""
        if self.deadline is None:
            return None
        return self.deadline - time.monotonic()

    def return_data(self, data: bytes, out_ptr: int, out_cap: int) -> int:
        """Deliver a variable-size result by the ABI convention: write it if it fits,
        otherwise keep it pending. Returns its length either way."""
        if len(data) <= out_cap:
            assert self.memory is not None
            self.memory.write(out_ptr, data)
            self.pending = None
        else:
            self.pending = data
        return len(data)


@dataclasses.dataclass(frozen=True)
class HostFunction:
    """One function the host links into an instance.

    `impl(ctx, *args)` receives the calling instance's HostContext and the wasm arguments
    as Python ints and returns an int (the i32 result). It may raise HostError. Any other
    exception is a bug in the host API: the engine logs it and returns `-INTERNAL`.

    `blocking` says whether the function may wait (on I/O, a lock, another service). A
    guest linked only to non-blocking functions may have its calls run inline on the
    event loop; so the default is the safe one.
    """

    namespace: str
    name: str
    params: tuple[str, ...]
    impl: Callable[..., int]
    results: tuple[str, ...] = ("i32",)
    blocking: bool = True

    @property
    def qualified_name(self) -> str:
        return f"{self.namespace}.{self.name}"


class HostEnvironment:
    """What the runtime lends every host API: its clock, metrics, audit log, state store,
    secrets provider, and a way to call other services. One per runtime.

    `state` and `secrets` are opened on first use, so a runtime whose services never ask
    for state opens no database. `invoke` is called from a guest's worker thread and
    blocks it (never the event loop) until the callee answers.
    """

    def __init__(
        self,
        *,
        clock: Clock,
        metrics: Metrics,
        audit: Audit,
        state: Callable[[], StateStore],
        secrets: Callable[[], SecretsProvider],
        invoke: Callable[..., bytes],
    ):
        self.clock = clock
        self.metrics = metrics
        self.audit = audit
        self._state = state
        self._secrets = secrets
        #: `invoke(ctx, service, method, payload, metadata, timeout) -> bytes`: call a
        #: unary method of another service on behalf of the caller `ctx` (its chain is
        #: carried). Raises `okra_core.status.RpcError`.
        self.invoke = invoke

    def state(self) -> StateStore:
        return self._state()

    def secrets(self) -> SecretsProvider:
        return self._secrets()


@runtime_checkable
class HostAPI(Protocol):
    """A namespace of host functions, registered by a plugin."""

    #: The import module name, e.g. "okra.log". Must start with "okra.".
    namespace: str
    #: One line for `okra plugins` and error messages.
    description: str

    def function_names(self) -> Sequence[str]:
        """Every function this API offers."""

    def functions(self, config: Mapping[str, Any], env: HostEnvironment) -> Sequence[HostFunction]:
        """Build the functions for one package, given its settings for this API (the
        manifest's, narrowed by operator policy) and the runtime's environment.

        Raise ConfigError for invalid settings; it fails the deploy.
        """

    # Optional:
    # internal_settings: Sequence[str]
    #     """Settings keys `narrow` writes for the API's own use (the rule that set a
    #     limit, a rule's allow-list). They are the operator's: the runtime refuses a
    #     manifest that sets one, so a package cannot pass its settings off as policy."""
    #
    # def release_service(self, service: str, env: HostEnvironment) -> None:
    #     """`service` was undeployed (not redeployed): drop what the API keeps for it."""
    #
    # def narrow(self, requested: Mapping[str, Any], policy: Mapping[str, Any]) -> Mapping[str, Any]:
    #     """The settings a package gets when an operator policy rule gives `policy` for
    #     this API: `requested` (the manifest's) made no wider than `policy`. Raise
    #     ConfigError when the package needs something the policy takes away; the deploy
    #     fails naming the rule. An API without `narrow` accepts no policy settings."""


def check_settings(
    settings: Mapping[str, Any], known: Sequence[str], what: str, *, internal: Sequence[str] = ()
) -> None:
    """Refuse unknown settings, so a typo fails the deploy instead of granting nothing.
    `internal` keys are accepted but not listed (ones an API's `narrow` adds; list them
    in the API's `internal_settings` too, so the runtime refuses them from a manifest)."""
    unknown = set(settings) - set(known) - set(internal)
    if unknown:
        from okra_core.errors import ConfigError

        raise ConfigError(
            f"unknown {what}: {', '.join(sorted(map(str, unknown)))} "
            f"(known: {', '.join(known) or 'none'})"
        )


def call_host_function(fn: HostFunction, ctx: HostContext, args: Sequence[int]) -> int:
    """Run a host function by the ABI convention; every engine calls through here.

    HostError becomes `-code` with the message pending; any other exception is a host
    bug: logged, and `-INTERNAL` for the guest.
    """
    try:
        return fn.impl(ctx, *args)
    except HostError as exc:
        ctx.pending = exc.message.encode()
        return -exc.code
    except Exception:
        ctx.logger.exception("host function %s failed", fn.qualified_name)
        ctx.pending = f"internal error in host function {fn.qualified_name}".encode()
        return -StatusCode.INTERNAL
