# Integration tests of the runtime (okra_core.runtime) through its real boundaries:
# the wasmtime engine, real WAT guests (tests/fixtures/*.wat), real descriptor sets, the
# local actor system and the worker pool. No transport: calls go through Runtime.invoke.
#
# Test plan
# Deploy (all or nothing, each refusal a clear message naming what to change):
# - a package deploys; its service is discoverable by name with its schema; min warm.
# - an import from a host API the manifest does not request -> CapabilityError that names
#   the import and the manifest entry that would grant it; nothing is deployed.
# - an import from a namespace OKRA never links (env.*) -> CapabilityError.
# - a function narrowed away by host_apis[ns].functions -> CapabilityError naming it.
# - operator policy denying a requested host API -> CapabilityError.
# - a host API no plugin provides -> CapabilityError.
# - manifest ABI version unknown -> AbiError; module export reporting another version
#   than the manifest -> AbiError; wrong export type -> AbiError.
# - a module that traps in _initialize -> DeployError with the trap message.
# - a service already owned by another package -> DeployError.
# Calls:
# - echo through the guest; guest error codes and messages come back as RpcError.
# - unknown service / unknown method / streaming method -> UNIMPLEMENTED, never reaching
#   the guest; input that does not parse -> INVALID_ARGUMENT.
# - output that is not a valid response message -> INTERNAL.
# - a trap -> INTERNAL with the trap message; the instance is discarded and the service
#   keeps serving on a fresh one; same for a response pointer outside memory. A trap
#   after the guest wrote to stderr (a Go panic, out of memory) carries that first line.
# - okra.log: records reach the service's logger with structured fields; unknown level
#   is -INVALID_ARGUMENT to the guest; WASI stdout/stderr reach the log line by line.
# - all instances busy: callers wait; a caller whose deadline passes gets
#   DEADLINE_EXCEEDED; concurrent calls use up to pool.max instances.
# Lifecycle:
# - undeploy removes the service (UNIMPLEMENTED afterwards), redeploy swaps versions
#   while an in-flight call finishes on the old one; close drains.
import asyncio
import logging

import pytest
import wasmtime

from okra_core.config import RuntimeConfig
from okra_core.errors import AbiError, CapabilityError, DeployError
from okra_core.manifest import PoolConfig
from okra_core.package import Package
from okra_core.runtime import Runtime
from okra_core.status import RpcError, StatusCode
from support import FIXTURES_DIR, compile_protos, make_manifest

PROTO = """
syntax = "proto3";
package rt.v1;
message Blob { bytes data = 1; string note = 2; }
message Strict { string text = 1; }
service Echo {
  rpc Echo(Blob) returns (Blob);
  rpc Fail(Blob) returns (Blob);
  rpc Mismatch(Blob) returns (Strict);
  rpc Watch(Blob) returns (stream Blob);
}
service Other { rpc Echo(Blob) returns (Blob); }
"""


@pytest.fixture(scope="module")
def descriptors(tmp_path_factory):
    return compile_protos(tmp_path_factory.mktemp("protos"), {"rt/v1/rt.proto": PROTO})


@pytest.fixture(scope="module")
def messages(descriptors):
    from okra_core.descriptors import load_descriptor_set, service_schema

    schema = service_schema(load_descriptor_set(descriptors), descriptors, "rt.v1.Echo")
    return schema.methods["Echo"].input_class


def wat(name: str) -> bytes:
    return wasmtime.wat2wasm((FIXTURES_DIR / f"{name}.wat").read_text())


@pytest.fixture
def package(descriptors):
    def make(guest="echo", **overrides) -> Package:
        fields = dict(name="rt", services=("rt.v1.Echo",), host_apis={}, pool=PoolConfig(1, 2))
        fields.update(overrides)
        return Package.from_parts(
            manifest=make_manifest(**fields), wasm=wat(guest), descriptor_set=descriptors
        )

    return make


@pytest.fixture
async def runtime(tmp_path):
    runtime = Runtime(RuntimeConfig(engine_options={"cache_dir": str(tmp_path / "cache")}))
    await runtime.start()
    yield runtime
    await runtime.close(grace=2)


def blob(messages, data=b"", note=""):
    return messages(data=data, note=note).SerializeToString()


# -- deploy ---------------------------------------------------------------------------


