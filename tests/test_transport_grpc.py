# The gRPC transport, against a fake runtime: a real grpc.aio server on 127.0.0.1:0, real
# grpcio clients, the real buf CLI, and real descriptor sets compiled from
# tests/fixtures/grpc with grpc_tools.protoc. The runtime is faked (it only has to route
# bytes to Python handlers and report deploys) so these tests need no wasm engine.
#
# Test plan
# - plugin: the "grpc" transport is registered through the hook and is a Transport;
#   options are validated (sizes, port in use).
# - routing: a deployed unary method gets the raw request bytes and its response reaches
#   the client unchanged; unknown service / unknown method -> UNIMPLEMENTED naming what
#   exists; client-streaming methods -> UNIMPLEMENTED at once; deploys, undeploys and
#   redeploys after start are served without a restart.
# - server streaming: each message reaches the client in order as the runtime yields it;
#   an error after some messages reaches the client after them, with its code; the
#   deadline arrives as the time remaining; a client that cancels closes the runtime's
#   stream (so the guest is told); a runtime without invoke_stream -> UNIMPLEMENTED.
# - errors: every RpcError code reaches the client as the same grpc.StatusCode with the
#   same message; an unexpected exception is INTERNAL without its details.
# - deadlines: the client's deadline arrives as the time remaining; no deadline -> None.
# - metadata: protocol, binary and secret-looking headers never reach the guest; an
#   allowed header does.
# - limits: a request over max_message_size -> RESOURCE_EXHAUSTED and the runtime is never
#   called; a response (or a streamed message) over it is RESOURCE_EXHAUSTED naming the
#   sizes, with nothing logged as a crash; reflection answers larger than the limit still
#   reach the client (the limit is for service calls).
# - health: "" and each deployed service SERVING; undeploy -> NOT_SERVING (also seen by a
#   Watch stream); redeploy -> SERVING; unknown -> NOT_FOUND naming it; stop -> NOT_SERVING.
# - reflection (v1 and v1alpha): lists deployed services plus health and reflection,
#   following deploys; resolves services, messages, methods and files with their
#   transitive dependencies; two packages with different files of the same name each get
#   their own; builtin services are described; unknown symbols -> NOT_FOUND.
# - client.call_json: JSON in/out through reflection (defaults printed, JSON names),
#   server streams through call_json_stream (each message; an error after some),
#   metadata and deadline, error codes from the server, bad JSON, unknown fields, bad
#   targets, unknown service/method, nothing listening -> UNAVAILABLE; v1alpha-only
#   servers; schemas from a package when the server has no reflection.
# - buf curl: calls a method over reflection and reports server errors.
# - stop: in-flight calls finish within grace; calls beyond grace are cut; new calls fail.

from __future__ import annotations

import asyncio
import importlib.resources
import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc
import pluggy
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2

import okra_plugins.transport_grpc as transport_plugin
from okra_core import hookspecs
from okra_core.descriptors import load_descriptor_set, service_schema
from okra_core.errors import ConfigError
from okra_core.manifest import Manifest, PoolConfig
from okra_core.package import write_package
from okra_core.plugins import Registry
from okra_core.status import RpcError, StatusCode
from okra_core.transport import Transport
from okra_plugins.transport_grpc._transport import GrpcTransport, parse_size
from okra_plugins.transport_grpc.client import call_json, call_json_stream, list_services

FIXTURES = Path(__file__).parent / "fixtures" / "grpc"
ECHO = "okratest.v1.Echo"
OTHER = "okratest.other.v1.Other"
BUF = shutil.which("buf") or str(Path(sys.executable).parent / "buf")


# -- descriptor sets ------------------------------------------------------------------


def _compile(root: Path, proto: str, out: Path) -> bytes:
    from grpc_tools import protoc

    well_known = importlib.resources.files("grpc_tools") / "_proto"
    args = ["protoc", f"-I{root}", f"-I{well_known}", f"--descriptor_set_out={out}", "--include_imports", proto]
    assert protoc.main(args) == 0, f"protoc failed on {proto}"
    return out.read_bytes()


@pytest.fixture(scope="session")
def echo_set(tmp_path_factory) -> bytes:
    return _compile(FIXTURES / "a", "okratest/v1/echo.proto", tmp_path_factory.mktemp("a") / "echo.pb")


@pytest.fixture(scope="session")
def other_set(tmp_path_factory) -> bytes:
    return _compile(FIXTURES / "b", "okratest/other/v1/other.proto", tmp_path_factory.mktemp("b") / "other.pb")


# -- the fake runtime -------------------------------------------------------------------

Handler = Callable[["Call"], Awaitable[bytes]]


class Call:
    def __init__(self, service, method, payload, metadata, timeout):
        self.service, self.method, self.payload = service, method, payload
        self.metadata, self.timeout = list(metadata), timeout


