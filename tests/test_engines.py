# Test plan: choosing an engine per package, refusing what an engine cannot enforce, and
# the wasm3 engine inside the runtime and the CLI. (What every engine does with a module
# is the conformance suite's: tests/test_engine_conformance.py.) Real WAT guests, real
# descriptor sets, the real runtime; the CLI cases run `okra` as a user does.
#
# Engine choice (Runtime.engine_for)
#   - no preference: the default engine; a manifest preferring wasm3 runs on wasm3
#     (stats say so); force_engine runs it on the default whatever it prefers
#   - a preference the operator does not allow, or for an engine that is not installed,
#     falls back to the default with a warning naming both
#   - a default engine outside the allowed set is a ConfigError
# What an engine cannot enforce (wasm3 with meter=false: no fuel checks)
#   - limits.timeout_seconds in the manifest: DeployError naming the limit, the engine
#     and both ways out; nothing deployed
#   - a time limit from an operator policy rule: refused naming the rule
#   - allow_unenforced_limits: deployed, with a warning
#   - wasmtime without epoch checks refuses it too (capabilities, not engine names)
# wasm3 in the runtime
#   - echo round trip through Runtime.invoke
#   - metered (the default): a package with a time limit deploys, and a guest that never
#     returns is stopped at it (DEADLINE_EXCEEDED, "the guest was stopped")
#   - unmetered: a guest that never returns: its caller gets DEADLINE_EXCEEDED at the
#     deadline, and other services keep answering meanwhile (wasm3 releases the GIL; no
#     inline calls)
#   - closing an instance while its call runs frees it when the call returns, no crash
#   - instances are freed: thousands of instantiate/close cycles leave memory flat
#   - without pywasm3 the engine is still listed, and asking for it (or okra plugins)
#     says what to install
# wasm3 against hostile modules
#   - code that does not validate (an opcode that does not exist, which wasm3 would run
#     and crash on) is a PackageError; imported memory a DeployError saying so
#   - deep recursion is wasm3's "stack overflow" trap on a default thread, and refused
#     with a trap naming the stack sizes on a 1 MiB thread: never a native crash
#   - fd_write with 1,000 iovecs of 1 MiB each copies 1 MiB (a short write), fast, on
#     both engines; 1,100 iovecs are EINVAL
#   - poll_oneoff with more than 256 subscriptions (or none) is EINVAL
# Starting
#   - on both engines, a package whose _initialize never returns fails its deploy at its
#     time limit (InstanceLimits.start_seconds from limits.timeout_seconds) instead of
#     hanging it
# CLI
#   - okra serve --engine wasm3 serves and says which engine each service runs on;
#     okra call reaches it
#   - okra serve --engine wasm3 --engine-option wasm3.meter=false of a package with
#     limits.timeout_seconds fails in one line naming --allow-unenforced-limits; a bad
#     engine option is a one-line error
#   - --allow-engine without the default engine is a one-line error
#   - okra plugins shows each engine's capabilities (table and --json)
import asyncio
import ctypes
import json
import logging
import os
import resource
import subprocess
import threading
import time

import pytest
import wasmtime

from okra_core import abi
from okra_core.config import RuntimeConfig
from okra_core.errors import ConfigError, DeployError, PackageError
from okra_core.hostapi import HostContext
from okra_core.manifest import Limits, PoolConfig
from okra_core.package import Package, write_package
from okra_core.plugins import get_registry
from okra_core.policy import Policy
from okra_core.runtime import Runtime
from okra_core.status import RpcError, StatusCode
from support import FIXTURES_DIR, compile_protos, make_manifest, stop_processes
from test_cli import OKRA, assert_one_line_error, okra

PROTO = """
syntax = "proto3";
package en.v1;
message Blob { bytes data = 1; string note = 2; }
service Echo { rpc Echo(Blob) returns (Blob); }
service Spin { rpc Echo(Blob) returns (Blob); }
"""


@pytest.fixture(scope="module")
def descriptors(tmp_path_factory):
    return compile_protos(tmp_path_factory.mktemp("protos"), {"en/v1/en.proto": PROTO})


