# Server streaming (guest ABI v2) through the runtime: Runtime.invoke_stream, the
# service actor, okra.abi.send and the wasmtime engine, with a real WAT guest speaking
# v2 (tests/fixtures/stream.wat) and a test host API, okra.test.progress, that records
# how far the guest got (and can slow it down). No transport.
#
# Test plan
# ABI:
# - a streaming method's request envelope carries stream: true, a unary one does not.
# - okra.abi.send exists for v2 guests only; a v1 module importing it is refused at
#   deploy, with a message saying which version defines it.
# Calls:
# - every message arrives, in order, and the stream ends; the guest saw stream: true.
# - a unary method of a v2 guest still works and sees stream: false; calling send in
#   a unary call fails with FAILED_PRECONDITION and a message the guest can take.
# - refused before the guest runs (progress never called): unknown service / method,
#   unary method through invoke_stream, streaming method through invoke, a
#   client-streaming method, a v1 package's streaming method -> UNIMPLEMENTED; input
#   that does not parse -> INVALID_ARGUMENT.
# - nothing runs until the first message is asked for.
# - messages are delivered as produced: the first one arrives while the guest is still
#   working on the next ones.
# - backpressure: a caller that does not read pauses the guest after the buffer fills
#   (stream_buffer messages), and reading on lets it finish, nothing lost.
# - closing the stream early cancels: a guest that honours the failed send stops at
#   once; one that ignores it runs to its end without blocking and without its messages
#   being kept; either way the instance goes back to the pool only after the guest
#   returns, and serves the next call.
# - cancelling the caller's task cancels the call the same way.
# - deadline mid-stream -> DEADLINE_EXCEEDED after the messages already delivered, and
#   the guest stops.
# - trap mid-stream -> INTERNAL after the messages already delivered; the instance is
#   discarded and the service keeps serving.
# - a guest error code after some messages -> that RpcError after them.
# - a message that is not the output type -> INTERNAL, and the guest's send fails
#   (-INTERNAL); with validate_output off the bytes pass through.
# - output in a streaming call's final envelope -> INTERNAL (the guest broke the ABI).
# - a stream holds its instance: with pool.max streams open, another call waits for
#   an instance and fails with DEADLINE_EXCEEDED when its deadline passes first.
# - bad config: stream_buffer < 1 is a ConfigError.
import asyncio
import contextlib
import threading
import time

import pytest
import wasmtime

from okra_core import abi
from okra_core.config import RuntimeConfig
from okra_core.descriptors import load_descriptor_set, service_schema
from okra_core.errors import AbiError, ConfigError
from okra_core.hookspecs import hookimpl
from okra_core.hostapi import HostFunction
from okra_core.manifest import PoolConfig
from okra_core.package import Package
from okra_core.plugins import Registry, make_plugin_manager
from okra_core.runtime import Runtime
from okra_core.status import RpcError, StatusCode
from support import FIXTURES_DIR, compile_protos, make_manifest

PROTO = """
syntax = "proto3";
package st.v1;
message Many { uint32 n = 1; }
message Tick { uint32 i = 1; }
service Streamer {
  rpc Count(Many) returns (stream Tick);
  rpc Stubborn(Many) returns (stream Tick);
  rpc TrapAt(Many) returns (stream Tick);
  rpc Fail(Many) returns (stream Tick);
  rpc Invalid(Many) returns (stream Tick);
  rpc Output(Many) returns (stream Tick);
  rpc Unary(Many) returns (Tick);
  rpc SendInUnary(Many) returns (Tick);
  rpc Upload(stream Many) returns (Tick);
}
"""
SERVICE = "st.v1.Streamer"


class Progress:
    """Host API okra.test: `progress(i)` records that the guest is about to send tick i,
    after sleeping `delay` seconds when i >= `slow_from`."""

    namespace = "okra.test"
    description = "test probe: how far a guest got"

    def __init__(self):
        self.seen: list[int] = []
        self.delay = 0.0
        self.slow_from = 1
        self.lock = threading.Lock()

    def function_names(self):
        return ("progress",)

    def functions(self, config, env=None):
        def progress(ctx, i):
            if self.delay and i >= self.slow_from:
                time.sleep(self.delay)
            with self.lock:
                self.seen.append(i)
            return 0

        return (HostFunction(self.namespace, "progress", ("i32",), progress),)

    @property
    def last(self) -> int:
        with self.lock:
            return self.seen[-1] if self.seen else 0


@pytest.fixture(scope="module")
def descriptors(tmp_path_factory):
    return compile_protos(tmp_path_factory.mktemp("protos"), {"st/v1/st.proto": PROTO})


