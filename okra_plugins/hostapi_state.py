"""Host API `okra.state`: key-value state a service keeps between calls and instances.

Each service sees one namespace of the runtime's state store (`HostEnvironment.state()`,
opened on first use): its own name, or `<service>#<key>` for the key a keyed service is
serving, so an actor's state is its own. No argument names a namespace, so no guest can
reach another's. The ABI is in docs/host-apis/state.md.

All functions are blocking: the store may do I/O (sqlite, redis). The memory store
never waits, but knowing which store a runtime uses means opening it, and
`functions()` runs inside a deploy on the event loop (and in `okra build`'s offline
check, which has no store), so it does not ask.
"""

from __future__ import annotations

import dataclasses
import struct
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from okra_core.abi import encode_varint, field_bytes, field_int, iter_fields
from okra_core.errors import ConfigError
from okra_core.hookspecs import hookimpl
from okra_core.hostapi import HostContext, HostEnvironment, HostError, HostFunction, check_settings
from okra_core.state import MAX_LIST_LIMIT, NotAnInteger
from okra_core.status import StatusCode

NAMESPACE = "okra.state"
DEFAULT_MAX_VALUE_BYTES = 1024 * 1024
DEFAULT_MAX_KEY_BYTES = 1024
#: The largest limits a package or policy may set.
MAX_VALUE_BYTES_LIMIT = 64 * 1024 * 1024
MAX_KEY_BYTES_LIMIT = 64 * 1024
#: Entries in a page when the ListRequest says 0.
DEFAULT_LIST_LIMIT = 100
#: A ListResult stops growing past this many bytes (it always holds one entry), so a
#: page of large values need not be taken whole by the guest; next_cursor goes on.
MAX_LIST_RESULT_BYTES = 4 * 1024 * 1024
#: A ListRequest holds a prefix and a cursor, each a key.
MAX_LIST_REQUEST_BYTES = 2 * MAX_KEY_BYTES_LIMIT + 32
#: Longest TTL, in milliseconds: a century (0 means none).
MAX_TTL_MS = 100 * 365 * 24 * 3600 * 1000

SETTINGS = ("read_only", "max_value_bytes", "max_key_bytes")
POLICY_SETTINGS = (*SETTINGS, "rule")
#: Set by `narrow`, not by packages: setting -> the policy rule that set it, so a
#: refusal at run time can name the rule.
POLICY_RULES = "policy_rules"

WRITES = ("set", "delete", "compare_and_set", "increment")

_I64 = struct.Struct("<q")
_T = TypeVar("_T")


@dataclasses.dataclass(frozen=True)
class StateSettings:
    read_only: bool = False
    max_value_bytes: int = DEFAULT_MAX_VALUE_BYTES
    max_key_bytes: int = DEFAULT_MAX_KEY_BYTES
    #: setting -> the operator policy rule that set it.
    policy_rules: Mapping[str, str] = dataclasses.field(default_factory=dict)

    def source(self, setting: str) -> str:
        """Where a setting's value comes from, for error messages."""
        rule = self.policy_rules.get(setting)
        if rule is not None:
            return f"{setting} set by operator policy rule {rule!r}"
        return f'{setting} in [host_apis."{NAMESPACE}"] in okra.toml'


def _size(settings: Mapping[str, Any], name: str, default: int, limit: int, where: str) -> int:
    value = settings.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= limit:
        raise ConfigError(f"{where}: {name} must be a whole number of bytes from 1 to {limit}, got {value!r}")
    return value


def _read_only(settings: Mapping[str, Any], where: str) -> bool:
    value = settings.get("read_only", False)
    if not isinstance(value, bool):
        raise ConfigError(f"{where}: read_only must be true or false, got {value!r}")
    return value


def parse_settings(config: Mapping[str, Any], where: str = f'host_apis."{NAMESPACE}"') -> StateSettings:
    check_settings(config, SETTINGS, f"{NAMESPACE} settings", internal=(POLICY_RULES,))
    rules = config.get(POLICY_RULES, {})
    if not isinstance(rules, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in rules.items()
    ):
        raise ConfigError(f"{where}: {POLICY_RULES} is set by operator policy, not by packages")
    return StateSettings(
        read_only=_read_only(config, where),
        max_value_bytes=_size(config, "max_value_bytes", DEFAULT_MAX_VALUE_BYTES, MAX_VALUE_BYTES_LIMIT, where),
        max_key_bytes=_size(config, "max_key_bytes", DEFAULT_MAX_KEY_BYTES, MAX_KEY_BYTES_LIMIT, where),
        policy_rules=dict(rules),
    )


