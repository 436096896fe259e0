"""Host API `okra.log`: structured logging into the service's log.

Records go to the Python logger `okra.service.<service>`, so the operator's logging
set-up (levels, handlers, JSON formatters) applies. The structured fields travel in the
record's `okra_fields` attribute and are also rendered into the message as `key=value`.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Mapping, Sequence
from typing import Any

from okra_core.abi import field_bytes, field_int, iter_fields
from okra_core.errors import ConfigError
from okra_core.hookspecs import hookimpl
from okra_core.hostapi import HostContext, HostEnvironment, HostError, HostFunction, check_settings
from okra_core.status import StatusCode

#: Longest message, and longest string field, a guest can log; longer ones are cut, so
#: no guest can make one log record arbitrarily expensive to format, ship or store.
MAX_TEXT = 8 * 1024

#: Guest level -> Python logging level.
LEVELS = {1: logging.DEBUG, 2: logging.INFO, 3: logging.WARNING, 4: logging.ERROR}
LEVEL_NAMES = {"debug": 1, "info": 2, "warning": 3, "warn": 3, "error": 4}


def decode_record(data: bytes) -> tuple[str, dict[str, Any]]:
    """A LogRecord (docs/abi.md) -> (message, fields)."""
    message = ""
    fields: dict[str, Any] = {}
    for number, value in iter_fields(data):
        if number == 1:
            message = truncate(field_bytes(value).decode("utf-8", "replace"))
        elif number == 2:
            key = ""
            field_value: Any = None
            for sub, raw in iter_fields(field_bytes(value)):
                if sub == 1:
                    key = truncate(field_bytes(raw).decode("utf-8", "replace"), 256)
                elif sub == 2:
                    field_value = truncate(field_bytes(raw).decode("utf-8", "replace"))
                elif sub == 3:
                    raw = field_int(raw)
                    field_value = (raw >> 1) ^ -(raw & 1)  # zigzag
                elif sub == 4:
                    if not isinstance(raw, memoryview) or len(raw) != 8:
                        raise ValueError("a double field must be 8 bytes")
                    field_value = struct.unpack("<d", raw)[0]
                elif sub == 5:
                    field_value = bool(field_int(raw))
            fields[key] = field_value
    return message, fields


def truncate(text: str, limit: int = MAX_TEXT) -> str:
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... [{len(text) - limit} more characters]"


def render(message: str, fields: Mapping[str, Any]) -> str:
    if not fields:
        return message
    parts = [message]
    for key, value in fields.items():
        if isinstance(value, str) and (not value or any(c in value for c in ' ="')):
            value = '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
        elif isinstance(value, bool):
            value = "true" if value else "false"
        parts.append(f"{key}={value}")
    return " ".join(parts)


class LogAPI:
    namespace = "okra.log"
    description = "structured logging into the service's log (levels, message, fields)"

    def function_names(self) -> Sequence[str]:
        return ("write", "enabled")

    def functions(
        self, config: Mapping[str, Any], env: HostEnvironment | None = None
    ) -> Sequence[HostFunction]:
        check_settings(config, ("level",), "okra.log settings")
        level_name = str(config.get("level", "debug")).lower()
        if level_name not in LEVEL_NAMES:
            raise ConfigError(
                f"okra.log level {level_name!r} is not one of {', '.join(LEVEL_NAMES)}"
            )
        floor = LEVEL_NAMES[level_name]

        def enabled(ctx: HostContext, level: int) -> int:
            return int(level >= floor and level in LEVELS and ctx.logger.isEnabledFor(LEVELS[level]))

        def write(ctx: HostContext, level: int, ptr: int, length: int) -> int:
            if level not in LEVELS:
                raise HostError(StatusCode.INVALID_ARGUMENT, f"unknown log level {level}")
            if level < floor or not ctx.logger.isEnabledFor(LEVELS[level]):
                return 0
            assert ctx.memory is not None
            try:
                message, fields = decode_record(ctx.memory.read(ptr, length))
            except ValueError as exc:
                raise HostError(StatusCode.INVALID_ARGUMENT, f"malformed LogRecord: {exc}") from None
            ctx.logger.log(
                LEVELS[level],
                "%s",
                render(message, fields),
                extra={"okra_service": ctx.service, "okra_fields": fields},
            )
            return 0

        return (
            HostFunction(self.namespace, "write", ("i32", "i32", "i32"), write, blocking=False),
            HostFunction(self.namespace, "enabled", ("i32",), enabled, blocking=False),
        )


@hookimpl
def register_host_apis(register):
    register(LogAPI())