class FakeRuntime:
    """The part of okra_core.runtime.Runtime a transport uses, routing to Python."""

    def __init__(self):
        self._schemas = {}
        self._handlers: dict[tuple[str, str], Handler] = {}
        self._listeners = []
        self.calls: list[Call] = []
        self.streams_closed = 0

    def deploy(self, descriptor_set: bytes, service: str, handlers: dict[str, Handler]):
        pool = load_descriptor_set(descriptor_set)
        self._schemas[service] = service_schema(pool, descriptor_set, service)
        for method, handler in handlers.items():
            self._handlers[(service, method)] = handler
        for listener in self._listeners:
            listener("deployed", service)
        return self._schemas[service]

    def undeploy(self, service: str):
        del self._schemas[service]
        for listener in self._listeners:
            listener("undeployed", service)

    def services(self):
        return sorted(self._schemas)

    def schema(self, service):
        return self._schemas.get(service)

    def subscribe(self, listener):
        self._listeners.append(listener)

    async def invoke(self, service, method, payload, *, metadata=(), timeout=None):
        call = Call(service, method, payload, metadata, timeout)
        self.calls.append(call)
        if service not in self._schemas:
            raise RpcError(StatusCode.UNIMPLEMENTED, f"service {service} is not deployed")
        return await self._handlers[(service, method)](call)

    async def invoke_stream(self, service, method, payload, *, metadata=(), timeout=None):
        call = Call(service, method, payload, metadata, timeout)
        self.calls.append(call)
        try:
            async for message in self._handlers[(service, method)](call):
                yield message
        finally:
            self.streams_closed += 1


def echo_handlers(schema) -> dict[str, Handler]:
    """Say echoes text (repeated) and the metadata it saw; Fail raises the code asked."""
    say, fail = schema.methods["Say"], schema.methods["Fail"]

    async def say_handler(call: Call) -> bytes:
        request = say.input_class.FromString(call.payload)
        if request.text == "slow":
            await asyncio.sleep(request.repeat_count / 10)
        if request.text == "big":
            return say.output_class(text="x" * request.repeat_count).SerializeToString()
        return say.output_class(
            text=request.text * max(request.repeat_count, 1),
            count=request.repeat_count,
            metadata=[f"{k}={v}" for k, v in call.metadata],
        ).SerializeToString()

    async def fail_handler(call: Call) -> bytes:
        request = fail.input_class.FromString(call.payload)
        if request.code == 999:
            raise KeyError("secret internal detail")
        raise RpcError(StatusCode(request.code), request.message)

    async def watch_handler(call: Call):
        """repeat_count messages "text 1".."text N", 50 ms apart for text "slow";
        text "fail" raises ABORTED after two."""
        request = say.input_class.FromString(call.payload)
        for i in range(1, request.repeat_count + 1):
            if request.text == "fail" and i > 2:
                raise RpcError(StatusCode.ABORTED, "stopped after 2")
            if request.text == "slow" and i > 1:
                await asyncio.sleep(0.05)
            yield say.output_class(text=f"{request.text} {i}", count=i).SerializeToString()

    return {"Say": say_handler, "Fail": fail_handler, "Watch": watch_handler}


class Served:
    def __init__(self, runtime: FakeRuntime, transport: GrpcTransport, port: int, echo_set: bytes):
        self.runtime, self.transport, self.port = runtime, transport, port
        self.address = f"127.0.0.1:{port}"
        self.echo_set = echo_set
        self.channel = grpc.aio.insecure_channel(self.address)

    def deploy_echo(self):
        schema = service_schema(load_descriptor_set(self.echo_set), self.echo_set, ECHO)
        return self.runtime.deploy(self.echo_set, ECHO, echo_handlers(schema))

    def echo_classes(self):
        schema = self.runtime.schema(ECHO)
        return schema.methods["Say"].input_class, schema.methods["Say"].output_class

    def raw(self, path: str):
        return self.channel.unary_unary(path)

    async def say(self, **fields):
        request_class, response_class = self.echo_classes()
        timeout = fields.pop("timeout", None)
        metadata = fields.pop("metadata", None)
        raw = await self.raw(f"/{ECHO}/Say")(
            request_class(**fields).SerializeToString(), timeout=timeout, metadata=metadata
        )
        return response_class.FromString(raw)


async def serve(echo_set: bytes, **options) -> Served:
    runtime = FakeRuntime()
    transport = GrpcTransport(**options)
    host, port = await transport.start(runtime, "127.0.0.1", 0)
    assert host == "127.0.0.1" and port > 0
    return Served(runtime, transport, port, echo_set)


@pytest.fixture
async def served(echo_set):
    s = await serve(echo_set)
    s.deploy_echo()
    yield s
    await s.channel.close()
    await s.transport.stop(0)


async def code_and_details(awaitable) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await awaitable
    return info.value.code(), info.value.details()


# -- plugin and options -------------------------------------------------------------------


