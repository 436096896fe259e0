"""Host API `okra.call`: call another service's unary method, by name.

A service may call only the services its manifest declares as dependencies
(`[host_apis."okra.call"] services = [...]`); anything else is denied, audited and
counted. The call goes through the runtime like any other (`Runtime.invoke`), carrying
the caller's call chain (so A -> B -> A into a busy actor fails fast), its remaining
deadline, and its trace context (`traceparent`, `tracestate`). ABI: docs/host-apis/call.md.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from okra_core.abi import field_bytes, field_int, field_text, iter_fields
from okra_core.errors import ConfigError
from okra_core.hookspecs import hookimpl
from okra_core.hostapi import HostContext, HostEnvironment, HostError, HostFunction, check_settings
from okra_core.status import RpcError, StatusCode

NAMESPACE = "okra.call"
_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
SERVICE_NAME = re.compile(rf"{_IDENT}(?:\.{_IDENT})+")
METHOD_NAME = re.compile(_IDENT)
#: Metadata a guest may not set on a call: the transport's own and HTTP/2 pseudo-headers.
_RESERVED = re.compile(r"(grpc-|:|content-type$|te$|user-agent$)")
_METADATA_KEY = re.compile(r"[a-z0-9][a-z0-9_.-]*")
#: Trace context carried from the incoming call unless the guest sets it (W3C).
TRACE_KEYS = ("traceparent", "tracestate")
MAX_METADATA = 64
MAX_METADATA_VALUE = 8 * 1024


class CallAPI:
    namespace = NAMESPACE
    description = "call other services' unary methods (declared dependencies only)"

    def function_names(self) -> Sequence[str]:
        return ("invoke",)

    def functions(self, config: Mapping[str, Any], env: HostEnvironment) -> Sequence[HostFunction]:
        allowed = frozenset(_services(config, "services"))
        invoke_service = env.invoke
        audit = env.audit

        def invoke(ctx: HostContext, ptr: int, length: int, out_ptr: int, out_cap: int) -> int:
            assert ctx.memory is not None
            service, method, payload, metadata, timeout = decode_request(ctx.memory.read(ptr, length))
            if service not in allowed:
                reason = (
                    f"{ctx.service} may not call {service}: it is not among the services "
                    f"declared in [host_apis.\"okra.call\"] services (declared: "
                    f"{', '.join(sorted(allowed)) or 'none'}); add \"{service}\" there"
                )
                audit.denied(ctx.service, NAMESPACE, reason, target=f"{service}/{method}")
                raise HostError(StatusCode.PERMISSION_DENIED, f"okra.call: {reason}")
            remaining = ctx.remaining()
            if remaining is not None:
                if remaining <= 0:
                    raise HostError(
                        StatusCode.DEADLINE_EXCEEDED,
                        f"okra.call: {service}/{method}: the calling call's deadline has passed",
                    )
                timeout = remaining if timeout is None else min(timeout, remaining)
            present = {key for key, _ in metadata}
            for key, value in ctx.metadata:
                if key.lower() in TRACE_KEYS and key.lower() not in present:
                    metadata.append((key.lower(), value))
            try:
                response = invoke_service(ctx, service, method, payload, metadata, timeout)
            except RpcError as exc:
                raise HostError(exc.code, exc.message) from None
            return ctx.return_data(response, out_ptr, out_cap)

        return (
            HostFunction(NAMESPACE, "invoke", ("i32", "i32", "i32", "i32"), invoke, blocking=True),
        )

    def narrow(self, requested: Mapping[str, Any], policy: Mapping[str, Any]) -> Mapping[str, Any]:
        """A policy's `services` list bounds the dependencies: a package that declares a
        service outside it cannot be deployed."""
        check_settings(policy, ("services",), "okra.call policy settings", internal=("rule",))
        if "services" not in policy:
            return requested
        permitted = set(_services({"services": policy["services"]}, "services"))
        declared = _services(requested, "services")
        refused = [s for s in declared if s not in permitted]
        if refused:
            raise ConfigError(
                f"the package calls {', '.join(refused)}, but the rule allows calls only to "
                f"{', '.join(sorted(permitted)) or 'no services'}"
            )
        return requested


def _services(config: Mapping[str, Any], key: str) -> list[str]:
    check_settings(config, ("services",), "okra.call settings")
    services = config.get(key, [])
    if not isinstance(services, list) or not all(
        isinstance(s, str) and SERVICE_NAME.fullmatch(s) for s in services
    ):
        raise ConfigError(
            'okra.call services must be a list of fully qualified service names, e.g. '
            '["inventory.v1.Inventory"]'
        )
    return services


def decode_request(data: bytes) -> tuple[str, str, bytes, list[tuple[str, str]], float | None]:
    """A CallRequest -> (service, method, payload, metadata, timeout seconds or None)."""
    service = method = ""
    payload = b""
    metadata: list[tuple[str, str]] = []
    timeout_ms = 0
    try:
        for number, value in iter_fields(data):
            if number == 1:
                service = field_text(value)
            elif number == 2:
                method = field_text(value)
            elif number == 3:
                payload = field_bytes(value)
            elif number == 4:
                key = entry_value = ""
                for sub, raw in iter_fields(field_bytes(value)):
                    if sub == 1:
                        key = field_text(raw)
                    elif sub == 2:
                        entry_value = field_text(raw)
                metadata.append((key, entry_value))
            elif number == 5:
                timeout_ms = field_int(value)
    except (ValueError, TypeError, UnicodeDecodeError) as exc:
        raise HostError(StatusCode.INVALID_ARGUMENT, f"okra.call: malformed CallRequest: {exc}") from None
    if not SERVICE_NAME.fullmatch(service):
        raise HostError(
            StatusCode.INVALID_ARGUMENT,
            f"okra.call: {service!r} is not a fully qualified service name (e.g. inventory.v1.Inventory)",
        )
    if not METHOD_NAME.fullmatch(method):
        raise HostError(StatusCode.INVALID_ARGUMENT, f"okra.call: {method!r} is not a method name")
    if len(metadata) > MAX_METADATA:
        raise HostError(
            StatusCode.INVALID_ARGUMENT, f"okra.call: more than {MAX_METADATA} metadata entries"
        )
    for key, value in metadata:
        if not _METADATA_KEY.fullmatch(key) or _RESERVED.match(key):
            raise HostError(
                StatusCode.INVALID_ARGUMENT,
                f"okra.call: {key!r} is not a metadata key a call may set (lower case; "
                "not grpc-*, content-type, te or user-agent)",
            )
        if len(value) > MAX_METADATA_VALUE or (key.endswith("-bin") is False and "\n" in value):
            raise HostError(StatusCode.INVALID_ARGUMENT, f"okra.call: metadata {key!r} has a bad value")
    return service, method, payload, metadata, (timeout_ms / 1000.0 if timeout_ms > 0 else None)


@hookimpl
def register_host_apis(register):
    register(CallAPI())
