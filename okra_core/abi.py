"""The guest ABI, version 1 (`docs/abi.md`): names, envelopes and `okra.abi`.

Envelopes are protobuf messages, encoded and decoded here by hand: they are tiny, and a
hand-written codec costs well under a microsecond, which matters on the request path.
"""

from __future__ import annotations

from collections.abc import Iterable

from okra_core.hostapi import HostContext, HostFunction
from okra_core.status import StatusCode

ABI_VERSION = 1
SUPPORTED_ABI_VERSIONS = frozenset({1})

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


def request_prefix(service: str, method: str) -> bytes:
    """The constant part of every request envelope for one method (service, method);
    computed once per method, so building an envelope is one concatenation."""
    return _field_bytes(b"\x22", service.encode()) + _field_bytes(b"\x0a", method.encode())


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
    service = method = ""
    payload = b""
    metadata: list[tuple[str, str]] = []
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
    return service, method, payload, metadata


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


def abi_functions() -> list[HostFunction]:
    """`okra.abi`, linked into every instance."""
    return [HostFunction(ABI_NAMESPACE, "take", ("i32", "i32"), _take, blocking=False)]
