# okra.call: one service calling another through the host, end to end.
#
# A real Runtime with the wasmtime engine runs three real guests: relay.wat (its input
# is an okra.call CallRequest, which it hands to okra.call.invoke as it is, answering
# with the callee's response or error), echo.wat (the callee) and forever.wat (a callee
# that never answers). The relay's manifest declares its dependencies in
# host_apis["okra.call"]["services"].
#
# Test plan
# - a declared dependency is called and its response comes back through the guest.
# - the callee's error code and message reach the caller's caller unchanged.
# - an undeclared service is denied (PERMISSION_DENIED naming what to declare); the
#   denial is audited: logged to okra.audit, counted in Runtime.stats and in the
#   okra_denials_total metric.
# - a declared but undeployed service -> UNIMPLEMENTED.
# - the caller's deadline bounds the callee: a callee that never answers is stopped at
#   the caller's deadline (DEADLINE_EXCEEDED), not at the default 30 s; a CallRequest
#   timeout shorter than the caller's deadline bounds it too.
# - A -> A: a singleton calling itself fails at once with FAILED_PRECONDITION naming the
#   chain (not a deadlock until timeout).
# - trace context (traceparent, tracestate) of the incoming call goes along; metadata the
#   guest sets goes along; reserved metadata keys are refused.
# - malformed CallRequests (bad names, varint where bytes belong, truncated) ->
#   INVALID_ARGUMENT without allocating.
# - settings: services must be fully qualified names; unknown keys fail the deploy, and
#   so does "rule" (the key only a policy rule's settings carry, for its name).
# - policy: a rule whose okra.call services leave out a declared dependency fails the
#   deploy naming the rule; a rule listing it deploys.
import asyncio
import logging
import time

import pytest
import wasmtime

from okra_core.config import RuntimeConfig
from okra_core.errors import CapabilityError, DeployError
from okra_core.hostapi import HostContext, HostError, call_host_function
from okra_core.manifest import ActorConfig, PoolConfig
from okra_core.package import Package
from okra_core.policy import Policy
from okra_core.runtime import Runtime
from okra_core.status import RpcError, StatusCode
from okra_plugins.hostapi_call import CallAPI, decode_request
from hostapi_basic_support import ByteMemory
from support import FIXTURES_DIR, compile_protos, make_manifest

PROTO = """
syntax = "proto3";
package relay.v1;
message MetadataEntry { string key = 1; string value = 2; }
message CallRequest {
  string service = 1; string method = 2; bytes payload = 3;
  repeated MetadataEntry metadata = 4; uint64 timeout_ms = 5;
}
message Blob { bytes data = 1; string note = 2; }
service Relay { rpc Relay(CallRequest) returns (Blob); }
service Echo { rpc Echo(Blob) returns (Blob); rpc Fail(Blob) returns (Blob); }
service Forever { rpc Echo(Blob) returns (Blob); }
"""
RELAY, ECHO, FOREVER = "relay.v1.Relay", "relay.v1.Echo", "relay.v1.Forever"


@pytest.fixture(scope="module")
def descriptors(tmp_path_factory):
    return compile_protos(tmp_path_factory.mktemp("protos"), {"relay/v1/relay.proto": PROTO})


@pytest.fixture(scope="module")
def messages(descriptors):
    from okra_core.descriptors import load_descriptor_set, service_schema

    pool = load_descriptor_set(descriptors)
    relay = service_schema(pool, descriptors, RELAY).methods["Relay"]
    return relay.input_class, relay.output_class


def wat(name: str) -> bytes:
    return wasmtime.wat2wasm((FIXTURES_DIR / f"{name}.wat").read_text())


@pytest.fixture
def package(descriptors):
    def make(name, guest, services, host_apis=None, **fields) -> Package:
        manifest = make_manifest(
            name=name, services=services, host_apis=host_apis or {}, pool=PoolConfig(1, 2),
            **fields,
        )
        return Package.from_parts(manifest=manifest, wasm=wat(guest), descriptor_set=descriptors)

    return make


async def started(tmp_path, **config) -> Runtime:
    runtime = Runtime(RuntimeConfig(engine_options={"cache_dir": str(tmp_path / "cache")}, **config))
    await runtime.start()
    return runtime


@pytest.fixture
async def runtime(tmp_path, package):
    runtime = await started(tmp_path)
    await runtime.deploy(package("echo", "echo", (ECHO,)))
    await runtime.deploy(package("forever", "forever", (FOREVER,)))
    yield runtime
    await runtime.close(grace=0)


def relay_package(package, services=(ECHO, FOREVER, "missing.v1.Missing"), **fields):
    return package("relay", "relay", (RELAY,), {"okra.call": {"services": list(services)}}, **fields)