def test_grpc_transport_is_registered_through_the_plugin_hook():
    pm = pluggy.PluginManager("okra")
    pm.add_hookspecs(hookspecs)
    pm.register(transport_plugin, name="okra_plugins.transport_grpc")
    transport = Registry(pm).transport("grpc", max_message_size="1MiB")
    assert isinstance(transport, GrpcTransport) and isinstance(transport, Transport)
    assert transport.name == "grpc"
    assert transport.max_message_size == 1024 * 1024


@pytest.mark.parametrize(
    "value, size",
    [(4096, 4096), ("4MiB", 4 * 1024 * 1024), ("512 KiB", 512 * 1024), ("2mb", 2_000_000), ("100", 100)],
)
def test_message_sizes_accept_bytes_and_units(value, size):
    assert parse_size(value) == size


@pytest.mark.parametrize("value", [0, -1, "lots", "4 TiB", 2**31, True, "1.5MiB"])
def test_bad_message_size_is_a_config_error_saying_what_to_write(value):
    with pytest.raises(ConfigError, match="4MiB"):
        GrpcTransport(max_message_size=value)


async def test_port_in_use_is_a_config_error(echo_set):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match=f"127.0.0.1:{port}.*pick another"):
            await GrpcTransport().start(FakeRuntime(), "127.0.0.1", port)


# -- routing -------------------------------------------------------------------------------


async def test_unary_call_passes_raw_bytes_both_ways(served):
    request_class, response_class = served.echo_classes()
    payload = request_class(text="hi", repeat_count=3).SerializeToString()
    raw = await served.raw(f"/{ECHO}/Say")(payload)
    call = served.runtime.calls[-1]
    assert (call.service, call.method, call.payload) == (ECHO, "Say", payload)
    assert response_class.FromString(raw).text == "hihihi"


async def test_unknown_service_is_unimplemented_naming_the_deployed_ones(served):
    code, details = await code_and_details(served.raw("/nope.v1.Nope/Say")(b""))
    assert code == grpc.StatusCode.UNIMPLEMENTED
    assert "nope.v1.Nope" in details and ECHO in details
    assert served.runtime.calls == []


async def test_unknown_method_is_unimplemented_listing_the_methods(served):
    code, details = await code_and_details(served.raw(f"/{ECHO}/Shout")(b""))
    assert code == grpc.StatusCode.UNIMPLEMENTED
    assert "'Shout'" in details and "Say" in details and "Fail" in details


def watch_request(served, text: str, count: int) -> bytes:
    request_class, _ = served.echo_classes()
    return request_class(text=text, repeat_count=count).SerializeToString()


async def read_stream(served, call) -> list[str]:
    _, response_class = served.echo_classes()
    return [response_class.FromString(raw).text async for raw in call]


async def test_server_stream_delivers_every_message_in_order(served):
    call = served.channel.unary_stream(f"/{ECHO}/Watch")(watch_request(served, "tick", 3), timeout=5)
    assert await read_stream(served, call) == ["tick 1", "tick 2", "tick 3"]
    assert await call.code() == grpc.StatusCode.OK
    # grpc rounds the deadline it sends up (its timeout header keeps a few digits), so the
    # server may see a little more than the client asked for.
    assert 0 < served.runtime.calls[-1].timeout <= 5.1


async def test_server_stream_error_arrives_after_the_messages_sent(served):
    call = served.channel.unary_stream(f"/{ECHO}/Watch")(watch_request(served, "fail", 5))
    received = []
    _, response_class = served.echo_classes()
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async for raw in call:
            received.append(response_class.FromString(raw).text)
    assert received == ["fail 1", "fail 2"]
    assert (info.value.code(), info.value.details()) == (grpc.StatusCode.ABORTED, "stopped after 2")


async def test_server_stream_cancelled_by_the_client_closes_the_runtime_stream(served):
    call = served.channel.unary_stream(f"/{ECHO}/Watch")(watch_request(served, "slow", 1000))
    await call.read()
    call.cancel()
    for _ in range(100):
        if served.runtime.streams_closed:
            break
        await asyncio.sleep(0.02)
    assert served.runtime.streams_closed == 1


async def test_client_streaming_method_is_unimplemented_at_once(served):
    call = served.channel.stream_stream(f"/{ECHO}/Upload")()
    code, details = await code_and_details(asyncio.wait_for(call.read(), timeout=5))
    assert code == grpc.StatusCode.UNIMPLEMENTED
    assert "streams requests" in details


async def test_server_streaming_needs_a_runtime_that_streams(echo_set, monkeypatch):
    monkeypatch.delattr(FakeRuntime, "invoke_stream")
    s = await serve(echo_set)
    try:
        s.deploy_echo()
        code, details = await code_and_details(s.channel.unary_stream(f"/{ECHO}/Watch")(b"").read())
        assert code == grpc.StatusCode.UNIMPLEMENTED and "no streaming calls" in details
    finally:
        await s.channel.close()
        await s.transport.stop(0)


