# The Connect transport, against a fake runtime: a real uvicorn server on 127.0.0.1:0,
# real HTTP requests (http.client, byte for byte as the Connect and gRPC-Web
# specifications write them), and real descriptor sets compiled from
# tests/fixtures/connect with grpc_tools.protoc. The runtime is faked (it routes bytes
# to Python handlers and reports deploys) so these tests need no wasm engine; the
# interop tests (test_transport_connect_interop.py) run real clients against real guests.
#
# Test plan
# - plugin: "connect" is registered through the hook and is a Transport; options are
#   validated (sizes, origins, max age, server options); a port in use is a ConfigError;
#   port 0 picks a free port.
# - Connect unary, binary: the request bytes reach the runtime untouched, the response
#   bytes reach the client untouched, as application/proto.
# - Connect unary, JSON: transcoded to binary for the runtime with the method's types
#   (JSON and proto field names, int64 as strings, bytes as base64, enums by name, maps,
#   oneofs, Timestamp, Duration, Struct, Any, wrappers); the response is proto3 JSON
#   (lowerCamelCase, defaults omitted); unknown fields ignored, or rejected when
#   configured; malformed JSON, JSON that is not an object, wrong types and non-UTF-8
#   -> invalid_argument.
# - errors: every RpcError code -> the Connect code and the HTTP status of the spec's
#   table, with the message; an unexpected exception -> internal, details withheld.
# - GET: a NO_SIDE_EFFECTS method answers GET (JSON, and base64 binary); other methods
#   refuse GET with 405; a base64 message that is not base64 -> invalid_argument, never
#   decoded into an empty request.
# - deadlines: connect-timeout-ms reaches the runtime as the call's timeout; a call that
#   outlives it -> deadline_exceeded (504); a malformed timeout -> invalid_argument.
# - compression: gzip request bodies are inflated; gzip responses when accepted; an
#   unknown encoding -> unimplemented; a gzip bomb over the limit -> resource_exhausted.
# - gRPC-Web: binary and JSON unary framed with a trailer frame; errors in headers or
#   trailers; unknown method -> grpc-status 12; gRPC (HTTP/2 only) over HTTP/1.1 -> 415.
# - server streaming (runtime.invoke_stream): Connect and gRPC-Web frames as produced,
#   end-of-stream with the error after some messages; a client that leaves closes the
#   runtime's stream; a runtime without invoke_stream -> unimplemented.
# - bad input: wrong content type -> 415; oversized body -> resource_exhausted and the
#   runtime never called; an oversized response (unary, or one message of a stream) ->
#   resource_exhausted; unknown service / method -> 404 unimplemented naming what
#   exists; client and bidi streaming -> unimplemented; a header that is not UTF-8 ->
#   invalid_argument. The server serves on after each.
# - metadata: the shared header rule (as gRPC's): protocol, framing (x-grpc-web) and
#   secret-looking headers dropped, allow_headers lifts the secret rule.
# - CORS: off by default; allowed origins get preflight answers and response headers;
#   other origins get none (403 on preflight); "*" allows any.
# - routing follows deploys and undeploys without a restart.
# - stop: in-flight calls finish within grace; then the port is closed. Calls that outlast
#   the grace end with unavailable (503; a stream's end-of-stream error after its
#   messages), not a cut connection or a logged traceback.

from __future__ import annotations

import asyncio
import base64
import gzip
import http.client
import json
import socket
import struct
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pluggy
import pytest
from google.protobuf import any_pb2, message_factory

import okra_plugins.transport_connect as connect_plugin
from okra_core import hookspecs
from okra_core.descriptors import load_descriptor_set, service_schema
from okra_core.errors import ConfigError
from okra_core.plugins import Registry
from okra_core.status import RpcError, StatusCode
from okra_core.transport import Transport
from okra_plugins.transport_connect._transport import ConnectTransport
from support import FIXTURES_DIR, compile_protos

ECHO = "connecttest.v1.Echo"
SAY = f"/{ECHO}/Say"


# -- the fake runtime -----------------------------------------------------------------


class Call:
    def __init__(self, service, method, payload, metadata, timeout):
        self.service, self.method, self.payload = service, method, payload
        self.metadata, self.timeout = list(metadata), timeout


class FakeRuntime:
    """The part of okra_core.runtime.Runtime a transport uses, routing to Python."""

    def __init__(self, *, streaming: bool = True):
        self._schemas = {}
        self._handlers: dict[tuple[str, str], Callable] = {}
        self._listeners = []
        self.calls: list[Call] = []
        if streaming:
            self.invoke_stream = self._invoke_stream

    def deploy(self, descriptor_set: bytes, service: str, handlers: dict[str, Callable]):
        pool = load_descriptor_set(descriptor_set)
        self._schemas[service] = service_schema(pool, descriptor_set, service)
        self._handlers.update({(service, method): handler for method, handler in handlers.items()})
        for listener in list(self._listeners):
            listener("deployed", service)
        return self._schemas[service]

    def undeploy(self, service: str):
        del self._schemas[service]
        for listener in list(self._listeners):
            listener("undeployed", service)

    def services(self):
        return sorted(self._schemas)

    def schema(self, service):
        return self._schemas.get(service)

    def subscribe(self, listener):
        self._listeners.append(listener)

    def unsubscribe(self, listener):
        self._listeners.remove(listener)

    async def invoke(self, service, method, payload, *, metadata=(), timeout=None) -> bytes:
        call = Call(service, method, payload, metadata, timeout)
        self.calls.append(call)
        handler = self._handlers.get((service, method))
        if handler is None:
            raise RpcError(StatusCode.UNIMPLEMENTED, f"{service}/{method} not deployed")
        return await handler(call)

    def _invoke_stream(self, service, method, payload, *, metadata=(), timeout=None) -> AsyncIterator[bytes]:
        call = Call(service, method, payload, metadata, timeout)
        self.calls.append(call)
        return self._handlers[(service, method)](call)


