# Test plan: examples/greeter, the Go example the README serves, builds and behaves as
# its .proto documents (copied to a temporary directory, so the repository stays clean).
# The unary cases run the guest on each engine (wasmtime and wasm3).
# - SayHello: the language picks the greeting, `times` repeats it (int64), logged with
#   fields; empty name -> INVALID_ARGUMENT; times out of range -> OUT_OF_RANGE; an enum
#   value the build does not know -> INVALID_ARGUMENT naming it.
# - Summarize: count, oldest (nested message), average, role counts (map), mailing list
#   and unreachable members (oneof); a member without a name -> INVALID_ARGUMENT.
# - GreetMany (server streaming through the Go SDK's Stream and okra.abi.send, on the
#   real runtime): every greeting in order; paced greetings arrive as sent, not at the
#   end; fail_after -> the greetings sent, then ABORTED; a bad request fails before any
#   message; a caller that stops reading early makes the guest's Send fail (it logs how
#   many it sent) and the service keeps serving; a deadline cuts the stream with
#   DEADLINE_EXCEEDED; the guest refuses a streaming method called as unary (INTERNAL)
#   and the runtime refuses it before the guest (UNIMPLEMENTED).
# - as a user runs it: `okra serve` of the built package in a subprocess; `okra call`
#   prints SayHello's reply, each GreetMany greeting, and for a stream that fails, the
#   greetings then the error (exit status 1).
from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lang_go_support import Guest, message_classes
from okra_core.build import build_project
from okra_core.config import RuntimeConfig
from okra_core.package import load_package
from okra_core.runtime import Runtime
from okra_core.status import RpcError, StatusCode
from support import TESTS_DIR

pytestmark = pytest.mark.slow

EXAMPLE = TESTS_DIR.parent / "examples" / "greeter"


@pytest.fixture(scope="module")
def package_path(tmp_path_factory) -> Path:
    project = tmp_path_factory.mktemp("example") / "greeter"
    shutil.copytree(EXAMPLE, project, ignore=shutil.ignore_patterns("dist", ".okra", "gen"))
    return build_project(project).path


@pytest.fixture(scope="module")
def package(package_path):
    return load_package(package_path)


@pytest.fixture(scope="module")
def types(package):
    return message_classes(package.descriptor_set)


@pytest.fixture(params=["wasmtime", "wasm3"])
def guest(request, package):
    guest = Guest(package, "greeter.v1.Greeter", engine=request.param)
    yield guest
    guest.close()


def say_hello(guest, types, **fields):
    return guest.call("SayHello", types("greeter.v1.HelloRequest")(**fields).SerializeToString())


def test_say_hello_in_a_language_several_times(guest, types):
    reply = say_hello(guest, types, name="Ada", language=2, times=3)
    assert reply.code == 0, reply.message
    hello = types("greeter.v1.HelloReply").FromString(reply.output)
    assert hello.message == "Bonjour, Ada!"
    assert list(hello.greetings) == ["1. Bonjour, Ada!", "2. Bonjour, Ada!", "3. Bonjour, Ada!"]
    (record,) = guest.logs.records
    assert record.okra_fields == {"name": "Ada", "language": "LANGUAGE_FRENCH", "times": 3}


@pytest.mark.parametrize(
    ("fields", "code", "message"),
    [
        ({"name": "  "}, StatusCode.INVALID_ARGUMENT, "name must not be empty"),
        ({"name": "Ada", "times": 11}, StatusCode.OUT_OF_RANGE, "times must be between 1 and 10, not 11"),
        ({"name": "Ada", "times": -(2**63)}, StatusCode.OUT_OF_RANGE, f"not {-(2**63)}"),
        ({"name": "Ada", "language": 42}, StatusCode.INVALID_ARGUMENT, "language 42 is not supported"),
    ],
)
def test_say_hello_refuses_bad_requests(guest, types, fields, code, message):
    reply = say_hello(guest, types, **fields)
    assert reply.code == code
    assert message in reply.message