async def test_unknown_path_fails_at_once_even_for_a_streaming_client(served):
    call = served.channel.stream_stream("/nope.v1.Nope/Chat")()
    code, _ = await code_and_details(asyncio.wait_for(call.read(), timeout=5))
    assert code == grpc.StatusCode.UNIMPLEMENTED


async def test_deploy_undeploy_and_redeploy_are_served_without_restart(echo_set, other_set):
    s = await serve(echo_set)
    try:
        code, _ = await code_and_details(s.raw(f"/{ECHO}/Say")(b""))
        assert code == grpc.StatusCode.UNIMPLEMENTED

        s.deploy_echo()
        assert (await s.say(text="a")).text == "a"

        s.runtime.undeploy(ECHO)
        code, _ = await code_and_details(s.raw(f"/{ECHO}/Say")(b""))
        assert code == grpc.StatusCode.UNIMPLEMENTED

        # Redeployed with a different Say: the new handler answers, not a cached one.
        schema = service_schema(load_descriptor_set(echo_set), echo_set, ECHO)
        out = schema.methods["Say"].output_class

        async def shout(call):
            return out(text="NEW").SerializeToString()

        s.runtime.deploy(echo_set, ECHO, {"Say": shout})
        assert (await s.say(text="a")).text == "NEW"
    finally:
        await s.channel.close()
        await s.transport.stop(0)


# -- errors --------------------------------------------------------------------------------


async def test_every_rpc_error_code_reaches_the_client_with_its_message(served):
    schema = served.runtime.schema(ECHO)
    fail = schema.methods["Fail"].input_class
    for code in StatusCode:
        if code == StatusCode.OK:
            continue
        message = f"{code.name.lower()} happened: é"
        got, details = await code_and_details(
            served.raw(f"/{ECHO}/Fail")(fail(code=code, message=message).SerializeToString())
        )
        assert got == grpc.StatusCode[code.name], code
        assert details == message


async def test_unexpected_exception_is_internal_without_its_details(served, caplog):
    fail = served.runtime.schema(ECHO).methods["Fail"].input_class
    code, details = await code_and_details(served.raw(f"/{ECHO}/Fail")(fail(code=999).SerializeToString()))
    assert code == grpc.StatusCode.INTERNAL
    assert "secret internal detail" not in details and "server log" in details
    assert "secret internal detail" in caplog.text


# -- deadlines and metadata ----------------------------------------------------------------


async def test_client_deadline_reaches_invoke_as_time_remaining(served):
    await served.say(text="a", timeout=5)
    assert 4.0 < served.runtime.calls[-1].timeout < 5.1  # grpc-timeout is rounded up
    await served.say(text="a")
    assert served.runtime.calls[-1].timeout is None


async def test_call_past_its_deadline_is_deadline_exceeded(served):
    code, _ = await code_and_details(served.say(text="slow", repeat_count=10, timeout=0.2))
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED


async def test_guest_metadata_drops_protocol_binary_and_secret_headers(served):
    metadata = (
        ("x-request-id", "r-1"),
        ("x-tenant", "acme"),
        ("x-tenant", "second"),
        ("authorization", "Bearer secret"),
        ("cookie", "session=1"),
        ("x-api-key", "k"),
        ("x-auth-token", "t"),
        ("trace-bin", b"\x00\x01"),
    )
    response = await served.say(text="a", metadata=metadata)
    seen = served.runtime.calls[-1].metadata
    keys = [k for k, _ in seen]
    assert ("x-request-id", "r-1") in seen
    assert [v for k, v in seen if k == "x-tenant"] == ["acme", "second"]
    assert "user-agent" in keys
    for dropped in ("authorization", "cookie", "x-api-key", "x-auth-token", "trace-bin", "te", "content-type"):
        assert dropped not in keys
    assert not [k for k in keys if k.startswith(("grpc-", ":"))]
    assert "x-request-id=r-1" in response.metadata


async def test_allowed_secret_header_reaches_the_guest(echo_set):
    s = await serve(echo_set, allow_headers="Authorization, x-api-key")
    s.deploy_echo()
    try:
        await s.say(text="a", metadata=(("authorization", "Bearer t"), ("x-api-key", "k"), ("cookie", "c")))
        seen = dict(s.runtime.calls[-1].metadata)
        assert seen["authorization"] == "Bearer t" and seen["x-api-key"] == "k"
        assert "cookie" not in seen
    finally:
        await s.channel.close()
        await s.transport.stop(0)


# -- limits --------------------------------------------------------------------------------


async def test_request_over_max_message_size_is_resource_exhausted(echo_set):
    s = await serve(echo_set, max_message_size=1024)
    s.deploy_echo()
    try:
        assert (await s.say(text="x" * 900)).text == "x" * 900
        calls = len(s.runtime.calls)
        code, _ = await code_and_details(s.say(text="x" * 2000))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert len(s.runtime.calls) == calls  # never reached the runtime
    finally:
        await s.channel.close()
        await s.transport.stop(0)