@pytest.fixture(scope="module")
def types(descriptors):
    schema = service_schema(load_descriptor_set(descriptors), descriptors, SERVICE)
    return schema.methods["Count"].input_class, schema.methods["Count"].output_class


@pytest.fixture
def progress():
    return Progress()


@pytest.fixture
def registry(progress):
    pm = make_plugin_manager(entrypoints=False)

    class Plugin:
        @hookimpl
        def register_host_apis(self, register):
            register(progress)

    pm.register(Plugin(), name="okra-test-progress")
    return Registry(pm)


def wat(name: str) -> bytes:
    return wasmtime.wat2wasm((FIXTURES_DIR / f"{name}.wat").read_text())


@pytest.fixture
def package(descriptors):
    def make(guest="stream", abi_version=2, **overrides) -> Package:
        fields = dict(
            name="st",
            services=(SERVICE,),
            host_apis={"okra.test": {}},
            pool=PoolConfig(1, 1),
            abi_version=abi_version,
        )
        fields.update(overrides)
        return Package.from_parts(
            manifest=make_manifest(**fields), wasm=wat(guest), descriptor_set=descriptors
        )

    return make


@pytest.fixture
async def make_runtime(tmp_path, registry):
    runtimes = []

    async def make(**config) -> Runtime:
        config.setdefault("engine_options", {"cache_dir": str(tmp_path / "cache")})
        runtime = Runtime(RuntimeConfig(**config), registry=registry)
        await runtime.start()
        runtimes.append(runtime)
        return runtime

    yield make
    for runtime in runtimes:
        await runtime.close(grace=2)


@pytest.fixture
async def runtime(make_runtime, package):
    runtime = await make_runtime(stream_buffer=2)
    await runtime.deploy(package())
    return runtime


def count(types, n: int) -> bytes:
    return types[0](n=n).SerializeToString()


def ticks(types, messages) -> list[int]:
    return [types[1].FromString(m).i for m in messages]


def pool_of(runtime):
    return runtime.deployments()[0].actors[SERVICE].pool


async def collect(stream, into: list | None = None) -> list[bytes]:
    into = [] if into is None else into
    async for message in stream:
        into.append(message)
    return into