async def test_deployed_service_is_discoverable_with_its_schema(runtime, package):
    assert await runtime.deploy(package()) == ["rt.v1.Echo"]
    assert runtime.services() == ["rt.v1.Echo"]
    schema = runtime.schema("rt.v1.Echo")
    assert sorted(schema.methods) == ["Echo", "Fail", "Mismatch", "Watch"]
    assert runtime.deployments()[0].actors["rt.v1.Echo"].pool.stats.idle == 1


async def test_ungranted_import_fails_deploy_naming_import_and_manifest_entry(runtime, package):
    with pytest.raises(CapabilityError) as info:
        await runtime.deploy(package("log"))
    assert str(info.value) == (
        "module imports okra.log.write, but the manifest does not grant it: add "
        '"okra.log" to "host_apis" in okra.service.json '
        '(in a project: a [host_apis."okra.log"] table in okra.toml)'
    )
    assert runtime.services() == []


async def test_import_from_a_foreign_namespace_is_refused(runtime, package):
    with pytest.raises(CapabilityError, match=r"imports env.get_secret from namespace 'env', which OKRA never links"):
        await runtime.deploy(package("import_env"))


async def test_function_narrowed_away_is_refused_by_name(runtime, package):
    with pytest.raises(CapabilityError, match=r'add "enabled" to host_apis\["okra.log"\]\["functions"\]'):
        await runtime.deploy(package("log", host_apis={"okra.log": {"functions": ["write"]}}))


async def test_operator_policy_narrows_what_a_manifest_may_request(tmp_path, package):
    config = RuntimeConfig(allowed_host_apis=frozenset(), engine_options={"cache_dir": str(tmp_path)})
    async with Runtime(config) as runtime:
        with pytest.raises(CapabilityError, match="operator policy does not allow"):
            await runtime.deploy(package("log", host_apis={"okra.log": {}}))


async def test_host_api_no_plugin_provides_is_refused(runtime, package):
    with pytest.raises(CapabilityError, match="no installed plugin provides it"):
        await runtime.deploy(package(host_apis={"okra.teleport": {}}))


async def test_bad_host_api_config_fails_deploy(runtime, package):
    with pytest.raises(DeployError, match="okra.log level 'loud'"):
        await runtime.deploy(package("log", host_apis={"okra.log": {"level": "loud"}}))


async def test_unknown_abi_version_in_manifest_is_refused(runtime, package):
    with pytest.raises(AbiError, match="guest ABI version 7, but this runtime supports versions 1, 2"):
        await runtime.deploy(package(abi_version=7))


async def test_module_reporting_another_abi_version_is_refused(runtime, package):
    with pytest.raises(AbiError, match="module reports guest ABI version 2, but its manifest says 1"):
        await runtime.deploy(package("version2"))
    assert runtime.services() == []


async def test_export_with_the_wrong_type_is_refused(runtime, package):
    with pytest.raises(AbiError, match=r"okra_handle' has type \(i32, i32\) -> \(i32\)"):
        await runtime.deploy(package("wrong_handle_type"))


async def test_trap_while_starting_fails_deploy_with_the_trap(runtime, package):
    with pytest.raises(DeployError, match="traps while starting"):
        await runtime.deploy(package("init_trap"))
    assert runtime.services() == []


async def test_service_owned_by_another_package_is_refused(runtime, package):
    await runtime.deploy(package())
    with pytest.raises(DeployError, match="already deployed by package 'rt'"):
        await runtime.deploy(package(name="intruder"))


# -- calls ----------------------------------------------------------------------------


async def test_echo_goes_through_the_guest(runtime, package, messages):
    await runtime.deploy(package())
    for size in (0, 100, 64 * 1024, 1024 * 1024):
        payload = blob(messages, b"x" * size, "hi")
        assert await runtime.invoke("rt.v1.Echo", "Echo", payload) == payload


async def test_guest_error_comes_back_with_code_and_message(runtime, package, messages):
    await runtime.deploy(package())
    with pytest.raises(RpcError) as info:
        await runtime.invoke("rt.v1.Echo", "Fail", blob(messages))
    assert info.value.code == StatusCode.FAILED_PRECONDITION
    assert info.value.message == "requested failure"


