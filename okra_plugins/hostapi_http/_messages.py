"""The okra.http messages (docs/host-apis/http.md), encoded and decoded by hand like the
ABI envelopes: they are small and flat, and a guest's bytes are checked field by field
(a wrong wire type is an error, never `bytes(n)` of a huge varint).

    message HttpRequest { string method = 1; string url = 2; repeated Header headers = 3;
                          bytes body = 4; uint32 timeout_ms = 5; }
    message HttpResponse { uint32 status = 1; repeated Header headers = 2; bytes body = 3;
                           string url = 4; }
    message Header { string name = 1; string value = 2; }
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from okra_core.abi import encode_varint, iter_fields


@dataclasses.dataclass
class HttpRequest:
    method: str = ""
    url: str = ""
    headers: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    body: bytes = b""
    timeout_ms: int = 0


@dataclasses.dataclass
class HttpResponse:
    status: int = 0
    headers: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    body: bytes = b""
    url: str = ""


def _bytes(value: int | memoryview, field: str) -> bytes:
    if not isinstance(value, memoryview):
        raise ValueError(f"{field} must be length-delimited, got a varint")
    return bytes(value)


def _text(value: int | memoryview, field: str) -> str:
    try:
        return _bytes(value, field).decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{field} is not valid UTF-8") from None


def _header(data: int | memoryview) -> tuple[str, str]:
    name = value = ""
    for number, raw in iter_fields(_bytes(data, "headers")):
        if number == 1:
            name = _text(raw, "Header.name")
        elif number == 2:
            value = _text(raw, "Header.value")
    return name, value


def decode_request(data: bytes) -> HttpRequest:
    """Raises ValueError saying what is malformed."""
    request = HttpRequest()
    for number, value in iter_fields(data):
        if number == 1:
            request.method = _text(value, "method")
        elif number == 2:
            request.url = _text(value, "url")
        elif number == 3:
            request.headers.append(_header(value))
        elif number == 4:
            request.body = _bytes(value, "body")
        elif number == 5:
            if not isinstance(value, int) or value >= 2**32:
                raise ValueError("timeout_ms must be a uint32 varint")
            request.timeout_ms = value
    return request


def _field(number: int, value: bytes) -> bytes:
    return encode_varint(number << 3 | 2) + encode_varint(len(value)) + value


def _headers(number: int, headers: Iterable[tuple[str, str]]) -> bytes:
    return b"".join(
        _field(number, _field(1, name.encode()) + _field(2, value.encode()))
        for name, value in headers
    )


def encode_request(request: HttpRequest) -> bytes:
    """For tests and guests written in Python."""
    out = _field(1, request.method.encode()) + _field(2, request.url.encode())
    out += _headers(3, request.headers) + _field(4, request.body)
    if request.timeout_ms:
        out += b"\x28" + encode_varint(request.timeout_ms)
    return out


def encode_response(response: HttpResponse) -> bytes:
    return (
        b"\x08" + encode_varint(response.status)
        + _headers(2, response.headers)
        + _field(3, response.body)
        + _field(4, response.url.encode())
    )


def decode_response(data: bytes) -> HttpResponse:
    """For tests and guests written in Python; raises ValueError."""
    response = HttpResponse()
    for number, value in iter_fields(data):
        if number == 1:
            if not isinstance(value, int):
                raise ValueError("status must be a varint")
            response.status = value
        elif number == 2:
            response.headers.append(_header(value))
        elif number == 3:
            response.body = _bytes(value, "body")
        elif number == 4:
            response.url = _text(value, "url")
    return response