async def until(condition, timeout=5.0):
    """Wait until `condition()` holds (polling); fail the test if it never does."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition never held")
        await asyncio.sleep(0.005)


# -- the ABI --------------------------------------------------------------------------


def test_streaming_request_envelope_carries_the_stream_flag():
    streaming = abi.encode_request(abi.request_prefix("s.S", "M", stream=True), b"in")
    unary = abi.encode_request(abi.request_prefix("s.S", "M"), b"in")
    assert abi.decode_request_v2(streaming) == ("s.S", "M", b"in", [], True)
    assert abi.decode_request_v2(unary) == ("s.S", "M", b"in", [], False)
    assert abi.decode_request(streaming) == ("s.S", "M", b"in", [])


def test_send_is_part_of_okra_abi_from_version_2_on():
    assert [fn.name for fn in abi.abi_functions(1)] == ["take"]
    assert [fn.name for fn in abi.abi_functions(2)] == ["take", "send"]
    assert abi.SUPPORTED_ABI_VERSIONS == {1, 2}


async def test_v1_module_importing_send_is_refused_naming_the_version(make_runtime, package):
    runtime = await make_runtime()
    with pytest.raises(AbiError) as info:
        await runtime.deploy(package(abi_version=1))
    assert str(info.value).startswith(
        "module imports okra.abi.send, which guest ABI v1 does not define; it arrived in v2"
    )
    assert runtime.services() == []


def test_stream_buffer_below_one_is_a_config_error():
    with pytest.raises(ConfigError, match="stream_buffer must be at least 1"):
        RuntimeConfig(stream_buffer=0)


# -- calls ----------------------------------------------------------------------------


async def test_every_message_arrives_in_order_and_the_stream_ends(runtime, types, progress):
    messages = await collect(runtime.invoke_stream(SERVICE, "Count", count(types, 50)))
    assert ticks(types, messages) == list(range(1, 51))
    assert progress.seen == list(range(1, 51))
    assert await collect(runtime.invoke_stream(SERVICE, "Count", b"")) == []
    await until(lambda: pool_of(runtime).stats.idle == 1)


async def test_unary_method_of_a_v2_guest_is_unchanged(runtime, types):
    output = await runtime.invoke(SERVICE, "Unary", count(types, 300))
    assert types[1].FromString(output).i == 300


async def test_send_in_a_unary_call_fails_for_the_guest(runtime, types):
    with pytest.raises(RpcError) as info:
        await runtime.invoke(SERVICE, "SendInUnary", b"")
    assert info.value.code == StatusCode.FAILED_PRECONDITION
    assert info.value.message == "okra.abi.send called outside a server-streaming call"


@pytest.mark.parametrize(
    "service, method, payload, code, fragment",
    [
        ("st.v1.Nope", "Count", b"", StatusCode.UNIMPLEMENTED, "service st.v1.Nope is not deployed"),
        (SERVICE, "Nope", b"", StatusCode.UNIMPLEMENTED, "method Nope not found in service st.v1.Streamer"),
        (SERVICE, "Unary", b"", StatusCode.UNIMPLEMENTED, "is a unary method: call it with Runtime.invoke"),
        (SERVICE, "Upload", b"", StatusCode.UNIMPLEMENTED, "is a client-streaming method"),
        (SERVICE, "Count", b"\x08\xff", StatusCode.INVALID_ARGUMENT, "request is not a valid st.v1.Many"),
    ],
)
async def test_bad_calls_are_refused_before_the_guest_runs(
    runtime, progress, service, method, payload, code, fragment
):
    with pytest.raises(RpcError) as info:
        await collect(runtime.invoke_stream(service, method, payload))
    assert info.value.code == code
    assert fragment in info.value.message
    assert progress.seen == []


async def test_streaming_method_through_unary_invoke_is_unimplemented(runtime, types, progress):
    with pytest.raises(RpcError) as info:
        await runtime.invoke(SERVICE, "Count", count(types, 3))
    assert info.value.code == StatusCode.UNIMPLEMENTED
    assert "Runtime.invoke_stream" in info.value.message
    assert progress.seen == []


async def test_streaming_method_of_a_v1_package_is_unimplemented(make_runtime, package, types):
    runtime = await make_runtime()
    await runtime.deploy(package("echo", abi_version=1, host_apis={}))
    with pytest.raises(RpcError) as info:
        await collect(runtime.invoke_stream(SERVICE, "Count", count(types, 3)))
    assert info.value.code == StatusCode.UNIMPLEMENTED
    assert "speaks guest ABI v1, which serves unary methods only" in info.value.message


async def test_nothing_runs_until_the_first_message_is_asked_for(runtime, types, progress):
    stream = runtime.invoke_stream(SERVICE, "Count", count(types, 3))
    await asyncio.sleep(0.05)
    assert progress.seen == []
    assert ticks(types, [await anext(stream)]) == [1]
    await stream.aclose()


async def test_messages_are_delivered_as_the_guest_produces_them(runtime, types, progress):
    progress.delay, progress.slow_from = 0.15, 2  # ticks 2..4 take 0.15 s each
    stream = runtime.invoke_stream(SERVICE, "Count", count(types, 4))
    started = time.monotonic()
    first = await anext(stream)
    first_at = time.monotonic() - started
    rest = await collect(stream)
    total = time.monotonic() - started
    assert ticks(types, [first, *rest]) == [1, 2, 3, 4]
    assert total >= 0.45
    assert first_at < 0.15, f"first message after {first_at:.3f}s: held back until later ones"


async def test_slow_reader_pauses_the_guest_and_nothing_is_lost(runtime, types, progress):
    stream = runtime.invoke_stream(SERVICE, "Count", count(types, 1000))
    received = [await anext(stream)]
    await asyncio.sleep(0.3)
    # Read: 1; buffered: 2 (stream_buffer); one more blocked in send; so at most 4.
    assert 3 <= progress.last <= 4, progress.last
    await asyncio.sleep(0.1)
    assert progress.last <= 4  # still paused, not merely slow
    await collect(stream, received)
    assert ticks(types, received) == list(range(1, 1001))


async def test_early_close_stops_a_guest_that_honours_cancellation(runtime, types, progress):
    stream = runtime.invoke_stream(SERVICE, "Count", count(types, 1000))
    assert ticks(types, [await anext(stream), await anext(stream)]) == [1, 2]
    await stream.aclose()
    pool = pool_of(runtime)
    await until(lambda: pool.stats.idle == 1)
    stopped_at = progress.last
    assert stopped_at < 10
    assert pool.stats.discarded == 0
    await asyncio.sleep(0.05)
    assert progress.last == stopped_at
    assert ticks(types, await collect(runtime.invoke_stream(SERVICE, "Count", count(types, 3)))) == [1, 2, 3]


async def test_early_close_lets_a_stubborn_guest_finish_without_blocking(runtime, types, progress):
    stream = runtime.invoke_stream(SERVICE, "Stubborn", count(types, 2000))
    await anext(stream)
    await stream.aclose()
    pool = pool_of(runtime)
    assert pool.stats.busy == 1 or progress.last == 2000  # held while the guest runs
    await until(lambda: pool.stats.idle == 1)
    assert progress.last == 2000  # it ran to its end: its later sends failed at once
    assert pool.stats.discarded == 0
    assert ticks(types, await collect(runtime.invoke_stream(SERVICE, "Count", count(types, 2)))) == [1, 2]


async def test_cancelling_the_callers_task_cancels_the_call(runtime, types, progress):
    progress.delay = 0.01  # 1000 ticks take 10 s: the reader is always waiting for one
    received: list[bytes] = []
    task = asyncio.create_task(collect(runtime.invoke_stream(SERVICE, "Count", count(types, 1000)), received))
    await until(lambda: len(received) >= 2)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await until(lambda: pool_of(runtime).stats.idle == 1)
    assert progress.last < 1000


async def test_deadline_mid_stream_is_deadline_exceeded_and_stops_the_guest(runtime, types, progress):
    progress.delay = 0.05
    received: list[bytes] = []
    with pytest.raises(RpcError) as info:
        await collect(runtime.invoke_stream(SERVICE, "Count", count(types, 100), timeout=0.4), received)
    assert info.value.code == StatusCode.DEADLINE_EXCEEDED
    assert 2 <= len(received) < 100
    assert ticks(types, received) == list(range(1, len(received) + 1))
    await until(lambda: pool_of(runtime).stats.idle == 1)
    assert progress.last <= len(received) + 3


async def test_trap_mid_stream_is_internal_after_the_delivered_messages(runtime, types):
    received: list[bytes] = []
    with pytest.raises(RpcError) as info:
        await collect(runtime.invoke_stream(SERVICE, "TrapAt", count(types, 3)), received)
    assert ticks(types, received) == [1, 2, 3]
    assert info.value.code == StatusCode.INTERNAL
    assert "guest trapped in /st.v1.Streamer/TrapAt" in info.value.message
    pool = pool_of(runtime)
    await until(lambda: pool.stats.idle == 1)
    assert pool.stats.discarded == 1
    assert ticks(types, await collect(runtime.invoke_stream(SERVICE, "Count", count(types, 2)))) == [1, 2]


async def test_guest_error_after_some_messages_reaches_the_caller_after_them(runtime, types):
    received: list[bytes] = []
    with pytest.raises(RpcError) as info:
        await collect(runtime.invoke_stream(SERVICE, "Fail", count(types, 2)), received)
    assert ticks(types, received) == [1, 2]
    assert (info.value.code, info.value.message) == (StatusCode.FAILED_PRECONDITION, "requested failure")
    assert pool_of(runtime).stats.discarded == 0


async def test_message_of_the_wrong_type_is_internal_and_fails_the_send(runtime, types):
    with pytest.raises(RpcError) as info:
        await collect(runtime.invoke_stream(SERVICE, "Invalid", b""))
    assert info.value.code == StatusCode.INTERNAL
    assert "guest sent a message that is not a valid st.v1.Tick in /st.v1.Streamer/Invalid" in info.value.message


async def test_without_output_validation_the_bytes_pass_through(make_runtime, package):
    runtime = await make_runtime(validate_output=False)
    await runtime.deploy(package())
    assert await collect(runtime.invoke_stream(SERVICE, "Invalid", b"")) == [b"\xff\xff"]


async def test_output_in_the_final_envelope_of_a_stream_is_internal(runtime):
    with pytest.raises(RpcError) as info:
        await collect(runtime.invoke_stream(SERVICE, "Output", b""))
    assert info.value.code == StatusCode.INTERNAL
    assert "final response of a streaming call carries output" in info.value.message


async def test_open_stream_holds_its_instance_so_other_calls_wait(make_runtime, package, types):
    runtime = await make_runtime(stream_buffer=1)
    await runtime.deploy(package(pool=PoolConfig(1, 2)))
    first = runtime.invoke_stream(SERVICE, "Count", count(types, 100))
    second = runtime.invoke_stream(SERVICE, "Count", count(types, 100))
    await anext(first), await anext(second)
    with pytest.raises(RpcError) as info:
        await runtime.invoke(SERVICE, "Unary", count(types, 1), timeout=0.1)
    assert info.value.code == StatusCode.DEADLINE_EXCEEDED
    assert "waiting for a free instance" in info.value.message
    await first.aclose()
    assert types[1].FromString(await runtime.invoke(SERVICE, "Unary", count(types, 1))).i == 1
    assert len(await collect(second)) == 99
