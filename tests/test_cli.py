# CLI tests: `okra` run as a user runs it, in a subprocess, for what needs no guest
# toolchain. (Serving and calling a real package: test_e2e_grpc.py; Go projects:
# test_cli_go.py.)
#
# Test plan
# - `okra --help` and `okra --version` work; every command has help.
# - `okra generate` writes the generated guest code of a new project without compiling.
# - `okra plugins` lists every built-in plugin and what it provides; `--json` too.
# - a third-party plugin installed as a distribution with an `okra` entry point is loaded
#   through the same hooks: its host API shows in `okra plugins`, its command runs; a
#   conflicting registration, or a plugin that fails to import, is one clear error line.
# - errors are one line on stderr, exit status 1, no traceback: serving a file that is not
#   a package, a package whose module imports something ungranted, `okra build` outside a
#   project, `okra init` into a non-empty directory, a malformed -H header; an error
#   message that spans lines or holds ":name:" prints as is, on one line.
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import wasmtime

from okra_core.package import write_package
from support import FIXTURES_DIR, compile_protos, make_manifest

OKRA = str(Path(sys.executable).with_name("okra"))


def okra(*args, env=None, timeout=60, **kwargs):
    return subprocess.run(
        [OKRA, *args], capture_output=True, text=True, timeout=timeout,
        env={**os.environ, **(env or {})}, **kwargs,
    )


def assert_one_line_error(result, fragment):
    assert result.returncode == 1, result
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines[0].startswith("error: "), result.stderr
    assert fragment in " ".join(line.strip() for line in lines), result.stderr


def test_help_and_version():
    result = okra("--help")
    assert result.returncode == 0
    for command in ("init", "generate", "build", "dev", "serve", "call", "plugins"):
        assert command in result.stdout
        assert okra(command, "--help").returncode == 0
    assert okra("--version").stdout.strip().endswith("0.1.0")


def test_plugins_lists_every_builtin_plugin_and_what_it_provides():
    result = okra("plugins", "--json")
    assert result.returncode == 0, result.stderr
    plugins = {p["name"]: p["provides"] for p in json.loads(result.stdout)}
    assert plugins["okra_plugins.engine_wasmtime"] == {"engines": ["wasmtime"]}
    assert plugins["okra_plugins.transport_grpc"] == {"transports": ["grpc"]}
    assert plugins["okra_plugins.hostapi_log"] == {"host_apis": ["okra.log"]}
    assert plugins["okra_plugins.lang_go"] == {"languages": ["go"]}
    table = okra("plugins")
    assert "okra.log" in table.stdout and "wasmtime" in table.stdout


THIRD_PARTY = '''
import click
from okra_core.hookspecs import hookimpl
from okra_core.hostapi import HostFunction


class Clock:
    namespace = "okra.democlock"
    description = "a demo host API from a third-party plugin"

    def function_names(self):
        return ("now",)

    def functions(self, config):
        return (HostFunction(self.namespace, "now", (), lambda ctx: 42),)


@hookimpl
def register_host_apis(register):
    register(Clock())


@hookimpl
def register_commands(cli):
    @cli.command(name="demo-hello")
    def demo_hello():
        """Say hello from a plugin."""
        click.echo("hello from a plugin")
'''


def install_plugin(root: Path, module_source: str, name: str = "okra_demo_plugin") -> dict:
    """Install a plugin distribution as pip would: a module plus a dist-info directory
    declaring the `okra` entry point, on a directory put on PYTHONPATH."""
    (root / f"{name}.py").write_text(textwrap.dedent(module_source))
    info = root / f"{name}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[okra]\ndemo = {name}\n")
    return {"PYTHONPATH": str(root)}


def test_third_party_plugin_registers_through_the_same_hooks(tmp_path):
    env = install_plugin(tmp_path, THIRD_PARTY)
    result = okra("plugins", "--json", env=env)
    assert result.returncode == 0, result.stderr
    plugins = {p["name"]: p["provides"] for p in json.loads(result.stdout)}
    assert plugins["demo"] == {"host_apis": ["okra.democlock"]}
    result = okra("demo-hello", env=env)
    assert result.stdout.strip() == "hello from a plugin"
    # OKRA_DISABLE_ENTRYPOINTS=1 loads built-in plugins only.
    result = okra("plugins", "--json", env={**env, "OKRA_DISABLE_ENTRYPOINTS": "1"})
    assert "demo" not in {p["name"] for p in json.loads(result.stdout)}


def test_conflicting_plugin_is_one_clear_error(tmp_path):
    conflicting = THIRD_PARTY.replace('"okra.democlock"', '"okra.log"')
    env = install_plugin(tmp_path, conflicting)
    result = okra("plugins", env=env)
    assert_one_line_error(result, "plugins okra_plugins.hostapi_log and demo both register host api 'okra.log'")


