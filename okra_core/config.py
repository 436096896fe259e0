"""Operator settings for a runtime: which engine, what guests may be granted, limits."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from okra_core.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class RuntimeConfig:
    #: Engine plugin name and its options (e.g. {"cache_dir": "/var/cache/okra"}).
    engine: str = "wasmtime"
    engine_options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    #: Operator policy: the host APIs guests may be granted; None allows every installed one.
    allowed_host_apis: frozenset[str] | None = None
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

    def __post_init__(self) -> None:
        if self.stream_buffer < 1:
            raise ConfigError(
                f"stream_buffer must be at least 1 (messages), got {self.stream_buffer}"
            )

    def allows(self, namespace: str) -> bool:
        return self.allowed_host_apis is None or namespace in self.allowed_host_apis
