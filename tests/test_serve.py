# Test plan: okra_core.serve.Server, the runtime-plus-transports that `okra serve` runs.
# - start deploys every package, then opens each listener and records where it listens;
#   a call through it reaches the guest; stop closes everything.
# - a package that fails to deploy stops the start with an error that names that
#   package's file; no transport is left listening and nothing stays deployed.
# - bad transport options fail before anything is deployed.
# - two packages of one name (two versions of a service) are refused before anything is
#   deployed, naming both files: one would silently replace the other; one file given
#   twice is said to be just that.
# - a negative grace period is refused.
import grpc
import pytest
import wasmtime

from okra_core.config import RuntimeConfig
from okra_core.errors import CapabilityError, ConfigError, DeployError
from okra_core.package import load_package, write_package
from okra_core.serve import Listener, Server
from support import FIXTURES_DIR, compile_protos, make_manifest


@pytest.fixture
def packages(tmp_path):
    descriptors = compile_protos(tmp_path, ["greeter/v1/greeter.proto"])
    other = compile_protos(tmp_path, {"other/v1/other.proto": 'syntax = "proto3"; package other.v1; '
                                      'message M { string s = 1; } service Other { rpc Do(M) returns (M); }'})

    def make(guest, name, **manifest):
        sources = other if manifest.get("services") == ("other.v1.Other",) else descriptors
        wasm = wasmtime.wat2wasm((FIXTURES_DIR / f"{guest}.wat").read_text())
        path = write_package(
            tmp_path / f"{name}.okra.pkg",
            manifest=make_manifest(name=name, **manifest),
            wasm=wasm,
            descriptor_set=sources,
        )
        return load_package(path)

    return make


def config(tmp_path):
    return RuntimeConfig(engine_options={"cache_dir": str(tmp_path / "cache")})


async def test_server_deploys_then_listens_then_stops(tmp_path, packages):
    server = Server([packages("echo", "good", host_apis={})], [Listener("grpc", "127.0.0.1", 0)], config=config(tmp_path))
    await server.start()
    try:
        (name, host, port), = server.addresses
        assert (name, host) == ("grpc", "127.0.0.1") and port > 0
        assert server.runtime.services() == ["greeter.v1.Greeter"]
        async with grpc.aio.insecure_channel(f"{host}:{port}") as channel:
            say = channel.unary_unary("/greeter.v1.Greeter/SayHello")
            assert await say(b"\x0a\x03Ada", timeout=5) == b"\x0a\x03Ada"
    finally:
        await server.stop()
    assert server.runtime.services() == []


async def test_failed_deploy_names_the_package_file_and_leaves_nothing_running(tmp_path, packages):
    good = packages("echo", "good", host_apis={})
    bad = packages("log", "bad", host_apis={}, services=("other.v1.Other",))
    bad_path = str(bad.path)
    server = Server([good, bad], [Listener("grpc", "127.0.0.1", 0)], config=config(tmp_path))
    with pytest.raises(CapabilityError) as info:
        await server.start()
    assert str(info.value).startswith(f"{bad_path}: ")
    assert "okra.log.write" in str(info.value)
    assert server.addresses == [] and server.runtime.services() == []


async def test_bad_transport_options_fail_before_any_deploy(tmp_path, packages):
    server = Server(
        [packages("echo", "good", host_apis={})],
        [Listener("grpc", "127.0.0.1", 0, {"max_message_size": "lots"})],
        config=config(tmp_path),
    )
    with pytest.raises(ConfigError):
        await server.start()
    assert server.runtime.services() == []


async def test_two_packages_of_one_name_are_refused_naming_both_files(tmp_path, packages):
    first = packages("echo", "greeter", host_apis={})
    second = load_package(first.path.rename(tmp_path / "greeter-0.2.0.okra.pkg"))
    first = packages("echo", "greeter", host_apis={})
    server = Server([first, second], [Listener("grpc", "127.0.0.1", 0)], config=config(tmp_path))
    with pytest.raises(DeployError) as info:
        await server.start()
    message = str(info.value)
    assert str(first.path) in message and str(second.path) in message
    assert "'greeter'" in message and "one of them" in message
    assert server.addresses == [] and server.runtime.services() == []


def test_negative_grace_is_refused(packages):
    with pytest.raises(ConfigError, match="grace"):
        Server([packages("echo", "good", host_apis={})], [], grace=-5)


async def test_one_package_file_given_twice_is_refused_as_such(tmp_path, packages):
    package = packages("echo", "greeter", host_apis={})
    server = Server([package, load_package(package.path)], [Listener("grpc", "127.0.0.1", 0)], config=config(tmp_path))
    with pytest.raises(DeployError, match="is given twice: serve it once"):
        await server.start()
    assert server.runtime.services() == []