# -- fixtures ---------------------------------------------------------------------------


@pytest.fixture(scope="session")
def echo_set(tmp_path_factory) -> bytes:
    return compile_protos(
        tmp_path_factory.mktemp("connect"), ["connecttest/v1/echo.proto"], include=[FIXTURES_DIR / "connect"]
    )


@pytest.fixture(scope="session")
def types(echo_set):
    pool = load_descriptor_set(echo_set)
    return lambda name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"connecttest.v1.{name}"))


def echo_handlers(types) -> dict[str, Callable]:
    """Say/Get: text and count back, with the metadata the call received."""
    SayRequest, SayResponse = types("SayRequest"), types("SayResponse")

    async def say(call: Call) -> bytes:
        request = SayRequest.FromString(call.payload)
        return SayResponse(
            text=request.text,
            count=request.repeat_count,
            big_number=request.big_number,
            metadata=[f"{k}={v}" for k, v in call.metadata],
        ).SerializeToString()

    async def watch(call: Call) -> AsyncIterator[bytes]:
        request = SayRequest.FromString(call.payload)
        for i in range(request.repeat_count):
            yield SayResponse(text=request.text, count=i).SerializeToString()
        if request.text == "fail":
            raise RpcError(StatusCode.ABORTED, "stopped after the messages")

    return {"Say": say, "Get": say, "Watch": watch}


@pytest.fixture
def runtime(echo_set, types) -> FakeRuntime:
    runtime = FakeRuntime()
    runtime.deploy(echo_set, ECHO, echo_handlers(types))
    return runtime


class Server:
    def __init__(self, transport: ConnectTransport, runtime: FakeRuntime, port: int):
        self.transport, self.runtime, self.port = transport, runtime, port

    async def request(self, method: str, path: str, body: bytes = b"", headers: dict | None = None) -> Response:
        return await asyncio.to_thread(_request, self.port, method, path, body, headers or {})

    async def post(self, path: str, body: bytes = b"", content_type: str = "application/proto", **headers) -> Response:
        return await self.request("POST", path, body, {"Content-Type": content_type, **_headers(headers)})

    async def json(self, path: str, message: dict | str, **headers) -> Response:
        body = message if isinstance(message, str) else json.dumps(message)
        return await self.post(path, body.encode(), "application/json", **headers)


@pytest.fixture
async def start():
    started: list[ConnectTransport] = []

    async def start(runtime: FakeRuntime, **options) -> Server:
        transport = ConnectTransport(**options)
        _, port = await transport.start(runtime, "127.0.0.1", 0)
        started.append(transport)
        return Server(transport, runtime, port)

    yield start
    for transport in started:
        await transport.stop(0.5)


@pytest.fixture
async def server(start, runtime) -> Server:
    return await start(runtime)


# -- HTTP -------------------------------------------------------------------------------


class Response:
    def __init__(self, status: int, headers: list[tuple[str, str]], body: bytes):
        self.status, self.headers, self.body = status, headers, body

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)

    def json(self):
        return json.loads(self.body)

    def error(self) -> tuple[str, str]:
        data = self.json()
        return data["code"], data.get("message", "")


def _headers(kwargs: dict) -> dict:
    return {key.replace("_", "-"): value for key, value in kwargs.items()}


def _request(port, method, path, body, headers) -> Response:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request(method, path, body=body or None, headers=headers)
        response = connection.getresponse()
        return Response(response.status, response.getheaders(), response.read())
    finally:
        connection.close()


def envelope(payload: bytes, flags: int = 0) -> bytes:
    return struct.pack(">BI", flags, len(payload)) + payload


def frames(body: bytes) -> list[tuple[int, bytes]]:
    out = []
    while body:
        flags, length = struct.unpack(">BI", body[:5])
        out.append((flags, body[5 : 5 + length]))
        body = body[5 + length :]
    return out


def grpc_web_trailers(payload: bytes) -> dict[str, str]:
    lines = payload.decode().strip().split("\r\n")
    return {key.strip().lower(): value.strip() for key, _, value in (line.partition(":") for line in lines)}


async def assert_still_serving(server: Server, types) -> None:
    response = await server.post(SAY, types("SayRequest")(text="still here").SerializeToString())
    assert response.status == 200, response.body
    assert types("SayResponse").FromString(response.body).text == "still here"


# -- plugin and options ---------------------------------------------------------------