def wat(name: str) -> bytes:
    return wasmtime.wat2wasm((FIXTURES_DIR / f"{name}.wat").read_text())


@pytest.fixture
def package(descriptors):
    def make(guest="echo", service="en.v1.Echo", **overrides) -> Package:
        fields = dict(name=guest.replace("_", "-"), services=(service,), host_apis={},
                      pool=PoolConfig(1, 2))
        fields.update(overrides)
        return Package.from_parts(
            manifest=make_manifest(**fields), wasm=wat(guest), descriptor_set=descriptors
        )

    return make


#: wasm3 without its fuel checks: an engine that cannot stop a running guest.
UNMETERED = {"wasm3": {"cache_dir": None, "meter": False}}


def config(tmp_path, **overrides) -> RuntimeConfig:
    fields = dict(
        engine_options={"cache_dir": str(tmp_path / "cache")},
        engines_options={"wasm3": {"cache_dir": None}},
        data_dir=str(tmp_path / "data"),
    )
    fields.update(overrides)
    return RuntimeConfig(**fields)


def blob(data: bytes) -> bytes:
    return b"\x0a" + abi.encode_varint(len(data)) + data


# -- engine choice -----------------------------------------------------------------------


async def test_a_package_runs_on_the_engine_its_manifest_prefers(tmp_path, package):
    async with Runtime(config(tmp_path)) as runtime:
        await runtime.deploy(package())
        await runtime.deploy(package(service="en.v1.Spin", name="echo-two", engine="wasm3"))
        assert await runtime.invoke("en.v1.Spin", "Echo", blob(b"w3")) == blob(b"w3")
        assert runtime.stats("en.v1.Echo")["engine"] == "wasmtime"
        assert runtime.stats("en.v1.Spin")["engine"] == "wasm3"
        assert await runtime.invoke("en.v1.Echo", "Echo", blob(b"hi")) == blob(b"hi")


async def test_a_forced_engine_overrides_the_preference(tmp_path, package):
    async with Runtime(config(tmp_path, force_engine=True)) as runtime:
        await runtime.deploy(package(engine="wasm3"))
        assert runtime.stats("en.v1.Echo")["engine"] == "wasmtime"


@pytest.mark.parametrize(
    "settings, wanted, why",
    [
        ({"engines": frozenset({"wasmtime"})}, "wasm3", "which the operator does not allow"),
        ({}, "nosuch", "which is not available"),
    ],
)
async def test_a_preference_that_cannot_be_met_falls_back_to_the_default(
    tmp_path, package, caplog, settings, wanted, why
):
    async with Runtime(config(tmp_path, **settings)) as runtime:
        await runtime.deploy(package(engine=wanted))
        assert runtime.stats("en.v1.Echo")["engine"] == "wasmtime"
    assert any(
        f"prefers engine {wanted}, {why}" in r.getMessage() and "runs on wasmtime" in r.getMessage()
        for r in caplog.records
    ), caplog.text


def test_a_default_engine_outside_the_allowed_ones_is_a_config_error():
    with pytest.raises(ConfigError, match="default engine 'wasmtime' is not among the allowed engines"):
        RuntimeConfig(engines=frozenset({"wasm3"}))


# -- limits an engine cannot enforce -----------------------------------------------------


async def test_a_time_limit_on_an_engine_without_deadlines_is_refused_naming_the_ways_out(
    tmp_path, package
):
    async with Runtime(config(tmp_path, engines_options=UNMETERED)) as runtime:
        with pytest.raises(DeployError) as info:
            await runtime.deploy(package(engine="wasm3", limits=Limits(timeout_seconds=2)))
        assert runtime.services() == []
    message = str(info.value)
    assert "echo requires a call time limit (limits.timeout_seconds = 2 in its manifest)" in message
    assert "engine wasm3 cannot enforce" in message
    assert "--engine wasmtime" in message
    assert "--allow-unenforced-limits" in message


