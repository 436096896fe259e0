# Test plan: the okra serve/dev options behind the host APIs, run as a user runs them.
# Each case serves a package built from tests/fixtures/log.wat (it asks for okra.log only)
# or a manifest asking for okra.state / okra.secrets / okra.config, and checks the
# one-line error a wrong option gives, before any port opens:
# - --state with an unknown store names the installed ones; a redis:// URL nobody
#   listens on fails the deploy of a package that uses state, naming the store; a
#   malformed redis URL's error shows its password as ***, never the password.
# - --secrets with an unknown provider names the installed ones; dir: without a path
#   and dir:PATH of a missing directory are usage / deploy errors.
# - --config without NAME=VALUE is a usage error; --config for a package that does not
#   ask for okra.config fails its deploy saying what to add; --config for a package
#   name none of the served packages has (a typo) is an error naming the served ones.
import socket

import wasmtime

from okra_core.package import write_package
from support import FIXTURES_DIR, compile_protos, make_manifest
from test_cli import assert_one_line_error, assert_usage_error, okra


def package(tmp_path, host_apis):
    descriptors = compile_protos(tmp_path, ["greeter/v1/greeter.proto"])
    wasm = wasmtime.wat2wasm((FIXTURES_DIR / "log.wat").read_text())
    return write_package(
        tmp_path / "p.okra.pkg", manifest=make_manifest(host_apis={"okra.log": {}, **host_apis}),
        wasm=wasm, descriptor_set=descriptors,
    )


def serve(tmp_path, pkg, *options):
    # COLUMNS: a terminal wide enough that a usage error's box holds it on one line.
    return okra("serve", str(pkg), "--grpc-port", "0", "--http-port", "0", *options,
                env={"OKRA_CACHE_DIR": str(tmp_path / "cache"), "COLUMNS": "400"}, cwd=tmp_path)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unknown_state_store_names_the_installed_ones(tmp_path):
    result = serve(tmp_path, package(tmp_path, {}), "--state", "reddis")
    assert_one_line_error(result, "no state store named 'reddis' is installed (installed: memory, redis, sqlite)")


def test_an_unreachable_redis_fails_the_deploy_of_a_package_that_uses_state(tmp_path):
    pkg = package(tmp_path, {"okra.state": {}})
    result = serve(tmp_path, pkg, "--state", f"redis://127.0.0.1:{closed_port()}/0")
    assert_one_line_error(result, "okra.state: cannot open state store 'redis'")


def test_a_malformed_redis_url_error_hides_its_password(tmp_path):
    pkg = package(tmp_path, {"okra.state": {}})
    result = serve(tmp_path, pkg, "--state", "redis://:s3cret@[::1")
    assert_one_line_error(result, "redis://:***@[::1")
    assert "s3cret" not in result.stdout + result.stderr


def test_an_unknown_secrets_provider_names_the_installed_ones(tmp_path):
    result = serve(tmp_path, package(tmp_path, {}), "--secrets", "vault")
    assert_one_line_error(result, "no secrets provider named 'vault' is installed (installed: dir, env)")


def test_secrets_dir_needs_an_existing_directory(tmp_path):
    pkg = package(tmp_path, {"okra.secrets": {"names": ["TOKEN"]}})
    result = serve(tmp_path, pkg, "--secrets", "dir")
    assert_usage_error(result, "'--secrets'", "dir needs a directory")
    result = serve(tmp_path, pkg, "--secrets", f"dir:{tmp_path / 'missing'}")
    assert_one_line_error(result, str(tmp_path / "missing"))


def test_config_values_need_a_name_and_a_package_that_asks_for_config(tmp_path):
    pkg = package(tmp_path, {})
    result = serve(tmp_path, pkg, "--config", "novalue")
    assert_usage_error(result, "'--config'", "write NAME=VALUE or PACKAGE:NAME=VALUE")
    result = serve(tmp_path, pkg, "--config", "greeter:greeting=hi")
    assert_one_line_error(result, 'does not ask for okra.config: add [host_apis."okra.config"]')


def test_config_values_for_a_package_not_served_are_an_error(tmp_path):
    pkg = package(tmp_path, {"okra.config": {"values": {"greeting": "hello"}}})
    result = serve(tmp_path, pkg, "--config", "greter:greeting=hi")
    assert_one_line_error(
        result, "--config sets values for package 'greter', which is not among the packages served (greeter)"
    )