def test_connect_transport_is_registered_through_the_hook():
    pm = pluggy.PluginManager("okra")
    pm.add_hookspecs(hookspecs)
    pm.register(connect_plugin, name="okra_plugins.transport_connect")
    registry = Registry(pm)
    transport = registry.transport("connect", max_body_size="1MiB")
    assert isinstance(transport, Transport)
    assert transport.name == "connect"
    assert transport.max_body_size == 1024 * 1024


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"max_body_size": "lots"}, "max_body_size 'lots' is not a size"),
        ({"max_body_size": 0}, "max_body_size 0 is not a size"),
        ({"max_body_size": True}, "max_body_size True is not a size"),
        ({"cors_origins": ["app.example.com"]}, "CORS origin 'app.example.com' is not an origin"),
        ({"cors_origins": "https://a.example.com/path"}, "is not an origin"),
        ({"cors_max_age": -1}, "cors_max_age -1 is not a number of seconds"),
    ],
)
def test_bad_options_are_config_errors(options, message):
    with pytest.raises(ConfigError, match=message):
        ConnectTransport(**options)


def test_options_accept_sizes_and_comma_separated_lists():
    transport = ConnectTransport(
        max_body_size="512KiB",
        allow_headers="Authorization, x-api-key",
        cors_origins="https://App.example.com, http://localhost:5173/",
        cors_headers="X-Request-Id",
    )
    assert transport.max_body_size == 512 * 1024
    assert transport.allow_headers == {"authorization", "x-api-key"}
    assert transport.cors_origins == ("https://app.example.com", "http://localhost:5173")
    assert transport.cors_headers == ("x-request-id",)


@pytest.mark.parametrize("options", [{"no_such_option": 1}, {"http": "carrier-pigeon"}])
def test_bad_server_options_are_config_errors_before_start(options):
    with pytest.raises(ConfigError, match="bad server_options"):
        ConnectTransport(server_options=options)


async def test_port_in_use_is_a_config_error(server, runtime):
    other = ConnectTransport()
    with pytest.raises(ConfigError, match=rf"cannot listen for HTTP on 127.0.0.1:{server.port}: .*pick another"):
        await other.start(runtime, "127.0.0.1", server.port)


async def test_port_zero_picks_a_free_port(server):
    assert server.port > 0
    with socket.create_connection(("127.0.0.1", server.port), timeout=5):
        pass


# -- Connect unary ----------------------------------------------------------------------


async def test_binary_request_and_response_bytes_pass_through_untouched(start, echo_set):
    runtime = FakeRuntime()
    # Bytes no protobuf library would produce (unknown field 99): they must survive as-is.
    request = b"\x0a\x02hi" + b"\x98\x06\x01"
    response = b"\x0a\x03out" + b"\xa0\x06\x02"

    async def say(call):
        return response

    runtime.deploy(echo_set, ECHO, {"Say": say})
    server = await start(runtime)
    reply = await server.post(SAY, request)
    assert reply.status == 200, reply.body
    assert reply.header("content-type") == "application/proto"
    assert reply.body == response
    assert runtime.calls[0].payload == request
    assert (runtime.calls[0].service, runtime.calls[0].method) == (ECHO, "Say")


async def test_json_request_is_transcoded_to_binary_with_the_service_types(server, types):
    SayRequest = types("SayRequest")
    note = types("Note")(body="attached")
    attachment = any_pb2.Any()
    attachment.Pack(note)
    response = await server.json(
        SAY,
        {
            "text": "héllo",
            "repeat_count": 3,  # the proto name is accepted too
            "bigNumber": "9007199254740993",  # beyond a double's precision
            "blob": base64.b64encode(b"\x00\xff").decode(),
            "mood": "MOOD_GRUMPY",
            "scores": {"ada": 3},
            "groupId": "18446744073709551615",
            "sentAt": "2024-05-06T07:08:09.5Z",
            "wait": "1.5s",
            "extra": {"a": [1, "two", None, True]},
            "attachment": {"@type": "type.googleapis.com/connecttest.v1.Note", "body": "attached"},
            "nickname": "addy",
        },
    )
    assert response.status == 200, response.body
    sent = SayRequest.FromString(server.runtime.calls[0].payload)
    assert sent.text == "héllo" and sent.repeat_count == 3
    assert sent.big_number == 9007199254740993
    assert sent.blob == b"\x00\xff"
    assert sent.mood == 2
    assert dict(sent.scores) == {"ada": 3}
    assert sent.WhichOneof("target") == "group_id" and sent.group_id == 2**64 - 1
    assert (sent.sent_at.seconds, sent.sent_at.nanos) == (1714979289, 500_000_000)
    assert (sent.wait.seconds, sent.wait.nanos) == (1, 500_000_000)
    assert list(sent.extra["a"]) == [1, "two", None, True]
    assert sent.attachment.type_url == attachment.type_url and sent.attachment.value == attachment.value
    assert sent.nickname.value == "addy"