async def test_a_time_limit_from_policy_is_refused_naming_the_rule(tmp_path, package):
    rules = tmp_path / "policy.toml"
    rules.write_text('[[rule]]\nname = "short-calls"\nlimits = { timeout_seconds = 1 }\n')
    settings = config(tmp_path, policy=Policy.load(rules), engines_options=UNMETERED)
    async with Runtime(settings) as runtime:
        with pytest.raises(DeployError, match=r"a call time limit \(from operator policy rule 'short-calls'"):
            await runtime.deploy(package(engine="wasm3"))


async def test_the_operator_may_accept_unenforced_limits(tmp_path, package, caplog):
    settings = config(tmp_path, allow_unenforced_limits=True, engines_options=UNMETERED)
    async with Runtime(settings) as runtime:
        await runtime.deploy(package(engine="wasm3", limits=Limits(timeout_seconds=2)))
        assert runtime.stats("en.v1.Echo")["engine"] == "wasm3"
    assert "deploying it anyway, as the operator allows" in caplog.text


async def test_refusal_follows_capabilities_not_engine_names(tmp_path, package):
    settings = config(tmp_path, engine_options={"cache_dir": None, "epoch_interruption": False})
    async with Runtime(settings) as runtime:
        with pytest.raises(DeployError, match="engine wasmtime cannot enforce"):
            await runtime.deploy(package(limits=Limits(timeout_seconds=2)))


# -- wasm3 in the runtime ------------------------------------------------------------------


async def test_metered_wasm3_takes_a_time_limit_and_stops_a_runaway_guest_at_it(tmp_path, package):
    async with Runtime(config(tmp_path, engine="wasm3", engine_options={"cache_dir": None})) as runtime:
        await runtime.deploy(package("forever", service="en.v1.Spin", limits=Limits(timeout_seconds=0.5)))
        started = time.monotonic()
        with pytest.raises(RpcError) as info:
            await runtime.invoke("en.v1.Spin", "Echo", blob(b""), timeout=30)
        assert info.value.code == StatusCode.DEADLINE_EXCEEDED
        assert "the guest was stopped at the service's time limit of 0.5s" in info.value.message
        assert time.monotonic() - started < 2.0
        stats = runtime.stats("en.v1.Spin")
        assert stats["engine"] == "wasm3"


async def test_a_runaway_guest_on_unmetered_wasm3_times_out_its_caller_and_stops_no_one_else(
    tmp_path, package
):
    settings = config(tmp_path, engine="wasm3", engine_options={"cache_dir": None, "meter": False})
    async with Runtime(settings) as runtime:
        await runtime.deploy(package("forever", service="en.v1.Spin"))
        await runtime.deploy(package())
        started = time.monotonic()
        runaway = asyncio.create_task(runtime.invoke("en.v1.Spin", "Echo", blob(b""), timeout=1.0))
        await asyncio.sleep(0.2)
        # The event loop and other services go on while the guest spins in a thread.
        for _ in range(20):
            assert await runtime.invoke("en.v1.Echo", "Echo", blob(b"x"), timeout=5) == blob(b"x")
        assert time.monotonic() - started < 1.0
        with pytest.raises(RpcError) as info:
            await runaway
        assert info.value.code == StatusCode.DEADLINE_EXCEEDED
        assert time.monotonic() - started < 3.0


def test_closing_an_instance_while_its_call_runs_frees_it_when_the_call_returns():
    engine = get_registry().engine("wasm3", cache_dir=None, meter=False)
    module = engine.compile(wat("spin"))
    instance = module.instantiate(abi.abi_functions(1), lambda fd, data: None, HostContext("t", logging.getLogger("t")))
    outcome = {}

    def call():
        try:
            instance.handle(abi.encode_request(abi.request_prefix("en.v1.Spin", "Echo"), b""))
        except Exception as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=call)
    thread.start()
    time.sleep(0.05)
    instance.close()  # the guest is still looping
    thread.join(timeout=60)
    assert not thread.is_alive()
    assert "closed while the call ran" in str(outcome["error"])
    instance.close()


