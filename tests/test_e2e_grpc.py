# End to end over gRPC: the real runtime, the wasmtime engine, a real guest and real
# clients. The guest is tests/fixtures/echo.wat (ABI v1, hand-written): it answers every
# method with its input, and method "Fail" with FAILED_PRECONDITION "requested failure".
# It is deployed as okratest.v1.Echo (tests/fixtures/grpc/a), whose Say request and
# response share their first fields, so an echoed request is a valid response.
#
# Test plan
# - in process (runtime + transport on one loop): grpcio call through the guest; guest
#   error code and message reach grpcio, call_json and buf curl; a request that does not
#   parse is INVALID_ARGUMENT without reaching the guest; the client deadline applies;
#   health, reflection and routing follow deploy / undeploy / redeploy of a real package.
# - as a user runs it: `okra serve PACKAGE --grpc-port 0` in a subprocess, `okra call`
#   (JSON through reflection, and --package), health over grpcio, SIGTERM stops it
#   cleanly with health going NOT_SERVING first.
# - the Go greeter that `okra init --lang go` creates, built with `okra build`: greets
#   over grpcio, call_json and buf curl; its InvalidArgument error reaches the client.

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
import wasmtime
from grpc_health.v1 import health_pb2, health_pb2_grpc

from okra_core.config import RuntimeConfig
from okra_core.manifest import Manifest, PoolConfig
from okra_core.package import load_package, write_package
from okra_core.runtime import Runtime
from okra_core.status import RpcError, StatusCode
from okra_plugins.transport_grpc._transport import GrpcTransport
from okra_plugins.transport_grpc.client import call_json, list_services
from support import FIXTURES_DIR, compile_protos, stop_processes

pytestmark = pytest.mark.slow

ECHO = "okratest.v1.Echo"
BUF = str(Path(sys.executable).parent / "buf")
OKRA = str(Path(sys.executable).parent / "okra")