def namespace_of(ctx: HostContext) -> str:
    """The caller's namespace: its service, and for a keyed service the key it serves.
    Service names never contain "#", so the first "#" ends the service's part."""
    return f"{ctx.service}#{ctx.key}" if ctx.key else ctx.service


def encode_list_result(entries: Sequence[tuple[bytes, bytes, int]], next_cursor: bytes) -> bytes:
    """ListResult { repeated StateEntry entries = 1; bytes next_cursor = 2; }"""
    out = bytearray()
    for key, value, version in entries:
        entry = _entry(key, value, version)
        out += b"\x0a" + encode_varint(len(entry)) + entry
    if next_cursor:
        out += b"\x12" + encode_varint(len(next_cursor)) + next_cursor
    return bytes(out)


def _entry(key: bytes, value: bytes, version: int) -> bytes:
    """StateEntry { bytes key = 1; bytes value = 2; int64 version = 3; }"""
    return (
        b"\x0a" + encode_varint(len(key)) + key
        + b"\x12" + encode_varint(len(value)) + value
        + b"\x18" + encode_varint(version)
    )


def decode_list_request(data: bytes) -> tuple[bytes, bytes, int]:
    """ListRequest { bytes prefix = 1; bytes cursor = 2; uint32 limit = 3; } ->
    (prefix, cursor, limit); ValueError if it does not parse."""
    prefix = cursor = b""
    limit = 0
    for number, value in iter_fields(data):
        if number == 1:
            prefix = field_bytes(value)
        elif number == 2:
            cursor = field_bytes(value)
        elif number == 3:
            limit = field_int(value) & 0xFFFFFFFF  # uint32, as protobuf reads it
    return prefix, cursor, limit