def test_summarize_a_team(guest, types):
    Team, Person = types("greeter.v1.Team"), types("greeter.v1.Person")
    team = Team(name="core", members=[
        Person(name="Ada", age=36, role=1, contact={"email": "ada@example.com"}),
        Person(name="Grace", age=45, role=3, contact={"phone": "+1 555"}),
        Person(name="Linus", age=45, role=1),
    ])
    reply = guest.call("Summarize", team.SerializeToString())
    assert reply.code == 0, reply.message
    summary = types("greeter.v1.TeamSummary").FromString(reply.output)
    assert (summary.team, summary.member_count) == ("core", 3)
    assert summary.oldest == team.members[1]  # the first of the oldest
    assert summary.average_age == pytest.approx(42.0)
    assert dict(summary.role_counts) == {"engineer": 2, "manager": 1}
    assert list(summary.mailing_list) == ["Ada <ada@example.com>"]
    assert list(summary.unreachable) == ["Linus"]


def test_summarize_an_empty_team_has_no_oldest(guest, types):
    reply = guest.call("Summarize", types("greeter.v1.Team")(name="new").SerializeToString())
    summary = types("greeter.v1.TeamSummary").FromString(reply.output)
    assert not summary.HasField("oldest") and summary.member_count == 0


def test_summarize_refuses_a_nameless_member(guest, types):
    team = types("greeter.v1.Team")(name="core", members=[{"name": "Ada"}, {"age": 3}])
    reply = guest.call("Summarize", team.SerializeToString())
    assert (reply.code, reply.message) == (StatusCode.INVALID_ARGUMENT, "member 2 of team core has no name")


# -- GreetMany: server streaming through the Go SDK ------------------------------------

GREETER = "greeter.v1.Greeter"


@pytest.fixture
async def runtime(package, tmp_path):
    runtime = Runtime(RuntimeConfig(engine_options={"cache_dir": str(tmp_path / "cache")}))
    await runtime.start()
    await runtime.deploy(package)
    yield runtime
    await runtime.close(1)


def greet_many(types, **fields) -> bytes:
    return types("greeter.v1.GreetManyRequest")(**fields).SerializeToString()


async def stream_of(runtime, types, timeout=None, **fields):
    """(messages, arrival times, the RpcError that ended the stream or None)."""
    reply_class = types("greeter.v1.GreetManyReply")
    messages, times, error = [], [], None
    try:
        async for raw in runtime.invoke_stream(GREETER, "GreetMany", greet_many(types, **fields), timeout=timeout):
            messages.append(reply_class.FromString(raw).message)
            times.append(time.monotonic())
    except RpcError as exc:
        error = exc
    return messages, times, error


async def test_greet_many_streams_every_greeting_in_order(runtime, types):
    messages, _, error = await stream_of(runtime, types, name="Ada", language=3, count=4)
    assert error is None
    assert messages == [f"Hallo, Ada! ({i}/4)" for i in range(1, 5)]


async def test_greet_many_paced_greetings_arrive_as_they_are_sent(runtime, types):
    _, times, error = await stream_of(runtime, types, name="Ada", count=3, interval_ms=200)
    assert error is None
    assert times[1] - times[0] >= 0.15 and times[2] - times[1] >= 0.15


async def test_greet_many_error_after_some_greetings_arrives_after_them(runtime, types):
    messages, _, error = await stream_of(runtime, types, name="Ada", count=5, fail_after=2)
    assert messages == ["Hello, Ada! (1/5)", "Hello, Ada! (2/5)"]
    assert (error.code, error.message) == (StatusCode.ABORTED, "stopped after 2 greetings, as asked")