@pytest.fixture(scope="module")
def package_path(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("e2e")
    descriptors = compile_protos(tmp, ["okratest/v1/echo.proto"], include=[FIXTURES_DIR / "grpc" / "a"])
    wasm = wasmtime.wat2wasm((FIXTURES_DIR / "echo.wat").read_text())
    manifest = Manifest(name="echo", version="1.0.0", abi_version=1, services=(ECHO,), host_apis={},
                        pool=PoolConfig(1, 2), digests={}, language=None)
    return write_package(tmp / "echo-1.0.0.okra.pkg", manifest=manifest, wasm=wasm, descriptor_set=descriptors)


@pytest.fixture
async def stack(package_path, tmp_path):
    runtime = Runtime(RuntimeConfig(engine_options={"cache_dir": str(tmp_path / "cache")}, default_timeout=10))
    await runtime.start()
    await runtime.deploy(load_package(package_path))
    transport = GrpcTransport()
    _, port = await transport.start(runtime, "127.0.0.1", 0)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    yield runtime, f"127.0.0.1:{port}", channel
    await channel.close()
    await transport.stop(1)
    await runtime.close(1)


def say_classes(runtime):
    method = runtime.schema(ECHO).methods["Say"]
    return method.input_class, method.output_class


async def test_grpcio_call_goes_through_the_guest(stack):
    runtime, _, channel = stack
    request_class, response_class = say_classes(runtime)
    raw = await channel.unary_unary(f"/{ECHO}/Say")(
        request_class(text="héllo", repeat_count=3).SerializeToString(), timeout=5
    )
    response = response_class.FromString(raw)
    assert (response.text, response.count) == ("héllo", 3)


async def test_guest_error_reaches_every_client_with_its_code_and_message(stack):
    _, address, channel = stack
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await channel.unary_unary(f"/{ECHO}/Fail")(b"", timeout=5)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert info.value.details() == "requested failure"

    with pytest.raises(RpcError) as error:
        await asyncio.to_thread(call_json, address, f"{ECHO}/Fail", "{}")
    assert (error.value.code, error.value.message) == (StatusCode.FAILED_PRECONDITION, "requested failure")

    process = await asyncio.create_subprocess_exec(
        BUF, "curl", "--protocol", "grpc", "--http2-prior-knowledge", "--data", "{}",
        f"http://{address}/{ECHO}/Fail", stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode != 0
    assert "failed_precondition" in err.decode().lower().replace(" ", "_")
    assert "requested failure" in err.decode()


async def test_buf_curl_and_call_json_round_trip_json_through_the_guest(stack):
    _, address, _ = stack
    text = await asyncio.to_thread(call_json, address, f"{ECHO}/Say", '{"text": "json", "repeatCount": 7}')
    assert json.loads(text) == {"text": "json", "count": 7, "metadata": []}

    process = await asyncio.create_subprocess_exec(
        BUF, "curl", "--protocol", "grpc", "--http2-prior-knowledge", "--data", '{"text": "buf"}',
        f"http://{address}/{ECHO}/Say", stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()
    assert json.loads(out)["text"] == "buf"


async def test_request_that_does_not_parse_is_invalid_argument(stack):
    _, _, channel = stack
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await channel.unary_unary(f"/{ECHO}/Say")(b"\xff\xff\xff", timeout=5)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_health_reflection_and_routing_follow_undeploy_and_redeploy(stack, package_path):
    runtime, address, channel = stack
    health = health_pb2_grpc.HealthStub(channel)
    check = health_pb2.HealthCheckRequest(service=ECHO)
    assert (await health.Check(check, timeout=5)).status == health_pb2.HealthCheckResponse.SERVING
    assert ECHO in await asyncio.to_thread(list_services, address)

    await runtime.undeploy("echo")
    await asyncio.sleep(0)  # let the health update run
    assert (await health.Check(check, timeout=5)).status == health_pb2.HealthCheckResponse.NOT_SERVING
    assert ECHO not in await asyncio.to_thread(list_services, address)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await channel.unary_unary(f"/{ECHO}/Say")(b"", timeout=5)
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED

    await runtime.deploy(load_package(package_path))
    await asyncio.sleep(0)
    assert (await health.Check(check, timeout=5)).status == health_pb2.HealthCheckResponse.SERVING
    text = await asyncio.to_thread(call_json, address, f"{ECHO}/Say", '{"text": "back"}')
    assert json.loads(text)["text"] == "back"


# -- as a user runs it ----------------------------------------------------------------------


def okra(*args: str, timeout: float = 60, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([OKRA, *args], capture_output=True, text=True, timeout=timeout, **kwargs)


def test_okra_serve_and_okra_call(package_path, tmp_path):
    env = {**os.environ, "OKRA_CACHE_DIR": str(tmp_path / "cache")}
    server = subprocess.Popen(
        [OKRA, "serve", str(package_path), "--grpc-port", "0", "--http-port", "0", "--grace", "5"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    try:
        line = server.stdout.readline()
        match = re.match(r"gRPC listening on (\S+):(\d+)", line)
        assert match, f"unexpected first line {line!r}; stderr: {server.stderr.read() if server.poll() is not None else ''}"
        address = f"{match[1]}:{match[2]}"
        http_line = server.stdout.readline()
        assert re.match(r"HTTP listening on 127\.0\.0\.1:\d+$", http_line.strip()), http_line

        result = okra("call", f"{ECHO}/Say", '{"text": "cli", "repeat_count": 2}', "--address", address)
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout) == {"text": "cli", "count": 2, "metadata": []}

        result = okra("call", f"/{ECHO}/Say", "-", "--address", address, "--package", str(package_path),
                      input='{"text": "stdin"}')
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["text"] == "stdin"

        result = okra("call", f"{ECHO}/Fail", "--address", address)
        assert result.returncode == 1
        assert "FAILED_PRECONDITION: requested failure" in result.stderr

        result = okra("call", f"{ECHO}/Say", '{"nope": 1}', "--address", address)
        assert result.returncode == 1 and "INVALID_ARGUMENT" in result.stderr and "nope" in result.stderr

        with grpc.insecure_channel(address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            assert health.Check(health_pb2.HealthCheckRequest(service=ECHO), timeout=5).status == \
                health_pb2.HealthCheckResponse.SERVING
            watch = health.Watch(health_pb2.HealthCheckRequest(service=""), timeout=30)
            assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
            server.send_signal(signal.SIGTERM)
            assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
        assert server.wait(timeout=30) == 0
    finally:
        stop_processes(server)

    result = okra("call", f"{ECHO}/Say", "--address", address, "--timeout", "5")
    assert result.returncode == 1 and "UNAVAILABLE: nothing answers at" in result.stderr


# -- the Go greeter of `okra init` -------------------------------------------------------------


@pytest.fixture(scope="module")
def greeter_package(tmp_path_factory):
    from okra_core.build import build_project

    project = tmp_path_factory.mktemp("go") / "greeter"
    result = okra("init", "greeter", "--lang", "go", "--dir", str(project), timeout=120)
    assert result.returncode == 0, result.stderr
    return load_package(build_project(project).path)


async def test_go_greeter_answers_every_client(greeter_package, tmp_path):
    runtime = Runtime(RuntimeConfig(engine_options={"cache_dir": str(tmp_path / "cache")}))
    await runtime.start()
    transport = GrpcTransport()
    try:
        assert await runtime.deploy(greeter_package) == ["greeter.v1.Greeter"]
        _, port = await transport.start(runtime, "127.0.0.1", 0)
        address = f"127.0.0.1:{port}"
        method = runtime.schema("greeter.v1.Greeter").methods["SayHello"]

        async with grpc.aio.insecure_channel(address) as channel:
            raw = await channel.unary_unary(method.full_path)(
                method.input_class(name="Ada").SerializeToString(), timeout=10
            )
        assert method.output_class.FromString(raw).message == "Hello, Ada!"

        text = await asyncio.to_thread(call_json, address, "greeter.v1.Greeter/SayHello", '{"name": "Grace"}')
        assert json.loads(text) == {"message": "Hello, Grace!"}

        with pytest.raises(RpcError) as info:
            await asyncio.to_thread(call_json, address, "greeter.v1.Greeter/SayHello", "{}")
        assert info.value.code == StatusCode.INVALID_ARGUMENT
        assert "name must not be empty" in info.value.message

        process = await asyncio.create_subprocess_exec(
            BUF, "curl", "--protocol", "grpc", "--http2-prior-knowledge", "--data", '{"name": "Linus"}',
            f"http://{address}/greeter.v1.Greeter/SayHello", stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(process.communicate(), 60)
        assert process.returncode == 0, err.decode()
        assert json.loads(out) == {"message": "Hello, Linus!"}
    finally:
        await transport.stop(1)
        await runtime.close(1)