class StateAPI:
    namespace = NAMESPACE
    description = "key-value state per service (per key for keyed services): versions, TTL, CAS, counters"
    #: Written by `narrow` only: the runtime refuses it from a manifest.
    internal_settings = (POLICY_RULES,)

    def function_names(self) -> Sequence[str]:
        return ("get", "set", "delete", "compare_and_set", "increment", "list")

    def functions(self, config: Mapping[str, Any], env: HostEnvironment) -> Sequence[HostFunction]:
        settings = parse_settings(config)
        api = self.namespace
        max_key, max_value = settings.max_key_bytes, settings.max_value_bytes

        def store_call(ctx: HostContext, what: str, operation: Callable[[Any], _T]) -> _T:
            """Run one store operation; a store failure (unreachable, disk full) is
            UNAVAILABLE for the guest and logged in full for the operator."""
            store = None
            try:
                store = env.state()
                return operation(store)
            except (HostError, NotAnInteger, OverflowError):
                raise
            except Exception as exc:
                name = getattr(store, "name", "?") if store is not None else "(not opened)"
                ctx.logger.error(
                    "okra.state.%s: state store %s failed: %s: %s", what, name, type(exc).__name__, exc,
                    exc_info=True,
                )
                raise HostError(
                    StatusCode.UNAVAILABLE,
                    f"okra.state.{what}: the state store failed ({type(exc).__name__}); "
                    "the host's log says why",
                ) from None

        def refuse_writes(ctx: HostContext, what: str) -> None:
            if not settings.read_only:
                return
            rule = settings.policy_rules.get("read_only")
            if rule is None:
                why = f'read_only = true in [host_apis."{NAMESPACE}"] in okra.toml; set it to false to write'
            else:
                why = f"read_only = true set by operator policy rule {rule!r}; ask the operator to allow writes"
            env.audit.denied(ctx.service, api, f"state is read-only: {what} refused", function=what)
            raise HostError(
                StatusCode.PERMISSION_DENIED,
                f"okra.state.{what} refused: state is read-only for {ctx.service} ({why})",
            )

        def read_key(ctx: HostContext, ptr: int, length: int) -> bytes:
            if not 0 < length <= max_key:
                raise HostError(
                    StatusCode.INVALID_ARGUMENT,
                    f"a key is 1 to {max_key} bytes, got {length} "
                    f"({settings.source('max_key_bytes')})",
                )
            assert ctx.memory is not None
            return ctx.memory.read(ptr, length)

        def read_value(ctx: HostContext, ptr: int, length: int) -> bytes:
            if length < 0:
                raise HostError(StatusCode.INVALID_ARGUMENT, f"a value length cannot be negative ({length})")
            if length > max_value:
                raise HostError(
                    StatusCode.RESOURCE_EXHAUSTED,
                    f"the value is {length} bytes; at most {max_value} may be stored "
                    f"({settings.source('max_value_bytes')})",
                )
            assert ctx.memory is not None
            return ctx.memory.read(ptr, length)

        def ttl_of(ttl_ms: int) -> float | None:
            if ttl_ms < 0:
                raise HostError(StatusCode.INVALID_ARGUMENT, f"ttl_ms cannot be negative ({ttl_ms})")
            if ttl_ms > MAX_TTL_MS:
                raise HostError(
                    StatusCode.INVALID_ARGUMENT,
                    f"ttl_ms {ttl_ms} is longer than a century; 0 means the value never expires",
                )
            return ttl_ms / 1000 if ttl_ms else None

        def check_out(ctx: HostContext, ptr: int) -> None:
            """Check an 8-byte out slot before the store is touched, so a bad pointer
            fails with nothing written anywhere (0: the caller wants no result)."""
            if ptr:
                assert ctx.memory is not None
                ctx.memory.read(ptr, 8)

        def write_out(ctx: HostContext, ptr: int, number: int) -> None:
            if ptr:
                assert ctx.memory is not None
                ctx.memory.write(ptr, _I64.pack(number))

        def get(ctx: HostContext, key_ptr: int, key_len: int, out_ptr: int, out_cap: int) -> int:
            key = read_key(ctx, key_ptr, key_len)
            try:  # store_call, inline: this is the hot path
                entry = env.state().get(namespace_of(ctx), key)
            except Exception:
                entry = store_call(ctx, "get", lambda store: store.get(namespace_of(ctx), key))
            if entry is None:
                raise HostError(StatusCode.NOT_FOUND, "no value is stored under this key")
            return ctx.return_data(_I64.pack(entry.version) + entry.value, out_ptr, out_cap)

        def set_(
            ctx: HostContext, key_ptr: int, key_len: int, val_ptr: int, val_len: int,
            ttl_ms: int, version_out: int,
        ) -> int:
            refuse_writes(ctx, "set")
            key = read_key(ctx, key_ptr, key_len)
            value = read_value(ctx, val_ptr, val_len)
            ttl = ttl_of(ttl_ms)
            check_out(ctx, version_out)
            namespace = namespace_of(ctx)
            version = store_call(ctx, "set", lambda store: store.set(namespace, key, value, ttl=ttl))
            write_out(ctx, version_out, version)
            return 0

        def delete(ctx: HostContext, key_ptr: int, key_len: int) -> int:
            refuse_writes(ctx, "delete")
            key = read_key(ctx, key_ptr, key_len)
            namespace = namespace_of(ctx)
            return int(store_call(ctx, "delete", lambda store: store.delete(namespace, key)))

        def compare_and_set(
            ctx: HostContext, key_ptr: int, key_len: int, expected: int, val_ptr: int,
            val_len: int, ttl_ms: int, version_out: int,
        ) -> int:
            refuse_writes(ctx, "compare_and_set")
            key = read_key(ctx, key_ptr, key_len)
            if expected < 0:
                raise HostError(
                    StatusCode.INVALID_ARGUMENT,
                    f"expected_version cannot be negative ({expected}); 0 means the key must not exist",
                )
            value = read_value(ctx, val_ptr, val_len)
            ttl = ttl_of(ttl_ms)
            check_out(ctx, version_out)
            namespace = namespace_of(ctx)
            version = store_call(
                ctx, "compare_and_set",
                lambda store: store.compare_and_set(namespace, key, value, version=expected, ttl=ttl),
            )
            if version is None:
                entry = store_call(ctx, "compare_and_set", lambda store: store.get(namespace, key))
                current = "the key does not exist (version 0)" if entry is None else f"the current version is {entry.version}"
                raise HostError(
                    StatusCode.ABORTED,
                    f"version mismatch: expected version {expected}, but {current}",
                )
            write_out(ctx, version_out, version)
            return 0

        def increment(
            ctx: HostContext, key_ptr: int, key_len: int, delta: int, ttl_ms: int, value_out: int,
        ) -> int:
            refuse_writes(ctx, "increment")
            key = read_key(ctx, key_ptr, key_len)
            ttl = ttl_of(ttl_ms)
            check_out(ctx, value_out)
            namespace = namespace_of(ctx)
            try:
                total = store_call(
                    ctx, "increment", lambda store: store.increment(namespace, key, delta, ttl=ttl)
                )
            except NotAnInteger as exc:
                raise HostError(StatusCode.FAILED_PRECONDITION, f"cannot increment: {exc}") from None
            except OverflowError:
                raise HostError(
                    StatusCode.OUT_OF_RANGE,
                    f"cannot increment by {delta}: the counter would leave the signed 64-bit range",
                ) from None
            write_out(ctx, value_out, total)
            return 0

        def list_(ctx: HostContext, req_ptr: int, req_len: int, out_ptr: int, out_cap: int) -> int:
            if not 0 <= req_len <= MAX_LIST_REQUEST_BYTES:
                raise HostError(
                    StatusCode.INVALID_ARGUMENT,
                    f"a ListRequest is at most {MAX_LIST_REQUEST_BYTES} bytes, got {req_len}",
                )
            assert ctx.memory is not None
            try:
                prefix, cursor, limit = decode_list_request(ctx.memory.read(req_ptr, req_len))
            except ValueError as exc:
                raise HostError(StatusCode.INVALID_ARGUMENT, f"the ListRequest does not parse: {exc}") from None
            limit = DEFAULT_LIST_LIMIT if limit == 0 else min(limit, MAX_LIST_LIMIT)
            namespace = namespace_of(ctx)
            page = store_call(
                ctx, "list",
                lambda store: store.list(namespace, prefix, cursor=cursor or None, limit=limit),
            )
            entries: list[tuple[bytes, bytes, int]] = []
            size = 0
            next_cursor = page.cursor or b""
            for key, entry in page.entries:
                size += len(key) + len(entry.value) + 32
                if entries and size > MAX_LIST_RESULT_BYTES:
                    next_cursor = entries[-1][0]  # a cursor is a key: go on after it
                    break
                entries.append((key, entry.value, entry.version))
            return ctx.return_data(encode_list_result(entries, next_cursor), out_ptr, out_cap)

        i32, i64 = "i32", "i64"
        return (
            HostFunction(api, "get", (i32, i32, i32, i32), get),
            HostFunction(api, "set", (i32, i32, i32, i32, i64, i32), set_),
            HostFunction(api, "delete", (i32, i32), delete),
            HostFunction(api, "compare_and_set", (i32, i32, i64, i32, i32, i64, i32), compare_and_set),
            HostFunction(api, "increment", (i32, i32, i64, i64, i32), increment),
            HostFunction(api, "list", (i32, i32, i32, i32), list_),
        )

    def narrow(self, requested: Mapping[str, Any], policy: Mapping[str, Any]) -> Mapping[str, Any]:
        """A policy may make state read-only (`read_only = true`) and lower
        `max_value_bytes` and `max_key_bytes`; it never widens what the package asked
        for (`read_only = false` or a higher limit changes nothing). Lowering a limit
        fails no deploy: a write over it fails at run time, naming the rule."""
        check_settings(policy, POLICY_SETTINGS, f"{NAMESPACE} policy settings")
        rule = str(policy.get("rule", "operator policy"))
        where = f"policy rule {rule!r}: {NAMESPACE}"
        asked = parse_settings(requested)
        out = dict(requested)
        rules = dict(asked.policy_rules)
        if _read_only(policy, where) and not asked.read_only:
            out["read_only"] = True
            rules["read_only"] = rule
        for name, default, limit in (
            ("max_value_bytes", DEFAULT_MAX_VALUE_BYTES, MAX_VALUE_BYTES_LIMIT),
            ("max_key_bytes", DEFAULT_MAX_KEY_BYTES, MAX_KEY_BYTES_LIMIT),
        ):
            if name in policy:
                cap = _size(policy, name, default, limit, where)
                if cap < getattr(asked, name):
                    out[name] = cap
                    rules[name] = rule
        if rules:
            out[POLICY_RULES] = rules
        return out


@hookimpl
def register_host_apis(register):
    register(StateAPI())