async def test_json_response_uses_the_proto3_json_mapping(start, echo_set, types):
    runtime = FakeRuntime()
    SayResponse = types("SayResponse")

    async def say(call):
        reply = SayResponse(text="out", big_number=-(2**62), metadata=["a"])
        reply.sent_at.FromJsonString("2024-05-06T07:08:09Z")
        return reply.SerializeToString()

    runtime.deploy(echo_set, ECHO, {"Say": say})
    server = await start(runtime)
    response = await server.json(SAY, {})
    assert response.status == 200, response.body
    assert response.header("content-type") == "application/json"
    # lowerCamelCase names, int64 as a string, Timestamp as RFC 3339, `count` (0) omitted
    assert response.json() == {
        "text": "out",
        "metadata": ["a"],
        "bigNumber": str(-(2**62)),
        "sentAt": "2024-05-06T07:08:09Z",
    }


async def test_unknown_json_fields_are_ignored_by_default(server, types):
    response = await server.json(SAY, {"text": "hi", "fieldFromTheFuture": 1})
    assert response.status == 200, response.body
    assert response.json()["text"] == "hi"


async def test_unknown_json_fields_are_rejected_when_configured(start, runtime):
    server = await start(runtime, json_discard_unknown=False)
    response = await server.json(SAY, {"text": "hi", "nam": 1})
    assert response.status == 400
    code, message = response.error()
    assert code == "invalid_argument"
    assert "connecttest.v1.SayRequest" in message and "nam" in message
    assert runtime.calls == []


@pytest.mark.parametrize(
    ("body", "why"),
    [
        ('{"text": "unterminated', "Failed to load JSON"),
        ('{"repeatCount": "many"}', "repeatCount"),
        ('{"mood": [1]}', "mood"),
        ("[1, 2]", "expected a JSON object"),
        ('"text"', "expected a JSON object"),
        ("42", "expected a JSON object"),
        ("null", "expected a JSON object"),
        ("", "expected a JSON object"),
    ],
)
async def test_malformed_json_is_invalid_argument(server, types, body, why):
    response = await server.json(SAY, body)
    assert response.status == 400
    code, message = response.error()
    assert code == "invalid_argument"
    assert message.startswith("request JSON does not fit connecttest.v1.SayRequest")
    assert why in message
    assert server.runtime.calls == []
    await assert_still_serving(server, types)


async def test_json_that_is_not_utf8_is_invalid_argument(server):
    response = await server.post(SAY, b'{"text": "\xff"}', "application/json")
    assert response.status == 400
    assert response.error()[0] == "invalid_argument"


# -- errors -----------------------------------------------------------------------------

# The Connect protocol's code -> HTTP status table.
HTTP_STATUS = {
    StatusCode.CANCELLED: ("canceled", 499),
    StatusCode.UNKNOWN: ("unknown", 500),
    StatusCode.INVALID_ARGUMENT: ("invalid_argument", 400),
    StatusCode.DEADLINE_EXCEEDED: ("deadline_exceeded", 504),
    StatusCode.NOT_FOUND: ("not_found", 404),
    StatusCode.ALREADY_EXISTS: ("already_exists", 409),
    StatusCode.PERMISSION_DENIED: ("permission_denied", 403),
    StatusCode.RESOURCE_EXHAUSTED: ("resource_exhausted", 429),
    StatusCode.FAILED_PRECONDITION: ("failed_precondition", 400),
    StatusCode.ABORTED: ("aborted", 409),
    StatusCode.OUT_OF_RANGE: ("out_of_range", 400),
    StatusCode.UNIMPLEMENTED: ("unimplemented", 501),
    StatusCode.INTERNAL: ("internal", 500),
    StatusCode.UNAVAILABLE: ("unavailable", 503),
    StatusCode.DATA_LOSS: ("data_loss", 500),
    StatusCode.UNAUTHENTICATED: ("unauthenticated", 401),
}


@pytest.mark.parametrize("code", sorted(HTTP_STATUS), ids=lambda code: code.name)
async def test_each_error_code_gets_its_connect_code_and_http_status(start, echo_set, code):
    runtime = FakeRuntime()

    async def fail(call):
        raise RpcError(code, f"failed with {code.name} ✗")

    runtime.deploy(echo_set, ECHO, {"Say": fail})
    server = await start(runtime)
    for response in (await server.post(SAY), await server.json(SAY, {})):
        assert response.header("content-type") == "application/json"
        assert response.status == HTTP_STATUS[code][1]
        assert response.error() == (HTTP_STATUS[code][0], f"failed with {code.name} ✗")


async def test_unexpected_exception_is_internal_without_its_details(start, echo_set, caplog):
    runtime = FakeRuntime()

    async def broken(call):
        raise ValueError("secret detail")

    runtime.deploy(echo_set, ECHO, {"Say": broken})
    server = await start(runtime)
    response = await server.post(SAY)
    assert response.status == 500
    assert response.error() == ("internal", "internal error; see the server log")
    assert "secret detail" in caplog.text


# -- GET --------------------------------------------------------------------------------


async def test_no_side_effects_method_answers_get_with_json(server):
    query = urllib.parse.urlencode({"connect": "v1", "encoding": "json", "message": '{"text": "via get"}'})
    response = await server.request("GET", f"/{ECHO}/Get?{query}")
    assert response.status == 200, response.body
    assert response.json()["text"] == "via get"
    assert server.runtime.calls[0].method == "Get"