async def test_response_over_max_message_size_is_resource_exhausted_naming_the_sizes(echo_set, caplog):
    s = await serve(echo_set, max_message_size=1024)
    s.deploy_echo()
    try:
        code, details = await code_and_details(s.say(text="big", repeat_count=4000))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "4003-byte response" in details and "1024" in details, details
        assert (await s.say(text="ok")).text == "ok"  # still serving
        assert "Traceback" not in caplog.text
    finally:
        await s.channel.close()
        await s.transport.stop(0)


async def test_streamed_message_over_max_message_size_ends_the_stream_after_the_others(echo_set):
    s = await serve(echo_set, max_message_size=1024)
    runtime_stream_messages = [b"\x0a\x02ok", b"\x0a\x82\x10" + b"x" * 2050]

    async def watch(call):
        for message in runtime_stream_messages:
            yield message

    s.runtime.deploy(s.echo_set, ECHO, {"Watch": watch})
    try:
        call = s.channel.unary_stream(f"/{ECHO}/Watch")(b"", timeout=5)
        received = []
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for raw in call:
                received.append(raw)
        assert received == [runtime_stream_messages[0]]
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "1024" in info.value.details()
    finally:
        await s.channel.close()
        await s.transport.stop(0)


@pytest.mark.parametrize("version", ["v1", "v1alpha"])
async def test_reflection_answers_beyond_a_small_max_message_size(echo_set, version):
    """The limit is for service calls: reflection must still describe a schema larger
    than it, or clients that learn the schema from the server cannot call anything."""
    s = await serve(echo_set, max_message_size=256)
    s.deploy_echo()
    try:
        response = await reflect(s.channel, version, file_containing_symbol=ECHO)
        assert response.file_descriptor_response.ByteSize() > 256
        assert "okratest/v1/echo.proto" in files_of(response)
    finally:
        await s.channel.close()
        await s.transport.stop(0)


# -- health --------------------------------------------------------------------------------


async def health_status(channel, service: str):
    stub = health_pb2_grpc.HealthStub(channel)
    return (await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)).status


async def test_health_follows_deploys_and_undeploys(echo_set):
    SERVING, NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING
    s = await serve(echo_set)
    try:
        assert await health_status(s.channel, "") == SERVING
        code, details = await code_and_details(health_status(s.channel, ECHO))
        assert code == grpc.StatusCode.NOT_FOUND
        assert details == f"no service {ECHO!r} is known to this server's health service"

        s.deploy_echo()
        await s.transport._health.settle()
        assert await health_status(s.channel, ECHO) == SERVING

        watch = health_pb2_grpc.HealthStub(s.channel).Watch(health_pb2.HealthCheckRequest(service=ECHO))
        assert (await watch.read()).status == SERVING
        s.runtime.undeploy(ECHO)
        assert (await asyncio.wait_for(watch.read(), 5)).status == NOT_SERVING
        assert await health_status(s.channel, ECHO) == NOT_SERVING

        s.deploy_echo()
        assert (await asyncio.wait_for(watch.read(), 5)).status == SERVING
        watch.cancel()
    finally:
        await s.channel.close()
        await s.transport.stop(0)


async def test_services_deployed_before_start_are_serving(echo_set):
    runtime = FakeRuntime()
    schema = service_schema(load_descriptor_set(echo_set), echo_set, ECHO)
    runtime.deploy(echo_set, ECHO, echo_handlers(schema))
    transport = GrpcTransport()
    _, port = await transport.start(runtime, "127.0.0.1", 0)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        assert await health_status(channel, ECHO) == health_pb2.HealthCheckResponse.SERVING
    await transport.stop(0)


# -- stop ----------------------------------------------------------------------------------


async def test_stop_turns_health_not_serving_and_lets_in_flight_calls_finish(echo_set):
    s = await serve(echo_set)
    s.deploy_echo()
    watch = health_pb2_grpc.HealthStub(s.channel).Watch(health_pb2.HealthCheckRequest(service=""))
    assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING
    in_flight = asyncio.ensure_future(s.say(text="slow", repeat_count=3))  # 0.3 s
    while not s.runtime.calls:
        await asyncio.sleep(0.01)
    stopping = asyncio.ensure_future(s.transport.stop(grace=5))
    assert (await asyncio.wait_for(watch.read(), 5)).status == health_pb2.HealthCheckResponse.NOT_SERVING
    assert (await in_flight).text == "slow" * 3
    await stopping
    code, _ = await code_and_details(s.say(text="after", timeout=2))
    assert code == grpc.StatusCode.UNAVAILABLE
    await s.channel.close()


async def test_calls_still_running_after_grace_are_cut(echo_set):
    s = await serve(echo_set)
    s.deploy_echo()
    in_flight = asyncio.ensure_future(s.say(text="slow", repeat_count=100))  # 10 s
    while not s.runtime.calls:
        await asyncio.sleep(0.01)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await s.transport.stop(grace=0.2)
    assert loop.time() - started < 3
    code, _ = await code_and_details(in_flight)
    assert code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
    await s.channel.close()