@pytest.mark.parametrize(
    "service, method, fragment",
    [
        ("rt.v1.Nope", "Echo", "service rt.v1.Nope is not deployed"),
        ("rt.v1.Echo", "Nope", "method Nope not found in service rt.v1.Echo"),
        ("rt.v1.Echo", "Watch", "streaming method"),
    ],
)
async def test_unknown_targets_are_unimplemented(runtime, package, messages, service, method, fragment):
    await runtime.deploy(package())
    with pytest.raises(RpcError) as info:
        await runtime.invoke(service, method, blob(messages))
    assert info.value.code == StatusCode.UNIMPLEMENTED
    assert fragment in info.value.message


async def test_input_that_does_not_parse_is_invalid_argument(runtime, package):
    await runtime.deploy(package())
    with pytest.raises(RpcError) as info:
        await runtime.invoke("rt.v1.Echo", "Echo", b"\x0a\xff\xff")
    assert info.value.code == StatusCode.INVALID_ARGUMENT
    assert "not a valid rt.v1.Blob" in info.value.message
    assert await runtime.invoke("rt.v1.Echo", "Echo", b"") == b""


async def test_output_that_is_not_the_response_type_is_internal(runtime, package, messages):
    await runtime.deploy(package())
    with pytest.raises(RpcError) as info:  # bytes field echoed into a string field
        await runtime.invoke("rt.v1.Echo", "Mismatch", blob(messages, b"\xff\xfe"))
    assert info.value.code == StatusCode.INTERNAL
    assert "not a valid rt.v1.Strict" in info.value.message


async def test_trap_is_internal_and_the_service_keeps_serving(runtime, package, messages):
    await runtime.deploy(package("trap", pool=PoolConfig(1, 1)))
    pool = runtime.deployments()[0].actors["rt.v1.Echo"].pool
    for attempt in range(3):
        with pytest.raises(RpcError) as info:
            await runtime.invoke("rt.v1.Echo", "Echo", blob(messages))
        assert info.value.code == StatusCode.INTERNAL
        assert "guest trapped in /rt.v1.Echo/Echo" in info.value.message
        assert "unreachable" in info.value.message
    await asyncio.sleep(0.05)
    assert pool.stats.discarded == 3 and pool.stats.created == 4


async def test_trap_carries_the_first_line_the_guest_wrote_to_stderr(runtime, package, messages):
    await runtime.deploy(package("stderr_trap", pool=PoolConfig(1, 1)))
    for attempt in range(2):  # the line is the current call's, not an earlier one's
        with pytest.raises(RpcError) as info:
            await runtime.invoke("rt.v1.Echo", "Echo", blob(messages))
        assert info.value.code == StatusCode.INTERNAL
        assert info.value.message.endswith("(the guest wrote to stderr: 'panic: boom')")
        assert info.value.message.count("panic: boom") == 1


async def test_response_outside_memory_is_internal_and_discarded(runtime, package, messages):
    await runtime.deploy(package("bad_pointer", pool=PoolConfig(1, 1)))
    with pytest.raises(RpcError) as info:
        await runtime.invoke("rt.v1.Echo", "Echo", blob(messages))
    assert info.value.code == StatusCode.INTERNAL
    assert "broke the ABI" in info.value.message
    await asyncio.sleep(0.05)
    assert runtime.deployments()[0].actors["rt.v1.Echo"].pool.stats.discarded == 1


async def test_okra_log_records_reach_the_service_log_with_fields(runtime, package, messages, caplog):
    await runtime.deploy(package("log", host_apis={"okra.log": {}}))
    with caplog.at_level(logging.DEBUG, logger="okra.service.rt.v1.Echo"):
        output = await runtime.invoke("rt.v1.Echo", "Echo", blob(messages))
    enabled, written, unknown_level = messages.FromString(output).data
    assert (enabled, written) == (1, 0)
    assert unknown_level == 256 - 3  # -INVALID_ARGUMENT as a byte
    [record] = [r for r in caplog.records if r.name == "okra.service.rt.v1.Echo"]
    assert record.levelno == logging.INFO
    assert record.getMessage() == 'hello name="Ada Lovelace" count=3 ok=true ratio=0.5'
    assert record.okra_fields == {"name": "Ada Lovelace", "count": 3, "ok": True, "ratio": 0.5}