async def test_no_side_effects_method_answers_get_with_base64_binary(server, types):
    message = base64.urlsafe_b64encode(types("SayRequest")(text="b64", repeat_count=2).SerializeToString())
    query = urllib.parse.urlencode({"encoding": "proto", "base64": "1", "message": message.rstrip(b"=")})
    response = await server.request("GET", f"/{ECHO}/Get?{query}")
    assert response.status == 200, response.body
    reply = types("SayResponse").FromString(response.body)
    assert (reply.text, reply.count) == ("b64", 2)


@pytest.mark.parametrize("message", ["!!!", "a", "YW*x", "YWJj===="])
async def test_get_with_a_message_that_is_not_base64_is_invalid_argument(server, types, message):
    query = urllib.parse.urlencode({"encoding": "proto", "base64": "1", "message": message})
    response = await server.request("GET", f"/{ECHO}/Get?{query}")
    assert response.status == 400, response.body
    code, text = response.error()
    assert code == "invalid_argument" and "not valid base64" in text
    assert server.runtime.calls == []
    await assert_still_serving(server, types)


async def test_get_is_refused_for_methods_with_side_effects(server, types):
    query = urllib.parse.urlencode({"encoding": "json", "message": "{}"})
    response = await server.request("GET", f"{SAY}?{query}")
    assert response.status == 405
    assert response.header("allow") == "POST"
    assert server.runtime.calls == []
    await assert_still_serving(server, types)


# -- deadlines --------------------------------------------------------------------------


async def test_connect_timeout_reaches_the_runtime_as_the_call_timeout(server):
    response = await server.json(SAY, {}, connect_timeout_ms="1500")
    assert response.status == 200
    assert 1.0 < server.runtime.calls[0].timeout <= 1.5


async def test_no_timeout_header_leaves_the_runtime_default(server):
    await server.json(SAY, {})
    assert server.runtime.calls[0].timeout is None


async def test_call_that_outlives_its_deadline_is_deadline_exceeded(start, echo_set, types):
    runtime = FakeRuntime()
    handlers = echo_handlers(types)

    async def slow(call):
        await asyncio.sleep(5)
        return b""

    runtime.deploy(echo_set, ECHO, {**handlers, "Get": slow})
    server = await start(runtime)
    started = asyncio.get_running_loop().time()
    response = await server.json(f"/{ECHO}/Get", {}, connect_timeout_ms="100")
    assert asyncio.get_running_loop().time() - started < 3
    assert response.status == 504
    assert response.error()[0] == "deadline_exceeded"
    await assert_still_serving(server, types)


async def test_malformed_timeout_is_invalid_argument(server):
    response = await server.json(SAY, {}, connect_timeout_ms="soon")
    assert response.status == 400
    assert response.error()[0] == "invalid_argument"
    assert server.runtime.calls == []


# -- compression ------------------------------------------------------------------------


async def test_gzip_request_is_inflated_and_gzip_response_sent_when_accepted(server, types):
    request = types("SayRequest")(text="zipped " * 20).SerializeToString()
    response = await server.post(SAY, gzip.compress(request), content_encoding="gzip", accept_encoding="gzip")
    assert response.status == 200, response.body
    assert server.runtime.calls[0].payload == request
    assert response.header("content-encoding") == "gzip"
    assert types("SayResponse").FromString(gzip.decompress(response.body)).text == "zipped " * 20


async def test_unknown_content_encoding_is_unimplemented(server, types):
    response = await server.post(SAY, b"x", content_encoding="snappy")
    assert response.status == 501
    code, message = response.error()
    assert code == "unimplemented" and "snappy" in message and "gzip" in message
    await assert_still_serving(server, types)


async def test_gzip_bomb_beyond_the_limit_is_resource_exhausted(start, runtime, types):
    server = await start(runtime, max_body_size="64KiB")
    bomb = gzip.compress(b"\x0a\x80\x80\x10" + b"a" * (256 * 1024))  # 1 KiB on the wire
    response = await server.post(SAY, bomb, content_encoding="gzip")
    assert response.status == 429
    assert response.error()[0] == "resource_exhausted"
    assert runtime.calls == []
    await assert_still_serving(server, types)


# -- gRPC-Web ---------------------------------------------------------------------------


async def test_grpc_web_binary_unary_call(server, types):
    request = types("SayRequest")(text="web", repeat_count=4).SerializeToString()
    response = await server.post(SAY, envelope(request), "application/grpc-web+proto", x_grpc_web="1")
    assert response.status == 200
    assert response.header("content-type") == "application/grpc-web+proto"
    (data_flags, data), (trailer_flags, trailers) = frames(response.body)
    assert data_flags == 0 and trailer_flags == 0x80
    reply = types("SayResponse").FromString(data)
    assert (reply.text, reply.count) == ("web", 4)
    assert grpc_web_trailers(trailers)["grpc-status"] == "0"
    assert server.runtime.calls[0].payload == request


async def test_grpc_web_json_unary_call(server):
    response = await server.post(SAY, envelope(b'{"text": "web json"}'), "application/grpc-web+json")
    assert response.status == 200
    assert response.header("content-type") == "application/grpc-web+json"
    (_, data), (_, trailers) = frames(response.body)
    assert json.loads(data)["text"] == "web json"
    assert grpc_web_trailers(trailers)["grpc-status"] == "0"