async def test_stop_is_idempotent_and_events_after_it_are_ignored(served):
    await served.transport.stop(0)
    await served.transport.stop(0)
    served.runtime.undeploy(ECHO)  # the listener must not touch the stopped server


# -- reflection ----------------------------------------------------------------------------

REFLECTION = {
    "v1": "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    "v1alpha": "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
}


async def reflect(channel, version: str, **request):
    stream = channel.stream_stream(
        REFLECTION[version],
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )
    call = stream()
    await call.write(reflection_pb2.ServerReflectionRequest(**request))
    response = await call.read()
    await call.done_writing()
    return response


def files_of(response) -> dict[str, descriptor_pb2.FileDescriptorProto]:
    protos = [descriptor_pb2.FileDescriptorProto.FromString(b) for b in response.file_descriptor_response.file_descriptor_proto]
    return {p.name: p for p in protos}


@pytest.mark.parametrize("version", ["v1", "v1alpha"])
async def test_reflection_lists_deployed_services_as_they_change(served, other_set, version):
    response = await reflect(served.channel, version, list_services="")
    names = [s.name for s in response.list_services_response.service]
    assert names == sorted(
        [ECHO, "grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection"]
    )
    served.runtime.deploy(other_set, OTHER, {})
    served.runtime.undeploy(ECHO)
    response = await reflect(served.channel, version, list_services="")
    names = [s.name for s in response.list_services_response.service]
    assert OTHER in names and ECHO not in names


@pytest.mark.parametrize("version", ["v1", "v1alpha"])
@pytest.mark.parametrize(
    "symbol", [ECHO, "okratest.v1.SayRequest", f"{ECHO}.Say", "okratest.v1.SayResponse.note"]
)
async def test_reflection_resolves_symbols_with_transitive_dependencies(served, version, symbol):
    response = await reflect(served.channel, version, file_containing_symbol=symbol)
    files = files_of(response)
    first = descriptor_pb2.FileDescriptorProto.FromString(response.file_descriptor_response.file_descriptor_proto[0])
    assert first.name == "okratest/v1/echo.proto"
    assert set(files) == {"okratest/v1/echo.proto", "okratest/v1/common.proto", "google/protobuf/timestamp.proto"}
    assert response.original_request.file_containing_symbol == symbol
    # What a client gets is enough to build the service.
    pool = descriptor_pool.DescriptorPool()
    for name in ("google/protobuf/timestamp.proto", "okratest/v1/common.proto", "okratest/v1/echo.proto"):
        pool.Add(files[name])
    assert [m.name for m in pool.FindServiceByName(ECHO).methods] == ["Say", "Fail", "Watch", "Upload"]


async def test_reflection_resolves_files_by_name_and_reports_unknowns(served):
    response = await reflect(served.channel, "v1", file_by_filename="okratest/v1/common.proto")
    assert list(files_of(response)) == ["okratest/v1/common.proto"]
    response = await reflect(served.channel, "v1", file_by_filename="nope.proto")
    assert response.error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0]
    assert "nope.proto" in response.error_response.error_message
    response = await reflect(served.channel, "v1", file_containing_symbol="nope.v1.Thing")
    assert response.error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0]


async def test_each_package_gets_its_own_version_of_a_shared_file_name(served, other_set):
    served.runtime.deploy(other_set, OTHER, {})
    response = await reflect(served.channel, "v1", file_containing_symbol=OTHER)
    files = files_of(response)
    assert set(files) == {"okratest/other/v1/other.proto", "okratest/v1/common.proto"}
    assert [f.name for f in files["okratest/v1/common.proto"].message_type[0].field] == ["name", "owner"]

    response = await reflect(served.channel, "v1", file_containing_symbol=ECHO)
    tag = files_of(response)["okratest/v1/common.proto"].message_type[0]
    assert [f.name for f in tag.field] == ["name", "level"]


async def test_one_stream_keeps_asking_the_package_it_started_with(served, other_set):
    served.runtime.deploy(other_set, OTHER, {})
    stream = served.channel.stream_stream(
        REFLECTION["v1"],
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )()
    for first, then_field in ((OTHER, "owner"), (ECHO, "level")):
        await stream.write(reflection_pb2.ServerReflectionRequest(file_containing_symbol=first))
        await stream.read()
        served.deploy_echo()  # a redeploy elsewhere does not reset the stream's preference
        await stream.write(reflection_pb2.ServerReflectionRequest(file_by_filename="okratest/v1/common.proto"))
        common = files_of(await stream.read())["okratest/v1/common.proto"]
        assert common.message_type[0].field[1].name == then_field
    await stream.done_writing()