async def test_okra_log_level_setting_filters_records(runtime, package, messages, caplog):
    await runtime.deploy(package("log", host_apis={"okra.log": {"level": "error"}}))
    with caplog.at_level(logging.DEBUG, logger="okra.service.rt.v1.Echo"):
        output = await runtime.invoke("rt.v1.Echo", "Echo", blob(messages))
    assert messages.FromString(output).data[0] == 0  # DEBUG not enabled
    assert not [r for r in caplog.records if r.name == "okra.service.rt.v1.Echo"]


async def test_guest_stdout_and_stderr_go_to_the_log_line_by_line(runtime, package, caplog):
    with caplog.at_level(logging.INFO, logger="okra.service.rt.v1.Echo"):
        await runtime.deploy(package("stdout"))
        await runtime.invoke("rt.v1.Echo", "Echo", b"")
    lines = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "okra.service.rt.v1.Echo"]
    assert (logging.INFO, "init") in lines
    assert (logging.INFO, "hello stdout") in lines
    assert (logging.WARNING, "oops") in lines


async def test_busy_pool_makes_callers_wait_and_expired_ones_fail(runtime, package):
    await runtime.deploy(package("spin", pool=PoolConfig(1, 1)))
    slow = asyncio.create_task(runtime.invoke("rt.v1.Echo", "Echo", b"", timeout=30))
    await asyncio.sleep(0.005)
    with pytest.raises(RpcError) as info:
        await runtime.invoke("rt.v1.Echo", "Echo", b"", timeout=0.001)
    assert info.value.code == StatusCode.DEADLINE_EXCEEDED
    assert await slow == b""
    assert await runtime.invoke("rt.v1.Echo", "Echo", b"", timeout=30) == b""


async def test_concurrent_calls_use_up_to_pool_max_instances(runtime, package):
    await runtime.deploy(package("spin", pool=PoolConfig(0, 2)))
    pool = runtime.deployments()[0].actors["rt.v1.Echo"].pool
    await asyncio.gather(*(runtime.invoke("rt.v1.Echo", "Echo", b"") for _ in range(6)))
    assert pool.stats.created == 2  # the probe, and one more; never more than max


# -- lifecycle ------------------------------------------------------------------------


async def test_undeploy_removes_the_service(runtime, package, messages):
    await runtime.deploy(package())
    assert await runtime.undeploy("rt") == ["rt.v1.Echo"]
    with pytest.raises(RpcError) as info:
        await runtime.invoke("rt.v1.Echo", "Echo", blob(messages))
    assert info.value.code == StatusCode.UNIMPLEMENTED
    with pytest.raises(DeployError, match="nothing named 'rt' is deployed"):
        await runtime.undeploy("rt")


async def test_redeploy_swaps_versions_while_inflight_calls_finish(runtime, package, messages):
    await runtime.deploy(package("spin", version="1.0.0"))
    inflight = asyncio.create_task(runtime.invoke("rt.v1.Echo", "Echo", b""))
    await asyncio.sleep(0.005)
    await runtime.deploy(package("echo", version="2.0.0", services=("rt.v1.Echo", "rt.v1.Other")))
    payload = blob(messages, b"v2")
    assert await runtime.invoke("rt.v1.Echo", "Echo", payload) == payload
    assert await runtime.invoke("rt.v1.Other", "Echo", payload) == payload
    assert await inflight == b""  # finished on version 1
    assert [d.version for d in runtime.deployments()] == ["2.0.0"]
    # Dropping a service in the next version undeploys it.
    await runtime.deploy(package("echo", version="3.0.0"))
    assert runtime.services() == ["rt.v1.Echo"]


async def test_listeners_hear_deploys_and_undeploys(runtime, package):
    events = []
    runtime.subscribe(lambda event, service: events.append((event, service)))
    await runtime.deploy(package())
    await runtime.undeploy("rt.v1.Echo")
    assert events == [("deployed", "rt.v1.Echo"), ("undeployed", "rt.v1.Echo")]


async def test_close_drains_inflight_calls(tmp_path, package):
    runtime = Runtime(RuntimeConfig(engine_options={"cache_dir": str(tmp_path)}))
    await runtime.start()
    await runtime.deploy(package("spin"))
    inflight = asyncio.create_task(runtime.invoke("rt.v1.Echo", "Echo", b""))
    await asyncio.sleep(0.005)
    await runtime.close(grace=10)
    assert await inflight == b""