def relay_request(messages, service, method, data=b"", **fields):
    CallRequest, Blob = messages
    payload = Blob(data=data).SerializeToString()
    return CallRequest(service=service, method=method, payload=payload, **fields).SerializeToString()


async def call_relay(runtime, messages, service, method, data=b"", timeout=5.0, metadata=(), **fields):
    _, Blob = messages
    out = await runtime.invoke(
        RELAY, "Relay", relay_request(messages, service, method, data, **fields),
        timeout=timeout, metadata=metadata,
    )
    return Blob.FromString(out)


async def test_a_declared_dependency_answers_through_the_guest(runtime, package, messages):
    await runtime.deploy(relay_package(package))
    reply = await call_relay(runtime, messages, ECHO, "Echo", b"over the wire")
    assert reply.data == b"over the wire"
    large = bytes(range(256)) * 100  # beyond the guest's 16-byte buffer: fetched with take
    assert (await call_relay(runtime, messages, ECHO, "Echo", large)).data == large


async def test_the_callees_error_reaches_the_caller_unchanged(runtime, package, messages):
    await runtime.deploy(relay_package(package))
    with pytest.raises(RpcError) as info:
        await call_relay(runtime, messages, ECHO, "Fail")
    assert info.value.code == StatusCode.FAILED_PRECONDITION
    assert info.value.message == "requested failure"


async def test_an_undeclared_service_is_denied_audited_and_counted(runtime, package, messages, caplog):
    await runtime.deploy(relay_package(package, services=(FOREVER,)))
    with caplog.at_level(logging.WARNING, logger="okra.audit"), pytest.raises(RpcError) as info:
        await call_relay(runtime, messages, ECHO, "Echo")
    assert info.value.code == StatusCode.PERMISSION_DENIED
    assert f'add "{ECHO}" there' in info.value.message
    assert f"{RELAY} may not call {ECHO}" in info.value.message
    [record] = [r for r in caplog.records if r.name == "okra.audit"]
    assert record.okra_audit["service"] == RELAY and record.okra_audit["api"] == "okra.call"
    assert runtime.stats(RELAY)["denials"] == {"okra.call": 1}
    assert f'okra_denials_total{{service="{RELAY}",api="okra.call"}} 1' in runtime.metrics.render()


async def test_a_declared_but_undeployed_service_is_unimplemented(runtime, package, messages):
    await runtime.deploy(relay_package(package))
    with pytest.raises(RpcError) as info:
        await call_relay(runtime, messages, "missing.v1.Missing", "Echo")
    assert info.value.code == StatusCode.UNIMPLEMENTED


async def test_the_callers_deadline_stops_a_callee_that_never_answers(runtime, package, messages):
    await runtime.deploy(relay_package(package))
    started_at = time.monotonic()
    with pytest.raises(RpcError) as info:
        await call_relay(runtime, messages, FOREVER, "Echo", timeout=0.5)
    assert info.value.code == StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - started_at < 3.0


async def test_a_call_timeout_shorter_than_the_deadline_bounds_the_callee(runtime, package, messages):
    await runtime.deploy(relay_package(package))
    started_at = time.monotonic()
    with pytest.raises(RpcError) as info:
        await call_relay(runtime, messages, FOREVER, "Echo", timeout=20, timeout_ms=300)
    assert info.value.code == StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - started_at < 3.0


async def test_a_singleton_calling_itself_fails_fast_naming_the_chain(runtime, package, messages):
    CallRequest, _ = messages
    await runtime.deploy(
        relay_package(package, services=(RELAY, ECHO), actor=ActorConfig(kind="singleton"))
    )
    inner = relay_request(messages, ECHO, "Echo", b"x")
    outer = CallRequest(service=RELAY, method="Relay", payload=inner).SerializeToString()
    started_at = time.monotonic()
    with pytest.raises(RpcError) as info:
        await runtime.invoke(RELAY, "Relay", outer, timeout=10)
    assert info.value.code == StatusCode.FAILED_PRECONDITION
    assert f"{RELAY} -> {RELAY}" in info.value.message
    assert time.monotonic() - started_at < 2.0


# -- the host function on its own, with a recording environment ---------------------------


class Recorder:
    def __init__(self, runtime):
        self.calls = []
        self.env = runtime.host_environment
        self.env_invoke = self.env.invoke

    def __call__(self, ctx, service, method, payload, metadata, timeout):
        self.calls.append((service, method, payload, list(metadata), timeout))
        return b"answer"


def invoke_fn(runtime, services, recorder):
    env = runtime.host_environment
    env.invoke = recorder
    [fn] = CallAPI().functions({"services": services}, env)
    return fn


def context(metadata=(), deadline_in=None):
    ctx = HostContext(RELAY, logging.getLogger("test"))
    ctx.memory = ByteMemory(4096)
    ctx.metadata = metadata
    ctx.deadline = None if deadline_in is None else time.monotonic() + deadline_in
    return ctx