@pytest.mark.parametrize(
    "service", ["grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection"]
)
async def test_reflection_describes_the_builtin_services(served, service):
    response = await reflect(served.channel, "v1", file_containing_symbol=service)
    pool = descriptor_pool.DescriptorPool()
    for proto in files_of(response).values():
        pool.Add(proto)
    found = pool.FindServiceByName(service)
    method = next(iter(found.methods))
    assert method.input_type.full_name.startswith(service.rsplit(".", 1)[0])


# -- client.call_json ------------------------------------------------------------------------


async def test_call_json_learns_the_schema_from_reflection(served):
    text = await asyncio.to_thread(
        call_json, served.address, f"{ECHO}/Say", '{"text": "hi", "repeatCount": 2, "sent_at": "2024-01-02T03:04:05Z"}'
    )
    result = json.loads(text)
    assert result == {"text": "hihi", "count": 2, "metadata": result["metadata"]}  # no "note": it has presence
    assert "\n  " in text  # indented by 2
    sent = served.runtime.schema(ECHO).methods["Say"].input_class.FromString(served.runtime.calls[-1].payload)
    assert sent.repeat_count == 2 and sent.sent_at.seconds == 1704164645


async def test_call_json_stream_yields_each_message_of_a_server_stream(served):
    def collect(text):
        return [json.loads(m)["text"] for m in call_json_stream(served.address, f"{ECHO}/Watch", text)]

    assert await asyncio.to_thread(collect, '{"text": "t", "repeatCount": 3}') == ["t 1", "t 2", "t 3"]
    received = []

    def collect_until_error():
        for m in call_json_stream(served.address, f"{ECHO}/Watch", '{"text": "fail", "repeatCount": 5}'):
            received.append(json.loads(m)["text"])

    with pytest.raises(RpcError, match="stopped after 2") as info:
        await asyncio.to_thread(collect_until_error)
    assert info.value.code == StatusCode.ABORTED and received == ["fail 1", "fail 2"]
    # A unary method through the same function: exactly one response.
    assert len(await asyncio.to_thread(lambda: list(call_json_stream(served.address, f"{ECHO}/Say", "{}")))) == 1


async def test_call_json_prints_fields_at_their_default_value(served):
    text = await asyncio.to_thread(call_json, f"http://{served.address}", f"/{ECHO}/Say", "{}")
    assert json.loads(text)["count"] == 0 and json.loads(text)["text"] == ""


async def test_call_json_sends_metadata_and_deadline(served):
    text = await asyncio.to_thread(
        call_json, served.address, f"{ECHO}/Say", '{"text": "m"}', metadata=[("x-request-id", "abc")], timeout=7
    )
    assert "x-request-id=abc" in json.loads(text)["metadata"]
    assert 6 < served.runtime.calls[-1].timeout < 7.1  # grpc-timeout is rounded up


async def test_call_json_raises_the_servers_code_and_message(served):
    with pytest.raises(RpcError) as info:
        await asyncio.to_thread(call_json, served.address, f"{ECHO}/Fail", '{"code": 7, "message": "go away"}')
    assert info.value.code == StatusCode.PERMISSION_DENIED and info.value.message == "go away"


@pytest.mark.parametrize(
    "body, fragment",
    [('{"text": ', "SayRequest"), ('{"nope": 1}', "nope"), ('{"repeatCount": "many"}', "repeatCount"), ("[1]", "SayRequest")],
)
async def test_call_json_rejects_bad_json_before_calling(served, body, fragment):
    with pytest.raises(RpcError) as info:
        await asyncio.to_thread(call_json, served.address, f"{ECHO}/Say", body)
    assert info.value.code == StatusCode.INVALID_ARGUMENT and fragment in info.value.message
    assert served.runtime.calls == []


@pytest.mark.parametrize("target", ["okratest.v1.Echo", "Say", "/", "a/b/c", ""])
async def test_call_json_rejects_malformed_targets(served, target):
    with pytest.raises(RpcError, match="package.Service/Method") as info:
        await asyncio.to_thread(call_json, served.address, target, "{}")
    assert info.value.code == StatusCode.INVALID_ARGUMENT


async def test_call_json_names_what_the_server_has_for_unknown_targets(served):
    with pytest.raises(RpcError) as info:
        await asyncio.to_thread(call_json, served.address, "nope.v1.Nope/Say", "{}")
    assert info.value.code == StatusCode.UNIMPLEMENTED and ECHO in info.value.message
    with pytest.raises(RpcError) as info:
        await asyncio.to_thread(call_json, served.address, f"{ECHO}/Shout", "{}")
    assert info.value.code == StatusCode.UNIMPLEMENTED and "Say" in info.value.message
    with pytest.raises(RpcError, match="server-streaming method; call it with call_json_stream"):
        await asyncio.to_thread(call_json, served.address, f"{ECHO}/Watch", "{}")
    with pytest.raises(RpcError, match="streams requests") as info:
        await asyncio.to_thread(call_json, served.address, f"{ECHO}/Upload", "{}")
    assert info.value.code == StatusCode.UNIMPLEMENTED