async def test_grpc_web_error_carries_the_grpc_status_and_message(start, echo_set):
    runtime = FakeRuntime()

    async def fail(call):
        raise RpcError(StatusCode.PERMISSION_DENIED, "not you: ünïcode")

    runtime.deploy(echo_set, ECHO, {"Say": fail})
    server = await start(runtime)
    response = await server.post(SAY, envelope(b""), "application/grpc-web")
    assert response.status == 200
    status = response.header("grpc-status")
    message = response.header("grpc-message")
    if status is None:  # not trailers-only: the status is in the trailer frame
        ((_, trailers),) = frames(response.body)
        status, message = grpc_web_trailers(trailers)["grpc-status"], grpc_web_trailers(trailers)["grpc-message"]
    assert status == str(StatusCode.PERMISSION_DENIED.value)
    assert urllib.parse.unquote(message) == "not you: ünïcode"


async def test_grpc_web_unknown_method_is_unimplemented(server, types):
    response = await server.post(f"/{ECHO}/Nope", envelope(b""), "application/grpc-web+proto")
    assert response.status == 200
    assert response.header("grpc-status") == "12"
    assert "has no method 'Nope'" in urllib.parse.unquote(response.header("grpc-message"))
    await assert_still_serving(server, types)


async def test_grpc_over_http1_is_refused_with_415(server):
    response = await server.post(SAY, envelope(b""), "application/grpc+proto", te="trailers")
    assert response.status == 415
    code, message = response.error()
    assert code == "unimplemented" and "gRPC port" in message
    assert server.runtime.calls == []


# -- server streaming ---------------------------------------------------------------------


async def test_connect_server_stream_sends_each_message_then_end_of_stream(server, types):
    request = types("SayRequest")(text="tick", repeat_count=3).SerializeToString()
    response = await server.post(f"/{ECHO}/Watch", envelope(request), "application/connect+proto")
    assert response.status == 200
    assert response.header("content-type") == "application/connect+proto"
    *messages, (end_flags, end) = frames(response.body)
    assert [types("SayResponse").FromString(m).count for _, m in messages] == [0, 1, 2]
    assert end_flags == 0x02 and json.loads(end) == {}


@pytest.mark.parametrize("content_type", ["application/json", "application/proto", None])
async def test_server_stream_called_with_a_unary_content_type_says_what_to_send(server, types, content_type):
    headers = {} if content_type is None else {"Content-Type": content_type}
    response = await server.request("POST", f"/{ECHO}/Watch", b"{}", headers)
    assert response.status == 400  # the status that goes with invalid_argument
    code, message = response.error()
    assert code == "invalid_argument"
    assert "streams its responses" in message and "application/connect+json" in message
    await assert_still_serving(server, types)


async def test_connect_server_stream_in_json(server):
    response = await server.post(
        f"/{ECHO}/Watch", envelope(b'{"text": "j", "repeatCount": 2}'), "application/connect+json"
    )
    *messages, (_, end) = frames(response.body)
    assert [json.loads(m) for _, m in messages] == [{"text": "j"}, {"text": "j", "count": 1}]
    assert json.loads(end) == {}


async def test_stream_error_after_messages_is_in_the_end_of_stream(server, types):
    request = types("SayRequest")(text="fail", repeat_count=2).SerializeToString()
    response = await server.post(f"/{ECHO}/Watch", envelope(request), "application/connect+proto")
    assert response.status == 200
    *messages, (end_flags, end) = frames(response.body)
    assert len(messages) == 2 and end_flags == 0x02
    assert json.loads(end)["error"] == {"code": "aborted", "message": "stopped after the messages"}
    await assert_still_serving(server, types)


async def test_grpc_web_server_stream(server, types):
    request = types("SayRequest")(text="w", repeat_count=2).SerializeToString()
    response = await server.post(f"/{ECHO}/Watch", envelope(request), "application/grpc-web+proto")
    *messages, (trailer_flags, trailers) = frames(response.body)
    assert [types("SayResponse").FromString(m).count for _, m in messages] == [0, 1]
    assert trailer_flags == 0x80 and grpc_web_trailers(trailers)["grpc-status"] == "0"


async def test_client_that_leaves_mid_stream_closes_the_runtime_stream(start, echo_set, types):
    runtime = FakeRuntime()
    closed = asyncio.Event()

    async def endless(call):
        try:
            while True:
                yield types("SayResponse")(text="more").SerializeToString()
                await asyncio.sleep(0.01)
        finally:
            closed.set()

    runtime.deploy(echo_set, ECHO, {"Watch": endless, **{k: v for k, v in echo_handlers(types).items() if k != "Watch"}})
    server = await start(runtime)

    def read_a_little_then_leave():
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        connection.request("POST", f"/{ECHO}/Watch", body=envelope(b""),
                           headers={"Content-Type": "application/connect+proto"})
        response = connection.getresponse()
        first = response.read(5)
        connection.sock.shutdown(socket.SHUT_RDWR)
        connection.close()
        return first

    assert (await asyncio.to_thread(read_a_little_then_leave))[0] == 0
    await asyncio.wait_for(closed.wait(), 5)
    await assert_still_serving(server, types)