def test_wasm3_instances_are_freed(tmp_path):
    engine = get_registry().engine("wasm3", cache_dir=None)
    module = engine.compile(wat("echo"))  # 2 pages of memory, grown per request
    request = abi.encode_request(abi.request_prefix("en.v1.Echo", "Echo"), b"x" * 300_000)

    def cycle(n):
        for _ in range(n):
            instance = module.instantiate(abi.abi_functions(1), lambda fd, data: None,
                                          HostContext("t", logging.getLogger("t")))
            instance.handle(request)  # grows its memory past 300 KB
            instance.close()

    cycle(200)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    cycle(2000)  # ~700 MB if instances leaked
    grown_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown_kb < 100_000, f"max RSS grew by {grown_kb} KiB over 2000 instances"


def test_without_pywasm3_the_engine_says_what_to_install(monkeypatch):
    import importlib.util
    import sys

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "wasm3" else real(name, *a)
    )
    import okra_plugins.engine_wasm3 as package
    for module in [m for m in sys.modules if m.startswith("okra_plugins.engine_wasm3.")]:
        monkeypatch.delitem(sys.modules, module)  # imported afresh, finding no pywasm3
        monkeypatch.delattr(package, module.rpartition(".")[2], raising=False)
    assert "wasm3" in get_registry().names("engines")
    with pytest.raises(ConfigError, match=r"pip install 'okra\[wasm3\]'"):
        get_registry().engine("wasm3")
    from click.testing import CliRunner

    from okra_cli.main import cli

    listed = CliRunner().invoke(cli, ["plugins"], env={"COLUMNS": "80"})
    assert "pip install 'okra[wasm3]'" in " ".join(listed.output.split()), listed.output


# -- the CLI -------------------------------------------------------------------------------


def pkg_file(tmp_path, descriptors, **overrides):
    manifest = make_manifest(**{
        "name": "echo", "services": ("en.v1.Echo",), "host_apis": {}, **overrides,
    })
    return write_package(tmp_path / "echo.okra.pkg", manifest=manifest, wasm=wat("echo"),
                         descriptor_set=descriptors)


def cli_env(tmp_path):
    return {**os.environ, "OKRA_CACHE_DIR": str(tmp_path / "cache"), "COLUMNS": "400"}


