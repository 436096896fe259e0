"""The guest ABI (`docs/abi.md`): names, envelopes and `okra.abi`.

Version 1 serves unary methods; version 2 adds server streaming (`okra.abi.send`).
Envelopes are protobuf messages, encoded and decoded here by hand: they are tiny, and a
hand-written codec costs well under a microsecond, which matters on the request path.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Protocol

from okra_core.hostapi import HostContext, HostError, HostFunction
from okra_core.status import StatusCode

#: The version guests built by this OKRA speak (written into their manifests).
ABI_VERSION = 2
SUPPORTED_ABI_VERSIONS = frozenset({1, 2})
#: The first version with server streaming (`okra.abi.send`, `Request.stream`).
STREAMING_ABI_VERSION = 2

EXPORT_MEMORY = "memory"
EXPORT_INITIALIZE = "_initialize"
EXPORT_ABI_VERSION = "okra_abi_version"
EXPORT_BUFFER = "okra_buffer"
EXPORT_HANDLE = "okra_handle"

#: Exports every guest must have, with their function types (None for the memory).
REQUIRED_EXPORTS: dict[str, tuple[tuple[str, ...], tuple[str, ...]] | None] = {
    EXPORT_MEMORY: None,
    EXPORT_ABI_VERSION: ((), ("i32",)),
    EXPORT_BUFFER: (("i32",), ("i32",)),
    EXPORT_HANDLE: (("i32", "i32"), ("i64",)),
}

#: The size of the request buffer the host asks for after instantiation.
INITIAL_BUFFER_SIZE = 64 * 1024

WASI_NAMESPACE = "wasi_snapshot_preview1"
ABI_NAMESPACE = "okra.abi"
HOST_API_PREFIX = "okra."


def encode_varint(value: int) -> bytes:
    if value < 0x80:
        return bytes((value,))
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def decode_varint(data: bytes | memoryview, pos: int) -> tuple[int, int]:
    result = 0
    shift = 0
    while True:
        if pos >= len(data):
            raise ValueError("truncated varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
        if shift >= 64:
            raise ValueError("varint too long")


def _field_bytes(tag: bytes, value: bytes) -> bytes:
    return tag + encode_varint(len(value)) + value


def request_prefix(service: str, method: str, *, stream: bool = False) -> bytes:
    """The constant part of every request envelope for one method (service, method and,
    for a server-streaming method, `stream: true`); computed once per method, so
    building an envelope is one concatenation."""
    prefix = _field_bytes(b"\x22", service.encode()) + _field_bytes(b"\x0a", method.encode())
    return prefix + b"\x28\x01" if stream else prefix


def encode_metadata(metadata: Iterable[tuple[str, str]]) -> bytes:
    parts = []
    for key, value in metadata:
        entry = _field_bytes(b"\x0a", key.encode()) + _field_bytes(b"\x12", value.encode())
        parts.append(_field_bytes(b"\x1a", entry))
    return b"".join(parts)


def encode_request(prefix: bytes, payload: bytes, metadata: bytes = b"") -> bytes:
    """A request envelope from `request_prefix(...)`, the input and encoded metadata."""
    return prefix + b"\x12" + encode_varint(len(payload)) + payload + metadata


def decode_request(data: bytes) -> tuple[str, str, bytes, list[tuple[str, str]]]:
    """(service, method, input, metadata); for tests and guests written in Python."""
    service, method, payload, metadata, _ = decode_request_v2(data)
    return service, method, payload, metadata


def decode_request_v2(data: bytes) -> tuple[str, str, bytes, list[tuple[str, str]], bool]:
    """(service, method, input, metadata, stream); for tests and guests written in Python."""
    service = method = ""
    payload = b""
    metadata: list[tuple[str, str]] = []
    stream = False
    for number, value in _iter_fields(data):
        if number == 1:
            method = bytes(value).decode()
        elif number == 2:
            payload = bytes(value)
        elif number == 3:
            entry = dict(_iter_fields(value))
            metadata.append((bytes(entry.get(1, b"")).decode(), bytes(entry.get(2, b"")).decode()))
        elif number == 4:
            service = bytes(value).decode()
        elif number == 5:
            stream = bool(value)
    return service, method, payload, metadata, stream


def encode_response(output: bytes = b"", code: int = 0, message: str = "") -> bytes:
    out = _field_bytes(b"\x0a", output) if output else b""
    if code:
        out += b"\x10" + encode_varint(code)
    if message:
        out += _field_bytes(b"\x1a", message.encode())
    return out


def decode_response(data: bytes) -> tuple[bytes, int, str]:
    """(output, code, message). Raises ValueError for a malformed envelope."""
    # Fast path: a success response is exactly one length-delimited field 1.
    if data and data[0] == 0x0A:
        length, pos = decode_varint(data, 1)
        if pos + length == len(data):
            return data[pos:], 0, ""
    output = b""
    code = 0
    message = ""
    for number, value in _iter_fields(data):
        if number == 1:
            output = bytes(value)
        elif number == 2:
            code = value
        elif number == 3:
            message = bytes(value).decode("utf-8", "replace")
    return output, code, message


def _iter_fields(data: bytes | memoryview):
    """Yield (field number, value) for a protobuf message: an int for varints, a
    memoryview for length-delimited and fixed-size fields."""
    view = memoryview(data)
    pos = 0
    end = len(view)
    while pos < end:
        key, pos = decode_varint(view, pos)
        number, wire_type = key >> 3, key & 7
        if number == 0:
            raise ValueError("field number 0")
        if wire_type == 0:
            value, pos = decode_varint(view, pos)
        elif wire_type == 2:
            length, pos = decode_varint(view, pos)
            if pos + length > end:
                raise ValueError("truncated length-delimited field")
            value = view[pos : pos + length]
            pos += length
        elif wire_type == 1:
            value = view[pos : pos + 8]
            pos += 8
        elif wire_type == 5:
            value = view[pos : pos + 4]
            pos += 4
        else:
            raise ValueError(f"unsupported wire type {wire_type}")
        if pos > end:
            raise ValueError("truncated field")
        yield number, value


iter_fields = _iter_fields


def field_bytes(value: int | memoryview) -> bytes:
    """A length-delimited field's bytes; ValueError if the field came with another wire
    type (never `bytes(int)`, which would allocate that many zero bytes)."""
    if not isinstance(value, memoryview):
        raise ValueError("expected a length-delimited field, got a varint")
    return bytes(value)


def field_text(value: int | memoryview) -> str:
    """A string field (UTF-8); ValueError on another wire type or invalid UTF-8."""
    return field_bytes(value).decode("utf-8")


def field_int(value: int | memoryview) -> int:
    """A varint field; ValueError if the field came with another wire type."""
    if not isinstance(value, int):
        raise ValueError("expected a varint field")
    return value


def _take(ctx: HostContext, ptr: int, cap: int) -> int:
    data = ctx.pending
    if data is None:
        return -StatusCode.NOT_FOUND
    if len(data) > cap:
        return -StatusCode.RESOURCE_EXHAUSTED
    assert ctx.memory is not None
    ctx.memory.write(ptr, data)
    ctx.pending = None
    return len(data)


class StreamSink(Protocol):
    """Where `okra.abi.send` delivers the messages of the streaming call in progress."""

    def send(self, message: bytes) -> None:
        """Take one response message; may block while the caller catches up (that is
        the backpressure). Raises HostError when the call is over for the guest
        (CANCELLED, DEADLINE_EXCEEDED, or INTERNAL for a message that is invalid)."""


# Host functions run on the thread that called into the guest (wasmtime and wasm3 both
# call them synchronously), so the streaming call in progress is found per thread and
# the instance carries no per-call state.
_calls = threading.local()


def bind_stream(sink: StreamSink | None) -> None:
    """Make `sink` receive what the guest running on this thread sends (None: unbind)."""
    _calls.stream = sink


def _send(ctx: HostContext, ptr: int, length: int) -> int:
    sink = getattr(_calls, "stream", None)
    if sink is None:
        raise HostError(
            StatusCode.FAILED_PRECONDITION,
            "okra.abi.send called outside a server-streaming call",
        )
    assert ctx.memory is not None
    sink.send(ctx.memory.read(ptr, length))
    return 0


def abi_functions(version: int = ABI_VERSION) -> list[HostFunction]:
    """`okra.abi` as a guest speaking `version` sees it; linked into every instance."""
    functions = [HostFunction(ABI_NAMESPACE, "take", ("i32", "i32"), _take, blocking=False)]
    if version >= STREAMING_ABI_VERSION:
        # `send` blocks only inside a streaming call, and those always run on worker
        # threads; in a unary call it fails at once, so it never blocks an inline call.
        functions.append(
            HostFunction(ABI_NAMESPACE, "send", ("i32", "i32"), _send, blocking=False)
        )
    return functions