async def test_call_json_falls_back_to_v1alpha_reflection(echo_set):
    """A server with grpcio-reflection's own (v1alpha only) servicer, not OKRA's."""
    from grpc_reflection.v1alpha import reflection_pb2_grpc
    from grpc_reflection.v1alpha._async import ReflectionServicer

    pool = load_descriptor_set(echo_set)
    say = service_schema(pool, echo_set, ECHO).methods["Say"]

    async def echo(request: bytes, context) -> bytes:
        text = say.input_class.FromString(request).text
        return say.output_class(text=f"v1alpha {text}").SerializeToString()

    server = grpc.aio.server()
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(ReflectionServicer([ECHO], pool=pool), server)
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(ECHO, {"Say": grpc.unary_unary_rpc_method_handler(echo)}),)
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        text = await asyncio.to_thread(call_json, f"127.0.0.1:{port}", f"{ECHO}/Say", '{"text": "old"}')
        assert json.loads(text)["text"] == "v1alpha old"
    finally:
        await server.stop(0)


def test_call_json_says_nothing_listens_at_a_closed_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(RpcError) as info:
        call_json(f"127.0.0.1:{port}", f"{ECHO}/Say", "{}", timeout=5)
    assert info.value.code == StatusCode.UNAVAILABLE
    assert f"nothing answers at 127.0.0.1:{port}" in info.value.message


def echo_package(tmp_path, echo_set) -> str:
    manifest = Manifest(name="echo", version="1.0.0", abi_version=1, services=(ECHO,), host_apis={},
                        pool=PoolConfig(), digests={}, language=None)
    return str(write_package(tmp_path / "echo.okra.pkg", manifest=manifest, wasm=b"\0asm\x01\0\0\0",
                             descriptor_set=echo_set))


async def test_call_json_learns_the_schema_from_a_package_without_reflection(echo_set, tmp_path):
    s = await serve(echo_set, reflection=False)
    s.deploy_echo()
    try:
        with pytest.raises(RpcError, match="--package") as info:
            await asyncio.to_thread(call_json, s.address, f"{ECHO}/Say", "{}")
        assert info.value.code == StatusCode.UNIMPLEMENTED
        text = await asyncio.to_thread(
            call_json, s.address, f"{ECHO}/Say", '{"text": "pkg"}', package=echo_package(tmp_path, echo_set)
        )
        assert json.loads(text)["text"] == "pkg"
    finally:
        await s.channel.close()
        await s.transport.stop(0)


async def test_call_json_with_a_package_names_unknown_services_and_methods(served, echo_set, tmp_path):
    package = echo_package(tmp_path, echo_set)
    with pytest.raises(RpcError, match="nope.v1.Nope") as info:
        await asyncio.to_thread(call_json, served.address, "nope.v1.Nope/Say", "{}", package=package)
    assert info.value.code == StatusCode.INVALID_ARGUMENT
    with pytest.raises(RpcError, match="Shout.*Say") as info:
        await asyncio.to_thread(call_json, served.address, f"{ECHO}/Shout", "{}", package=package)
    assert info.value.code == StatusCode.UNIMPLEMENTED


async def test_list_services_follows_the_runtime(served):
    assert ECHO in await asyncio.to_thread(list_services, served.address)


# -- buf curl --------------------------------------------------------------------------------

needs_buf = pytest.mark.skipif(not os.path.exists(BUF), reason="buf CLI (PyPI buf-bin) is not installed")


async def buf_curl(*args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        BUF, "curl", "--protocol", "grpc", "--http2-prior-knowledge", *args,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    return process.returncode, out.decode(), err.decode()


@needs_buf
async def test_buf_curl_calls_a_method_over_reflection(served):
    rc, out, err = await buf_curl(
        "--data", '{"text": "buf", "repeatCount": 2, "tag": {"name": "t", "level": "LEVEL_HIGH"}}',
        "-H", "x-request-id: from-buf",
        f"http://{served.address}/{ECHO}/Say",
    )
    assert rc == 0, err
    result = json.loads(out)
    assert result["text"] == "bufbuf" and result["count"] == 2
    assert "x-request-id=from-buf" in result["metadata"]
    sent = served.runtime.schema(ECHO).methods["Say"].input_class.FromString(served.runtime.calls[-1].payload)
    assert sent.tag.level == 1


@needs_buf
async def test_buf_curl_lists_methods_and_reports_server_errors(served):
    rc, out, err = await buf_curl("--list-methods", f"http://{served.address}")
    assert rc == 0, err
    assert f"{ECHO}/Say" in out.split()
    rc, out, err = await buf_curl("--data", '{"code": 5, "message": "no such thing"}', f"http://{served.address}/{ECHO}/Fail")
    assert rc != 0
    assert "not_found" in err.lower().replace(" ", "_") and "no such thing" in err
