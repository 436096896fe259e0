"""Host API `okra.time`: the wall clock and a monotonic clock, from the runtime's clock.

Both read `HostEnvironment.clock`, so a runtime built with a `FakeClock` shows its guests
exactly the time a test sets. Results are i64 nanoseconds written little-endian into an
8-byte slot of guest memory (docs/host-apis/time.md).
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from typing import Any

from okra_core.errors import ConfigError
from okra_core.hookspecs import hookimpl
from okra_core.hostapi import HostContext, HostEnvironment, HostFunction

_I64 = struct.Struct("<q")


class TimeAPI:
    namespace = "okra.time"
    description = "the wall clock and a monotonic clock, in nanoseconds"

    def function_names(self) -> Sequence[str]:
        return ("now", "monotonic")

    def functions(self, config: Mapping[str, Any], env: HostEnvironment) -> Sequence[HostFunction]:
        if config:
            raise ConfigError(
                f"unknown okra.time settings: {', '.join(sorted(map(str, config)))} "
                "(okra.time has no settings)"
            )
        clock = env.clock

        def now(ctx: HostContext, out: int) -> int:
            assert ctx.memory is not None
            ctx.memory.write(out, _I64.pack(clock.time_ns()))
            return 0

        def monotonic(ctx: HostContext, out: int) -> int:
            assert ctx.memory is not None
            ctx.memory.write(out, _I64.pack(clock.monotonic_ns()))
            return 0

        return (
            HostFunction(self.namespace, "now", ("i32",), now, blocking=False),
            HostFunction(self.namespace, "monotonic", ("i32",), monotonic, blocking=False),
        )


@hookimpl
def register_host_apis(register):
    register(TimeAPI())