@pytest.mark.slow
def test_serve_with_engine_wasm3_serves_and_says_so(tmp_path, descriptors):
    pkg = pkg_file(tmp_path, descriptors)
    server = subprocess.Popen(
        [OKRA, "serve", str(pkg), "--engine", "wasm3", "--grpc-port", "0", "--http-port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env(tmp_path), cwd=tmp_path,
    )
    try:
        address = server.stdout.readline().strip().removeprefix("gRPC listening on ")
        server.stdout.readline()
        assert server.stdout.readline().strip() == "serving en.v1.Echo (wasm3)"
        result = okra("call", "en.v1.Echo/Echo", '{"data": "aGk="}', "--address", address)
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["data"] == "aGk="
    finally:
        stop_processes(server)


def test_serve_refuses_an_unenforceable_limit_in_one_line(tmp_path, descriptors):
    pkg = pkg_file(tmp_path, descriptors, limits=Limits(timeout_seconds=5))
    result = okra("serve", str(pkg), "--engine", "wasm3", "--engine-option", "wasm3.meter=false",
                  "--grpc-port", "0", "--http-port", "0", env=cli_env(tmp_path), cwd=tmp_path)
    assert_one_line_error(result, "engine wasm3 cannot enforce")
    assert "--allow-unenforced-limits" in result.stderr


def test_a_bad_engine_option_is_a_one_line_error(tmp_path, descriptors):
    pkg = pkg_file(tmp_path, descriptors)
    result = okra("serve", str(pkg), "--engine", "wasm3", "--engine-option", "wasm3.meter=maybe",
                  "--grpc-port", "0", "--http-port", "0", env=cli_env(tmp_path), cwd=tmp_path)
    assert_one_line_error(result, "engine option meter='maybe' must be true or false")


def test_allow_engine_without_the_default_is_a_one_line_error(tmp_path, descriptors):
    pkg = pkg_file(tmp_path, descriptors)
    result = okra("serve", str(pkg), "--allow-engine", "wasm3", "--grpc-port", "0", "--http-port", "0",
                  env=cli_env(tmp_path), cwd=tmp_path)
    assert_one_line_error(result, "default engine 'wasmtime' is not among the allowed engines")


def test_plugins_shows_what_each_engine_enforces(tmp_path):
    result = okra("plugins", "--json", env=cli_env(tmp_path))
    assert result.returncode == 0, result.stderr
    engines = {}
    for plugin in json.loads(result.stdout):
        engines.update(plugin.get("engines", {}))
    assert engines["wasmtime"]["capabilities"]["deadline"] is True
    assert engines["wasm3"]["capabilities"] == {
        "deadline": True, "interrupt": True, "memory_limit": True, "parallel": True,
        "wasi": "preview1", "component_model": False,
    }
    table = okra("plugins", env=cli_env(tmp_path))
    assert "Engines" in table.stdout and "wasm3" in table.stdout


def test_ctypes_is_what_releases_the_gil():
    # The engine's claim "m3_Call releases the GIL" rests on ctypes.CDLL (not PyDLL).
    from okra_plugins.engine_wasm3 import _capi

    assert not isinstance(_capi._lib, ctypes.PyDLL)


# -- wasm3 against hostile modules ---------------------------------------------------------


def test_wasm3_refuses_code_that_does_not_validate_before_running_it():
    # wasm3 would run this (an opcode that does not exist) and crash the process.
    good = bytearray(wasmtime.wat2wasm(
        '(module (memory (export "memory") 1) (func (export "f") (local i32) (local.set 0 (i32.const 1))))'
    ))
    bad = bytes(good).replace(b"\x41\x01\x21\x00", b"\x41\x01\xce\x00")
    assert bad != bytes(good)
    with pytest.raises(PackageError, match="service.wasm is not a valid WebAssembly module: .*opcode"):
        get_registry().engine("wasm3", cache_dir=None).compile(bad)


def test_wasm3_refuses_imported_memory_saying_so():
    wasm = wasmtime.wat2wasm('(module (import "env" "memory" (memory 1)))')
    with pytest.raises(DeployError, match="module imports memory env.memory; OKRA links only functions"):
        get_registry().engine("wasm3", cache_dir=None).compile(wasm)


RECURSE = """
(module
  (memory (export "memory") 2)
  (func (export "okra_abi_version") (result i32) (i32.const 1))
  (func (export "okra_buffer") (param i32) (result i32) (i32.const 1024))
  (func $f (call $f))
  (func (export "okra_handle") (param i32 i32) (result i64) (call $f) (i64.const 0)))
"""


def run_in_thread(work, stack_size: int | None = None):
    outcome = {}

    def target():
        try:
            outcome["result"] = work()
        except Exception as exc:
            outcome["error"] = exc

    previous = threading.stack_size(stack_size) if stack_size else None
    try:
        thread = threading.Thread(target=target)
        thread.start()
    finally:
        if stack_size:
            threading.stack_size(previous)
    thread.join(timeout=60)
    return outcome


@pytest.mark.parametrize("stack_size", [None, 1 << 20])
def test_wasm3_deep_recursion_is_a_trap_or_a_refusal_never_a_crash(stack_size):
    engine = get_registry().engine("wasm3", cache_dir=None)
    module = engine.compile(wasmtime.wat2wasm(RECURSE))
    request = abi.encode_request(abi.request_prefix("en.v1.Echo", "Echo"), b"")

    def work():
        instance = module.instantiate(abi.abi_functions(1), lambda fd, data: None,
                                      HostContext("t", logging.getLogger("t")))
        return instance.handle(request)

    outcome = run_in_thread(work, stack_size)
    error = outcome.get("error")
    if stack_size is None:  # the default 8 MiB thread: wasm3's own trap
        assert "stack overflow" in str(error), outcome
    else:  # 1 MiB: refused before wasm3 could overflow the native stack
        assert "native stack (1024 KiB) is too small" in str(error), outcome
        assert "lower the engine option stack_bytes" in str(error)


FD_WRITE_FLOOD = """
(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 17)
  (func (export "okra_abi_version") (result i32) (i32.const 1))
  (func (export "okra_buffer") (param i32) (result i32) (i32.const 1024))
  ;; The request's last byte says how many iovecs (x 100); each is (0, 1 MiB). Answers
  ;; an empty response whose status code is the errno and message... kept simple: the
  ;; errno and nwritten are stored at 16 and 20 for the host to read.
  (func (export "okra_handle") (param $ptr i32) (param $len i32) (result i64)
    (local $n i32) (local $i i32)
    (local.set $n (i32.mul (i32.load8_u (i32.sub (i32.add (local.get $ptr) (local.get $len)) (i32.const 1)))
                           (i32.const 100)))
    (block $done (loop $fill
      (br_if $done (i32.ge_u (local.get $i) (local.get $n)))
      (i32.store (i32.add (i32.const 65536) (i32.mul (local.get $i) (i32.const 8))) (i32.const 0))
      (i32.store (i32.add (i32.const 65540) (i32.mul (local.get $i) (i32.const 8))) (i32.const 1048576))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br $fill)))
    (i32.store (i32.const 16) (call $fd_write (i32.const 1) (i32.const 65536) (local.get $n) (i32.const 20)))
    (i64.const 0)))
"""


@pytest.mark.parametrize("engine_name", ["wasmtime", "wasm3"])
@pytest.mark.parametrize("hundreds, errno, written", [(10, 0, 1 << 20), (11, 28, 0)])
def test_fd_write_copies_at_most_a_mebibyte_from_at_most_1024_buffers(engine_name, hundreds, errno, written):
    engine = get_registry().engine(engine_name, cache_dir=None)
    module = engine.compile(wasmtime.wat2wasm(FD_WRITE_FLOOD))
    seen = []
    ctx = HostContext("t", logging.getLogger("t"))
    instance = module.instantiate(abi.abi_functions(1), lambda fd, data: seen.append(len(data)), ctx)
    started = time.monotonic()
    instance.handle(abi.encode_request(abi.request_prefix("en.v1.Echo", "Echo"), bytes([hundreds])))
    assert time.monotonic() - started < 2.0  # 1,000 x 1 MiB would be a gigabyte copied
    result = ctx.memory.read(16, 8)
    assert int.from_bytes(result[:4], "little") == errno
    if errno == 0:
        assert int.from_bytes(result[4:], "little") == written  # a short write
        assert seen == [written]
    instance.close()


def test_poll_oneoff_refuses_more_subscriptions_than_a_guest_needs():
    from okra_plugins.engine_wasm3 import _wasi

    assert _wasi.poll_oneoff(None, 0, 0, _wasi.MAX_SUBSCRIPTIONS + 1, 0) == _wasi.EINVAL
    assert _wasi.poll_oneoff(None, 0, 0, 0, 0) == _wasi.EINVAL


@pytest.mark.parametrize("engine_name", ["wasmtime", "wasm3"])
async def test_a_guest_that_never_finishes_starting_fails_its_deploy_at_its_time_limit(
    tmp_path, descriptors, engine_name
):
    init_forever = (
        '(module (memory (export "memory") 1)'
        ' (func (export "okra_abi_version") (result i32) (i32.const 1))'
        ' (func (export "okra_buffer") (param i32) (result i32) (i32.const 1024))'
        ' (func (export "okra_handle") (param i32 i32) (result i64) (i64.const 0))'
        ' (func (export "_initialize") (loop $forever (br $forever))))'
    )
    package = Package.from_parts(
        manifest=make_manifest(name="stuck", services=("en.v1.Echo",), host_apis={},
                               limits=Limits(timeout_seconds=0.5)),
        wasm=wasmtime.wat2wasm(init_forever), descriptor_set=descriptors,
    )
    async with Runtime(config(tmp_path, engine=engine_name, engine_options={"cache_dir": None})) as runtime:
        started = time.monotonic()
        with pytest.raises(DeployError, match="deadline exceeded"):
            await runtime.deploy(package)
        assert time.monotonic() - started < 5
        assert runtime.services() == []