async def test_streaming_method_without_runtime_streaming_is_unimplemented(start, echo_set, types):
    runtime = FakeRuntime(streaming=False)
    runtime.deploy(echo_set, ECHO, echo_handlers(types))
    server = await start(runtime)
    response = await server.post(f"/{ECHO}/Watch", envelope(b""), "application/connect+proto")
    assert response.status == 501
    code, message = response.error()
    assert code == "unimplemented" and "streaming" in message


# -- bad input --------------------------------------------------------------------------


@pytest.mark.parametrize("content_type", ["text/plain", "application/xml", "application/connect+proto"])
async def test_wrong_content_type_is_415(server, types, content_type):
    response = await server.post(SAY, b"{}", content_type)
    assert response.status == 415
    assert "application/proto" in (response.header("accept-post") or "")
    assert server.runtime.calls == []
    await assert_still_serving(server, types)


async def test_oversized_body_is_resource_exhausted_and_never_reaches_the_runtime(start, runtime, types):
    server = await start(runtime, max_body_size=1024)
    big = types("SayRequest")(text="x" * 2000).SerializeToString()
    for response in (
        await server.post(SAY, big),
        await server.json(SAY, {"text": "x" * 2000}),
        await server.post(f"/{ECHO}/Watch", envelope(big), "application/connect+proto"),
    ):
        if response.header("content-type") == "application/connect+proto":
            ((_, end),) = frames(response.body)
            assert json.loads(end)["error"]["code"] == "resource_exhausted"
        else:
            assert response.status == 429
            assert response.error()[0] == "resource_exhausted"
    assert runtime.calls == []
    await assert_still_serving(server, types)


async def test_oversized_response_is_resource_exhausted(start, echo_set, types):
    runtime = FakeRuntime()
    big = types("SayResponse")(text="y" * 2000).SerializeToString()

    async def say(call):
        return big

    async def watch(call):
        yield types("SayResponse")(text="small").SerializeToString()
        yield big

    runtime.deploy(echo_set, ECHO, {"Say": say, "Watch": watch})
    server = await start(runtime, max_body_size=1024)
    response = await server.post(SAY)
    assert response.status == 429
    code, message = response.error()
    assert code == "resource_exhausted" and f"({len(big)} bytes)" in message and "(1024 bytes)" in message
    response = await server.post(f"/{ECHO}/Watch", envelope(b""), "application/connect+proto")
    (_, small), (_, end) = frames(response.body)
    assert types("SayResponse").FromString(small).text == "small"
    assert json.loads(end)["error"]["code"] == "resource_exhausted"


async def test_unknown_service_is_unimplemented_404_naming_what_is_deployed(server, types):
    response = await server.json("/greeter.v2.Greeter/SayHello", {})
    assert response.status == 404
    assert response.error() == ("unimplemented", f"unknown service 'greeter.v2.Greeter' (deployed: {ECHO})")
    await assert_still_serving(server, types)


async def test_unknown_method_is_unimplemented_404_naming_the_methods(server, types):
    response = await server.post(f"/{ECHO}/Shout")
    assert response.status == 404
    assert response.error() == (
        "unimplemented",
        f"service {ECHO} has no method 'Shout' (methods: Say, Get, Watch, Upload, Chat)",
    )
    for path in ("/", "/nothing", f"/{ECHO}/Say/extra"):
        assert (await server.post(path)).status == 404
    await assert_still_serving(server, types)


async def test_header_that_is_not_utf8_is_invalid_argument(server, types):
    response = await server.json(SAY, {}, x_name=b"\xff\xfe")
    assert response.status == 400
    assert response.error() == ("invalid_argument", "request header 'x-name' is not valid UTF-8")
    assert server.runtime.calls == []
    response = await server.json(SAY, {"text": "ok"}, x_name="é".encode())  # UTF-8 is fine
    assert response.status == 200
    assert ("x-name", "é") in server.runtime.calls[0].metadata
    await assert_still_serving(server, types)


@pytest.mark.parametrize("method", ["Upload", "Chat"])
async def test_client_and_bidi_streaming_methods_are_unimplemented(server, types, method):
    response = await server.post(f"/{ECHO}/{method}", envelope(b""), "application/connect+proto")
    assert response.status == 501
    code, message = response.error()
    assert code == "unimplemented" and "streams requests" in message
    await assert_still_serving(server, types)


# -- metadata ---------------------------------------------------------------------------


async def test_headers_reach_the_runtime_through_the_shared_metadata_rule(server):
    response = await server.json(
        SAY,
        {},
        x_request_id="42",
        x_tenant="acme",
        authorization="Bearer secret",
        x_auth_token="secret",
        cookie="a=b",
        connect_protocol_version="1",
        x_grpc_web="1",
        trace_bin="AAA",
    )
    assert response.status == 200
    forwarded = dict(server.runtime.calls[0].metadata)
    assert forwarded["x-request-id"] == "42" and forwarded["x-tenant"] == "acme"
    for dropped in ("authorization", "x-auth-token", "cookie", "connect-protocol-version", "x-grpc-web",
                    "trace-bin", "content-type", "content-length", "host"):
        assert dropped not in forwarded


async def test_allowed_header_reaches_the_runtime(start, runtime):
    server = await start(runtime, allow_headers=["authorization"])
    await server.json(SAY, {}, authorization="Bearer t")
    assert ("authorization", "Bearer t") in server.runtime.calls[0].metadata


