"""Operator settings for a runtime: which engine, what guests may be granted, limits."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from okra_core.errors import ConfigError
from okra_core.policy import Policy


@dataclasses.dataclass(frozen=True)
class RuntimeConfig:
    #: The default engine (plugin name) and its options (e.g. {"cache_dir": "/var/cache/okra"}).
    engine: str = "wasmtime"
    engine_options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    #: The engines services may run on (None: every installed one). A package's manifest
    #: may prefer one of them ("engine"); otherwise it runs on `engine` (docs/engines.md).
    engines: frozenset[str] | None = None
    #: Options of engines other than the default, by engine name.
    engines_options: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)
    #: Run every package on `engine`, whatever its manifest prefers (okra serve --engine).
    force_engine: bool = False
    #: Deploy, with a warning, a package whose manifest or policy sets a limit its engine
    #: cannot enforce (e.g. a call time limit on wasm3) instead of refusing it.
    allow_unenforced_limits: bool = False
    #: The host APIs guests may be granted at all; None allows every installed one.
    allowed_host_apis: frozenset[str] | None = None
    #: Operator policy rules (deny, narrow, cap per service, package or tag;
    #: docs/policy.md), e.g. `Policy.load("policy.toml")`.
    policy: Policy | None = None
    #: Where the runtime keeps what must outlive it (the sqlite state store's file).
    data_dir: str = ".okra"
    #: The state store behind okra.state (a `register_state_stores` plugin) and its
    #: options; "sqlite" stores in `<data_dir>/state.db` unless given a `path`. Opened
    #: when a service first uses state.
    state_store: str = "sqlite"
    state_options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    #: The secrets provider behind okra.secrets (a `register_secrets_providers` plugin)
    #: and its options.
    secrets_provider: str = "env"
    secrets_options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    #: okra.config values set at deploy, by package name ("" for every package that asks
    #: for okra.config); they replace the manifest's values of the same names.
    config_overrides: Mapping[str, Mapping[str, str]] = dataclasses.field(default_factory=dict)
    #: Upper bound for any service's pool max, whatever its manifest asks.
    max_instances_per_service: int = 64
    #: Deadline for calls that come without one, in seconds.
    default_timeout: float = 30.0
    #: How long a redeploy or undeploy waits for in-flight calls of the old version.
    drain_timeout: float = 30.0
    #: Let services whose calls prove short (and whose host functions never block) run
    #: them inline on the event loop instead of handing each to a worker thread.
    inline_calls: bool = True
    #: Check that guest output parses as the method's response type (INTERNAL if not).
    validate_output: bool = True
    #: How many messages of one server-streaming call may wait for a slow caller before
    #: the guest is paused (its next `okra.abi.send` blocks until the caller reads).
    stream_buffer: int = 8

    # -- limits: a manifest may ask for less, never for more (docs/actors.md) ---------
    #: Largest linear memory of one instance.
    max_memory_bytes: int = 256 * 1024 * 1024
    #: Longest any one call may run; the guest is stopped then (DEADLINE_EXCEEDED).
    max_call_seconds: float = 300.0
    #: Largest request and response message.
    max_request_bytes: int = 4 * 1024 * 1024
    max_response_bytes: int = 4 * 1024 * 1024
    #: Callers that may wait for a busy service (per service, or per key of a keyed
    #: service); more fail at once with RESOURCE_EXHAUSTED. The default when a manifest
    #: says nothing, and the cap when it does.
    default_queue: int = 100
    max_queue: int = 10_000
    #: Live activations of one keyed service: the default and the cap.
    default_max_activations: int = 256
    max_activations: int = 100_000
    #: Idle time after which a keyed activation passivates, when its manifest says nothing.
    default_keyed_idle_seconds: float = 300.0
    #: Supervision: after an instance fails to start, new starts wait this long, doubling
    #: with each further failure up to `max_restart_backoff`; calls meanwhile fail at
    #: once with UNAVAILABLE and the reason.
    restart_backoff: float = 0.1
    max_restart_backoff: float = 30.0

    def __post_init__(self) -> None:
        if self.engines is not None and self.engine not in self.engines:
            raise ConfigError(
                f"the default engine {self.engine!r} is not among the allowed engines "
                f"({', '.join(sorted(self.engines)) or 'none'})"
            )
        if self.stream_buffer < 1:
            raise ConfigError(
                f"stream_buffer must be at least 1 (messages), got {self.stream_buffer}"
            )
        for name in (
            "max_memory_bytes", "max_request_bytes", "max_response_bytes",
            "max_activations", "default_max_activations",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("default_queue", "max_queue"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in (
            "max_call_seconds", "default_keyed_idle_seconds", "restart_backoff",
            "max_restart_backoff", "default_timeout",
        ):
            value = getattr(self, name)
            if not value > 0:
                raise ConfigError(f"{name} must be a number of seconds > 0, got {value}")

    def allows(self, namespace: str) -> bool:
        return self.allowed_host_apis is None or namespace in self.allowed_host_apis