@pytest.mark.parametrize(
    ("fields", "code", "message"),
    [
        ({"name": " "}, StatusCode.INVALID_ARGUMENT, "name must not be empty"),
        ({"name": "Ada", "count": 101}, StatusCode.OUT_OF_RANGE, "count must be between 1 and 100, not 101"),
        ({"name": "Ada", "interval_ms": -1}, StatusCode.OUT_OF_RANGE, "interval_ms must be between 0 and 10000"),
    ],
)
async def test_greet_many_bad_request_fails_before_any_message(runtime, types, fields, code, message):
    messages, _, error = await stream_of(runtime, types, **fields)
    assert messages == []
    assert error.code == code and message in error.message


async def test_greet_many_caller_leaving_early_stops_the_guest(runtime, types, caplog):
    caplog.set_level(logging.INFO, logger=f"okra.service.{GREETER}")
    stream = runtime.invoke_stream(GREETER, "GreetMany", greet_many(types, name="Ada", count=100, interval_ms=20))
    async for _ in stream:
        break
    await stream.aclose()
    for _ in range(100):  # the guest notices at its next Send
        if any("stream ended early" in r.getMessage() for r in caplog.records):
            break
        await asyncio.sleep(0.02)
    (record,) = [r for r in caplog.records if "stream ended early" in r.getMessage()]
    assert 1 <= record.okra_fields["sent"] < 100
    assert "CANCELLED" in record.okra_fields["error"]
    messages, _, error = await stream_of(runtime, types, name="Grace", count=1)
    assert (messages, error) == (["Hello, Grace! (1/1)"], None)


async def test_greet_many_deadline_cuts_the_stream(runtime, types):
    messages, _, error = await stream_of(runtime, types, timeout=0.5, name="Ada", count=50, interval_ms=100)
    assert error is not None and error.code == StatusCode.DEADLINE_EXCEEDED
    assert 1 <= len(messages) < 50


async def test_greet_many_called_as_unary_is_refused(runtime, guest, types):
    with pytest.raises(RpcError) as info:
        await runtime.invoke(GREETER, "GreetMany", greet_many(types, name="Ada"))
    assert info.value.code == StatusCode.UNIMPLEMENTED
    # Straight into the guest, bypassing the runtime's check: the SDK refuses it too.
    reply = guest.call("GreetMany", greet_many(types, name="Ada"))
    assert reply.code == StatusCode.INTERNAL
    assert "the host called a server-streaming method as unary" in reply.message


# -- as a user runs it ----------------------------------------------------------------------

OKRA = str(Path(sys.executable).parent / "okra")


def test_okra_call_prints_each_greeting_of_a_stream(package_path, tmp_path):
    env = {**os.environ, "OKRA_CACHE_DIR": str(tmp_path / "cache")}
    server = subprocess.Popen(
        [OKRA, "serve", str(package_path), "--grpc-port", "0", "--grace", "2"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    try:
        line = server.stdout.readline()
        match = re.match(r"gRPC listening on (\S+:\d+)", line)
        assert match, f"unexpected first line {line!r}"

        def okra_call(target, body):
            return subprocess.run([OKRA, "call", "--address", match[1], f"{GREETER}/{target}", body],
                                  capture_output=True, text=True, timeout=60)

        result = okra_call("SayHello", '{"name": "Ada"}')
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["message"] == "Hello, Ada!"

        result = okra_call("GreetMany", '{"name": "Ada", "count": 3}')
        assert result.returncode == 0, result.stderr
        replies = [json.loads("{" + part) for part in result.stdout.strip().lstrip("{").split("\n{")]
        assert [r["message"] for r in replies] == [f"Hello, Ada! ({i}/3)" for i in (1, 2, 3)]

        result = okra_call("GreetMany", '{"name": "Ada", "count": 3, "failAfter": 1}')
        assert result.returncode == 1
        assert json.loads(result.stdout)["message"] == "Hello, Ada! (1/3)"
        assert "ABORTED" in result.stderr and "stopped after 1 greetings, as asked" in result.stderr
    finally:
        server.terminate()
        server.wait(30)