def test_serving_a_file_that_is_not_a_package_is_one_line(tmp_path):
    bogus = tmp_path / "bogus.okra.pkg"
    bogus.write_bytes(b"definitely not a zip")
    result = okra("serve", str(bogus), "--grpc-port", "0", "--http-port", "0")
    assert_one_line_error(result, "bogus.okra.pkg")


def test_serving_a_package_with_an_ungranted_import_fails_at_deploy(tmp_path):
    descriptors = compile_protos(tmp_path, ["greeter/v1/greeter.proto"])
    wasm = wasmtime.wat2wasm((FIXTURES_DIR / "log.wat").read_text())
    package = write_package(
        tmp_path / "log.okra.pkg", manifest=make_manifest(host_apis={}), wasm=wasm, descriptor_set=descriptors
    )
    result = okra("serve", str(package), "--grpc-port", "0", "--http-port", "0", env={"OKRA_CACHE_DIR": str(tmp_path / "cache")})
    assert_one_line_error(
        result,
        'module imports okra.log.write, but the manifest does not grant it: add "okra.log" to "host_apis" in okra.service.json',
    )
    assert "listening" not in result.stdout


def test_operator_policy_flag_denies_a_requested_host_api(tmp_path):
    descriptors = compile_protos(tmp_path, ["greeter/v1/greeter.proto"])
    wasm = wasmtime.wat2wasm((FIXTURES_DIR / "log.wat").read_text())
    package = write_package(tmp_path / "log.okra.pkg", manifest=make_manifest(), wasm=wasm, descriptor_set=descriptors)
    result = okra("serve", str(package), "--grpc-port", "0", "--http-port", "0", "--allow-host-api", "okra.http",
                  env={"OKRA_CACHE_DIR": str(tmp_path / "cache")})
    assert_one_line_error(result, "requests host API okra.log, which the operator policy does not allow (allowed: okra.http)")


def test_build_outside_a_project_says_how_to_start_one(tmp_path):
    result = okra("build", str(tmp_path))
    assert_one_line_error(result, "run `okra init NAME` to create a project")


def test_init_refuses_a_non_empty_directory(tmp_path):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "file").write_text("x")
    result = okra("init", "taken", "--dir", str(tmp_path / "taken"))
    assert_one_line_error(result, "already exists and is not empty")


def test_init_refuses_an_unknown_language(tmp_path):
    result = okra("init", "x", "--lang", "cobol", "--dir", str(tmp_path / "x"))
    assert_one_line_error(result, "no language named 'cobol' is installed (installed: go)")


def test_malformed_header_is_one_line():
    result = okra("call", "a.B/C", "{}", "-H", "no-colon-here")
    assert_one_line_error(result, "must look like 'key: value'")


def test_plugin_that_fails_to_import_is_named_in_one_line(tmp_path):
    env = install_plugin(tmp_path, "import no_such_module_anywhere\n")
    result = okra("plugins", env=env)
    assert_one_line_error(result, "plugin 'demo' (from okra_demo_plugin) failed to load: No module named 'no_such_module_anywhere'")


def test_bad_transport_option_is_one_line(tmp_path):
    descriptors = compile_protos(tmp_path, ["greeter/v1/greeter.proto"])
    wasm = wasmtime.wat2wasm((FIXTURES_DIR / "echo.wat").read_text())
    package = write_package(tmp_path / "echo.okra.pkg", manifest=make_manifest(host_apis={}), wasm=wasm, descriptor_set=descriptors)
    result = okra("serve", str(package), "--grpc-port", "0", "--http-port", "0", "--max-message-size", "lots",
                  env={"OKRA_CACHE_DIR": str(tmp_path / "cache")})
    assert_one_line_error(result, "lots")


def test_call_error_is_printed_as_is_on_one_line(tmp_path):
    """protobuf's JSON error spans two lines, and ":smile:" is an emoji code to rich."""
    descriptors = compile_protos(tmp_path, ["greeter/v1/greeter.proto"])
    wasm = wasmtime.wat2wasm((FIXTURES_DIR / "echo.wat").read_text())
    package = write_package(tmp_path / "echo.okra.pkg", manifest=make_manifest(host_apis={}), wasm=wasm, descriptor_set=descriptors)
    result = okra("call", "--package", str(package), "greeter.v1.Greeter/SayHello", '{":smile:": 1}')
    assert_one_line_error(result, 'has no field named ":smile:"')
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


@pytest.mark.slow
def test_init_then_generate_writes_the_go_types_without_compiling(tmp_path):
    project = tmp_path / "hello"
    assert okra("init", "hello", "--dir", str(project)).returncode == 0
    for generated in (project / "gen").rglob("*.okra.go"):
        generated.unlink()
    result = okra("generate", str(project))
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (project / "gen").rglob("*.okra.go")) == ["hello.okra.go", "okra_wire.okra.go"]
    assert not (project / "dist").exists()