def run(fn, ctx, request: bytes):
    ctx.memory.write(100, request)
    return call_host_function(fn, ctx, (100, len(request), 2000, 1000))


async def test_trace_context_and_guest_metadata_go_along(tmp_path, messages):
    runtime = await started(tmp_path)
    recorder = Recorder(runtime)
    fn = invoke_fn(runtime, [ECHO], recorder)
    ctx = context(metadata=[("traceparent", "00-abc-def-01"), ("x-other", "no"),
                            ("tracestate", "k=v")], deadline_in=2.0)
    request = relay_request(messages, ECHO, "Echo", metadata=[{"key": "x-mine", "value": "1"}])
    assert run(fn, ctx, request) == len(b"answer")
    assert ctx.memory.read(2000, 6) == b"answer"
    [(service, method, _, metadata, timeout)] = recorder.calls
    assert (service, method) == (ECHO, "Echo")
    assert metadata == [("x-mine", "1"), ("traceparent", "00-abc-def-01"), ("tracestate", "k=v")]
    assert 0 < timeout <= 2.0
    await runtime.close()


async def test_a_passed_deadline_is_refused_before_calling(tmp_path, messages):
    runtime = await started(tmp_path)
    recorder = Recorder(runtime)
    fn = invoke_fn(runtime, [ECHO], recorder)
    ctx = context(deadline_in=-0.1)
    assert run(fn, ctx, relay_request(messages, ECHO, "Echo")) == -StatusCode.DEADLINE_EXCEEDED
    assert recorder.calls == []
    await runtime.close()


@pytest.mark.parametrize(
    "request_bytes, fragment",
    [
        (b"\x0a\x03a.b\x12\x00", "not a method name"),
        (b"\x0a\x01x\x12\x04Echo", "not a fully qualified service name"),
        (b"\x08\x80\x80\x80\x80\x10", "malformed CallRequest"),  # field 1 as a huge varint
        (b"\x1a\xff\xff\xff\x0f", "malformed CallRequest"),  # truncated payload
        (b"\x0a\x02\xff\xfe", "malformed CallRequest"),  # not UTF-8
    ],
)
async def test_malformed_call_requests_are_invalid_argument(tmp_path, request_bytes, fragment):
    runtime = await started(tmp_path)
    recorder = Recorder(runtime)
    fn = invoke_fn(runtime, [ECHO], recorder)
    ctx = context()
    assert run(fn, ctx, request_bytes) == -StatusCode.INVALID_ARGUMENT
    assert fragment in ctx.pending.decode()
    assert recorder.calls == []
    await runtime.close()


@pytest.mark.parametrize("key", ["grpc-timeout", ":authority", "content-type", "Upper", "te"])
def test_reserved_or_invalid_metadata_keys_are_refused(messages, key):
    request = relay_request(messages, ECHO, "Echo", metadata=[{"key": key, "value": "v"}])
    with pytest.raises(HostError) as info:
        decode_request(request)
    assert info.value.code == StatusCode.INVALID_ARGUMENT


# -- settings and policy ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "settings, fragment",
    [
        ({"services": ["Echo"]}, "fully qualified service names"),
        ({"services": "relay.v1.Echo"}, "fully qualified service names"),
        ({"service": [ECHO]}, "unknown okra.call settings: service"),
        ({"services": [ECHO], "rule": "security-team"}, "unknown okra.call settings: rule"),
    ],
)
async def test_bad_settings_fail_the_deploy(runtime, package, settings, fragment):
    with pytest.raises(DeployError, match=fragment):
        await runtime.deploy(package("relay", "relay", (RELAY,), {"okra.call": settings}))


async def test_a_policy_rule_leaving_out_a_dependency_fails_the_deploy_naming_it(tmp_path, package):
    policy = Policy.parse({"rule": [
        {"name": "only-echo", "packages": ["relay"], "host_apis": {"okra.call": {"services": [ECHO]}}},
    ]}, source="policy.toml")
    runtime = await started(tmp_path, policy=policy)
    try:
        with pytest.raises(CapabilityError) as info:
            await runtime.deploy(relay_package(package, services=(ECHO, FOREVER)))
        message = str(info.value)
        assert "rule 'only-echo' (policy.toml)" in message and FOREVER in message
        await runtime.deploy(relay_package(package, services=(ECHO,)))
        assert RELAY in runtime.services()
    finally:
        await runtime.close(grace=0)


async def test_concurrent_relayed_calls_all_arrive(runtime, package, messages):
    await runtime.deploy(relay_package(package))
    replies = await asyncio.gather(
        *(call_relay(runtime, messages, ECHO, "Echo", f"n{i}".encode()) for i in range(40))
    )
    assert sorted(r.data for r in replies) == sorted(f"n{i}".encode() for i in range(40))