# -- CORS -------------------------------------------------------------------------------


def preflight_headers(origin: str) -> dict:
    return {
        "Origin": origin,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type,connect-protocol-version",
    }


async def test_cors_is_off_by_default(server):
    response = await server.request("OPTIONS", SAY, headers=preflight_headers("https://app.example.com"))
    assert response.header("access-control-allow-origin") is None
    response = await server.json(SAY, {}, origin="https://app.example.com")
    assert response.status == 200
    assert response.header("access-control-allow-origin") is None


async def test_cors_answers_allowed_origins(start, runtime):
    server = await start(runtime, cors_origins=["https://app.example.com"], cors_headers=["x-request-id"])
    response = await server.request("OPTIONS", SAY, headers=preflight_headers("https://app.example.com"))
    assert response.status == 204
    assert response.header("access-control-allow-origin") == "https://app.example.com"
    assert "POST" in response.header("access-control-allow-methods")
    allowed = response.header("access-control-allow-headers")
    for header in ("content-type", "connect-protocol-version", "connect-timeout-ms", "x-grpc-web", "x-request-id"):
        assert header in allowed
    assert response.header("access-control-max-age") == "7200"

    response = await server.json(SAY, {"text": "cors"}, origin="https://app.example.com")
    assert response.status == 200
    assert response.header("access-control-allow-origin") == "https://app.example.com"
    assert "grpc-status" in response.header("access-control-expose-headers")

    error = await server.json("/no.Such/Method", {}, origin="https://app.example.com")
    assert error.status == 404
    assert error.header("access-control-allow-origin") == "https://app.example.com"


async def test_cors_ignores_other_origins(start, runtime):
    server = await start(runtime, cors_origins="https://app.example.com")
    response = await server.request("OPTIONS", SAY, headers=preflight_headers("https://evil.example.com"))
    assert response.status == 403
    assert response.header("access-control-allow-origin") is None
    response = await server.json(SAY, {}, origin="https://evil.example.com")
    assert response.header("access-control-allow-origin") is None


async def test_cors_star_allows_any_origin(start, runtime):
    server = await start(runtime, cors_origins="*")
    response = await server.request("OPTIONS", SAY, headers=preflight_headers("http://localhost:5173"))
    assert response.status == 204
    assert response.header("access-control-allow-origin") == "http://localhost:5173"


# -- deploys and shutdown -----------------------------------------------------------------


async def test_routing_follows_deploys_and_undeploys_without_a_restart(start, echo_set, types):
    runtime = FakeRuntime()
    server = await start(runtime)
    assert (await server.json(SAY, {})).status == 404
    runtime.deploy(echo_set, ECHO, echo_handlers(types))
    assert (await server.json(SAY, {"text": "now"})).json()["text"] == "now"
    runtime.undeploy(ECHO)
    response = await server.json(SAY, {})
    assert response.status == 404
    assert response.error()[1] == "unknown service 'connecttest.v1.Echo' (deployed: none)"


async def test_stop_lets_in_flight_calls_finish_then_closes_the_port(start, echo_set, types):
    runtime = FakeRuntime()
    entered = asyncio.Event()

    async def slow(call):
        entered.set()
        await asyncio.sleep(0.3)
        return types("SayResponse")(text="finished").SerializeToString()

    runtime.deploy(echo_set, ECHO, {"Say": slow})
    server = await start(runtime)
    in_flight = asyncio.ensure_future(server.post(SAY))
    await entered.wait()
    await server.transport.stop(5)
    response = await in_flight
    assert response.status == 200
    assert types("SayResponse").FromString(response.body).text == "finished"
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", server.port), timeout=2).close()


async def test_calls_that_outlast_the_grace_end_with_unavailable(start, echo_set, types, caplog):
    runtime = FakeRuntime()
    entered = asyncio.Event()

    async def stuck(call):
        entered.set()
        await asyncio.sleep(30)
        return b""

    async def endless(call):
        for i in range(1000):
            yield types("SayResponse")(count=i).SerializeToString()
            entered.set()
            await asyncio.sleep(0.05)

    runtime.deploy(echo_set, ECHO, {"Say": stuck, "Watch": endless})
    server = await start(runtime)
    unary = asyncio.ensure_future(server.json(SAY, {}))
    request = types("SayRequest")(repeat_count=1).SerializeToString()
    stream = asyncio.ensure_future(server.post(f"/{ECHO}/Watch", envelope(request), "application/connect+proto"))
    await entered.wait()
    await asyncio.sleep(0.2)
    started = asyncio.get_running_loop().time()
    await server.transport.stop(0.3)
    assert asyncio.get_running_loop().time() - started < 5

    response = await asyncio.wait_for(unary, 10)
    assert response.status == 503
    assert response.error() == ("unavailable", "the server is shutting down; retry elsewhere or later")
    response = await asyncio.wait_for(stream, 10)
    *messages, (end_flags, end) = frames(response.body)
    assert len(messages) >= 2 and end_flags == 0x02
    assert json.loads(end)["error"]["code"] == "unavailable"
    assert "Exception in ASGI application" not in caplog.text
