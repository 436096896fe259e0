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
#   project, `okra init` into a non-empty directory; an error message that spans lines or
#   holds ":name:" prints as is, on one line; a port that cannot be bound, without gRPC's
#   own log lines (GRPC_VERBOSITY defaults to NONE; a user's own setting is kept).
# - usage mistakes exit with status 2 and one line naming the option, nothing sent and
#   nothing from gRPC's logs: a malformed -H header, a header name or value gRPC would
#   refuse (empty, spaces, non-ASCII, reserved grpc-, control characters, a -bin value
#   that is not base64); an --address that is not HOST:PORT (no port, port out of range,
#   no host, IPv6 without brackets, empty); a --timeout that is not a finite number > 0;
#   a --grace below 0 or not finite (serve and dev); an --allow-header that is not a
#   header name or that is never forwarded (reserved, framing, binary); a --max-memory or
#   --max-message-size that is not a size, a --max-call-time that is not a time > 0.
# - `okra serve` draining a call stuck in a guest: a second SIGINT stops it at once.
# - `okra call`: a -bin header's base64 value reaches the server as bytes; an IPv6
#   address in brackets reaches the server; request JSON that is not an object is
#   INVALID_ARGUMENT before anything is sent; a duplicate JSON key and a package that is
#   not a zip are each said once; the usage line shows the JSON as optional.
# - `okra serve --host ::1` prints its listen addresses with the IPv6 host in brackets,
#   and `okra call` reaches it at the printed address (slow).
import concurrent.futures
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import grpc
import pytest
import wasmtime

from okra_core.package import load_package, write_package
from support import FIXTURES_DIR, compile_protos, make_manifest, stop_processes

OKRA = str(Path(sys.executable).with_name("okra"))


def okra(*args, env=None, timeout=60, **kwargs):
    return subprocess.run(
        [OKRA, *args], capture_output=True, text=True, timeout=timeout,
        env={**os.environ, **(env or {})}, **kwargs,
    )


#: A log line of gRPC's C core, e.g. "E1204 07:18:56.123456   123 add_port.cc:83] ...".
GRPC_LOG = re.compile(r"^[DIWEF]\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ \S+:\d+\]", re.MULTILINE)


def assert_one_line_error(result, fragment):
    assert result.returncode == 1, result
    assert "Traceback" not in result.stderr
    assert not GRPC_LOG.search(result.stderr), result.stderr
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

    def functions(self, config, env=None):
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


def usage_error(*args, **kwargs):
    """Run okra on a terminal wide enough that rich-click's error box holds the message
    on one line."""
    return okra(*args, env={"COLUMNS": "400"}, **kwargs)


def assert_usage_error(result, option, fragment):
    """Exit status 2 and one line saying which option is wrong and why."""
    assert result.returncode == 2, result
    assert "Traceback" not in result.stderr
    assert not GRPC_LOG.search(result.stderr), result.stderr
    lines = [line.strip(" │") for line in result.stderr.splitlines() if "Invalid value" in line]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"Invalid value for {option}"), lines[0]
    assert fragment in lines[0], lines[0]


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
        return True
    except OSError:
        return False


needs_ipv6 = pytest.mark.skipif(not has_ipv6_loopback(), reason="no IPv6 loopback (::1) here")


@pytest.fixture(scope="module")
def echo_package(tmp_path_factory):
    """greeter.v1.Greeter answered by echo.wat (the reply is the request)."""
    tmp = tmp_path_factory.mktemp("echo")
    descriptors = compile_protos(tmp, ["greeter/v1/greeter.proto"])
    wasm = wasmtime.wat2wasm((FIXTURES_DIR / "echo.wat").read_text())
    return write_package(tmp / "echo.okra.pkg", manifest=make_manifest(host_apis={}), wasm=wasm, descriptor_set=descriptors)


@contextlib.contextmanager
def greeter_server(package, host="127.0.0.1"):
    """A plain grpcio server for greeter.v1.Greeter/SayHello that records the metadata
    of each call and greets by name; yields (address, calls)."""
    say = load_package(package).schema("greeter.v1.Greeter").methods["SayHello"]
    calls = []

    def say_hello(request, context):
        calls.append(dict(context.invocation_metadata()))
        return say.output_class(message=f"hello {request.name}")

    handler = grpc.unary_unary_rpc_method_handler(
        say_hello, request_deserializer=say.input_class.FromString,
        response_serializer=say.output_class.SerializeToString,
    )
    server = grpc.server(concurrent.futures.ThreadPoolExecutor(2))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("greeter.v1.Greeter", {"SayHello": handler}),))
    port = server.add_insecure_port(f"[{host}]:0" if ":" in host else f"{host}:0")
    server.start()
    try:
        yield (f"[{host}]:{port}" if ":" in host else f"{host}:{port}"), calls
    finally:
        server.stop(0)


def test_malformed_header_is_a_usage_error():
    result = usage_error("call", "a.B/C", "{}", "-H", "no-colon-here")
    assert_usage_error(result, "'-H' / '--header'", "header 'no-colon-here' must look like 'key: value'")


@pytest.mark.parametrize(
    "header, fragment",
    [
        (": x", "header ': x' has no name before the ':'"),
        ("bad key: v", "header 'bad key': a name may hold only lower-case ASCII letters, digits and - _ ."),
        ("x-é: v", "header 'x-é': a name may hold only lower-case ASCII letters, digits and - _ ."),
        ("x-a: a\x01b", "header 'x-a': the value may hold only printable ASCII, not '\\x01' (at 1)"),
        ("grpc-timeout: 1S", "header 'grpc-timeout': names starting with grpc- are reserved by gRPC"),
        ("x-trace-bin: not base64!", "header 'x-trace-bin': a -bin header is binary; give its value in base64"),
    ],
)
def test_header_grpc_would_refuse_is_a_usage_error_before_sending(header, fragment):
    result = usage_error("call", "a.B/C", "{}", "-H", header, "--address", f"127.0.0.1:{closed_port()}")
    assert_usage_error(result, "'-H' / '--header'", fragment)


def test_binary_header_value_reaches_the_server_decoded_from_base64(echo_package):
    with greeter_server(echo_package) as (address, calls):
        for given in ("aGVsbG8=", "aGVsbG8"):  # padding is optional, as in gRPC
            result = okra("call", "greeter.v1.Greeter/SayHello", '{"name": "Ada"}', "--address", address,
                          "--package", str(echo_package), "-H", f"X-Trace-Bin: {given}", "-H", "x-tenant: acme")
            assert result.returncode == 0, result.stderr
            assert json.loads(result.stdout) == {"message": "hello Ada"}
    assert [(c["x-trace-bin"], c["x-tenant"]) for c in calls] == [(b"hello", "acme")] * 2


@pytest.mark.parametrize(
    "address, fragment",
    [
        ("127.0.0.1:115587", "the port must be a number from 1 to 65535, not '115587'"),
        ("127.0.0.1:99999", "the port must be a number from 1 to 65535, not '99999'"),
        ("127.0.0.1:0", "the port must be a number from 1 to 65535, not '0'"),
        ("127.0.0.1", "no port (use HOST:PORT, e.g. 127.0.0.1:50051)"),
        (":50051", "no host (use HOST:PORT, e.g. 127.0.0.1:50051)"),
        ("", "empty (use HOST:PORT, e.g. 127.0.0.1:50051)"),
        ("::1:50051", "put an IPv6 address in brackets (e.g. [::1]:50051)"),
        ("[::1]", "no port"),
        ("[nope]:50051", "'nope' is not an IPv6 address"),
        ("a host:50051", "'a host' is not a host name or IP address"),
    ],
)
def test_address_that_is_not_host_port_is_a_usage_error(address, fragment):
    result = usage_error("call", "a.B/C", "--address", address)
    assert_usage_error(result, "'--address'", f"address {address!r}: {fragment}")


@needs_ipv6
def test_ipv6_address_in_brackets_reaches_the_server(echo_package):
    with greeter_server(echo_package, host="::1") as (address, _):
        assert address.startswith("[::1]:")
        result = okra("call", "greeter.v1.Greeter/SayHello", '{"name": "six"}', "--address", address,
                      "--package", str(echo_package))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"message": "hello six"}


@pytest.mark.parametrize(
    "timeout, fragment",
    [
        ("-1", "-1.0 is not in the range x>0"),
        ("0", "0.0 is not in the range x>0"),
        ("inf", "inf is not a finite number of seconds"),
        ("nan", "nan is not a finite number of seconds"),
        ("1e300", "1e300 is more than 1e9 seconds"),
        ("soon", "'soon' is not a valid number"),
    ],
)
def test_timeout_that_is_not_a_finite_number_above_zero_is_a_usage_error(timeout, fragment):
    result = usage_error("call", "a.B/C", "--timeout", timeout, "--address", f"127.0.0.1:{closed_port()}")
    assert_usage_error(result, "'--timeout'", fragment)


@pytest.mark.parametrize(
    "option, value, fragment",
    [
        ("--max-memory", "0", "'0' is not a size between 1 byte and 4 GiB"),
        ("--max-memory", "8GiB", "'8GiB' is not a size between 1 byte and 4 GiB"),
        ("--max-call-time", "0", "0.0 is not in the range x>0"),
        ("--max-call-time", "inf", "inf is not a finite number of seconds"),
    ],
)
def test_operator_caps_that_are_not_sizes_or_times_are_usage_errors(tmp_path, option, value, fragment):
    package = tmp_path / "any.okra.pkg"
    package.write_bytes(b"checked after the options")
    assert_usage_error(usage_error("serve", str(package), option, value), f"'{option}'", fragment)


@pytest.mark.parametrize("grace, fragment", [("-5", "-5.0 is not in the range x>=0"), ("nan", "nan is not a finite")])
def test_grace_below_zero_or_not_finite_is_a_usage_error(tmp_path, grace, fragment):
    package = tmp_path / "any.okra.pkg"
    package.write_bytes(b"checked after the options")
    assert_usage_error(usage_error("serve", str(package), "--grace", grace), "'--grace'", fragment)
    assert_usage_error(usage_error("dev", str(tmp_path), "--grace", grace), "'--grace'", fragment)


@pytest.mark.parametrize(
    "name, fragment",
    [
        ("bad header", "'bad header' is not a header name (ASCII letters, digits and - _ .)"),
        ("x-é", "'x-é' is not a header name"),
        ("authorization,cookie", "give one name per --allow-header"),
        ("grpc-timeout", "'grpc-timeout' is never forwarded to guests: names starting with grpc- belong to the protocol"),
        ("Connect-Timeout-Ms", "never forwarded to guests: names starting with connect- belong to the protocol"),
        ("te", "'te' is never forwarded to guests: it is a connection or framing header"),
        ("content-type", "it is a connection or framing header"),
        ("x-trace-bin", "it is a binary (-bin) header, and guest metadata is text"),
    ],
)
def test_allow_header_that_can_never_be_forwarded_is_a_usage_error(tmp_path, name, fragment):
    package = tmp_path / "any.okra.pkg"
    package.write_bytes(b"checked after the options")
    result = usage_error("serve", str(package), "--allow-header", name)
    assert_usage_error(result, "'--allow-header'", fragment)


def test_allow_header_takes_a_secret_looking_name_in_any_case(tmp_path):
    package = tmp_path / "any.okra.pkg"
    package.write_bytes(b"checked after the options")
    result = okra("serve", str(package), "--allow-header", "Authorization", "--allow-header", "x-api-key")
    assert_one_line_error(result, "not an OKRA package")  # past the options


@pytest.mark.parametrize("body, kind", [('""', "a string"), ("[]", "an array"), ("1", "a number"), ("null", "null")])
def test_request_json_that_is_not_an_object_is_refused_before_sending(echo_package, body, kind):
    result = okra("call", "greeter.v1.Greeter/SayHello", body, "--package", str(echo_package),
                  "--address", f"127.0.0.1:{closed_port()}")
    assert_one_line_error(
        result,
        "INVALID_ARGUMENT: request JSON must be an object holding the fields of greeter.v1.HelloRequest "
        f"(e.g. {{}}), not {kind}",
    )


def test_duplicate_json_key_is_said_once(echo_package):
    result = okra("call", "greeter.v1.Greeter/SayHello", '{"name": "a", "name": "b"}', "--package", str(echo_package),
                  "--address", f"127.0.0.1:{closed_port()}")
    assert_one_line_error(
        result, 'INVALID_ARGUMENT: request JSON for greeter.v1.HelloRequest does not parse: key "name" appears twice'
    )
    assert "Failed to load JSON" not in result.stderr


def test_package_that_is_not_a_zip_is_named_once(tmp_path):
    bogus = tmp_path / "notzip.okra.pkg"
    bogus.write_bytes(b"definitely not a zip")
    result = okra("call", "greeter.v1.Greeter/SayHello", "--package", str(bogus))
    assert_one_line_error(result, f"INVALID_ARGUMENT: {bogus}: not an OKRA package")
    assert result.stderr.count(str(bogus)) == 1, result.stderr


def test_call_usage_shows_the_json_as_optional():
    result = okra("call", "--help", env={"COLUMNS": "400"})
    assert "okra call [OPTIONS] SERVICE/METHOD [JSON]" in result.stdout


def test_port_in_use_is_one_line_without_grpc_logs(echo_package, tmp_path):
    env = {"OKRA_CACHE_DIR": str(tmp_path / "cache")}
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        result = okra("serve", str(echo_package), "--grpc-port", port, "--http-port", "0", "--log-level", "warning",
                      env=env)
        assert_one_line_error(result, f"cannot listen for gRPC on 127.0.0.1:{port}")
        # A user's own GRPC_VERBOSITY is kept (and gRPC then logs the failure itself).
        result = okra("serve", str(echo_package), "--grpc-port", port, "--http-port", "0",
                      env={**env, "GRPC_VERBOSITY": "ERROR"})
        assert result.returncode == 1 and GRPC_LOG.search(result.stderr), result.stderr


def test_plugin_that_fails_to_import_is_named_in_one_line(tmp_path):
    env = install_plugin(tmp_path, "import no_such_module_anywhere\n")
    result = okra("plugins", env=env)
    assert_one_line_error(result, "plugin 'demo' (from okra_demo_plugin) failed to load: No module named 'no_such_module_anywhere'")


def test_bad_transport_option_is_one_line(tmp_path):
    descriptors = compile_protos(tmp_path, ["greeter/v1/greeter.proto"])
    wasm = wasmtime.wat2wasm((FIXTURES_DIR / "echo.wat").read_text())
    package = write_package(tmp_path / "echo.okra.pkg", manifest=make_manifest(host_apis={}), wasm=wasm, descriptor_set=descriptors)
    result = usage_error("serve", str(package), "--grpc-port", "0", "--http-port", "0", "--max-message-size", "lots")
    assert_usage_error(result, "'--max-message-size'", "'lots' is not a size between 1 byte and 2 GiB")


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


@pytest.mark.slow
@needs_ipv6
def test_serve_prints_an_ipv6_host_in_brackets_that_okra_call_reaches(echo_package, tmp_path):
    server = subprocess.Popen(
        [OKRA, "serve", str(echo_package), "--host", "::1", "--grpc-port", "0", "--http-port", "0", "--grace", "5"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "OKRA_CACHE_DIR": str(tmp_path / "cache")},
    )
    try:
        grpc_line, http_line = server.stdout.readline().strip(), server.stdout.readline().strip()
        assert re.fullmatch(r"gRPC listening on \[::1\]:\d+", grpc_line), grpc_line
        assert re.fullmatch(r"HTTP listening on \[::1\]:\d+", http_line), http_line
        address = grpc_line.removeprefix("gRPC listening on ")
        result = okra("call", "greeter.v1.Greeter/SayHello", '{"name": "six"}', "--address", address)
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout) == {"message": "six"}
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=30) == 0
    finally:
        stop_processes(server)


@pytest.mark.slow
def test_a_second_signal_stops_the_server_without_waiting_out_the_grace_period(tmp_path):
    descriptors = compile_protos(tmp_path, ["greeter/v1/greeter.proto"])
    wasm = wasmtime.wat2wasm((FIXTURES_DIR / "forever.wat").read_text())
    package = write_package(tmp_path / "forever.okra.pkg", manifest=make_manifest(host_apis={}), wasm=wasm, descriptor_set=descriptors)
    env = {**os.environ, "OKRA_CACHE_DIR": str(tmp_path / "cache")}
    server = subprocess.Popen(
        [OKRA, "serve", str(package), "--grpc-port", "0", "--http-port", "0", "--grace", "60"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    call = None
    try:
        address = server.stdout.readline().strip().removeprefix("gRPC listening on ")
        call = subprocess.Popen(
            [OKRA, "call", "greeter.v1.Greeter/SayHello", '{"name": "x"}', "--address", address, "--timeout", "120"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        )
        time.sleep(1.0)  # the call is in the guest's endless loop
        server.send_signal(signal.SIGINT)
        time.sleep(0.5)
        assert server.poll() is None  # draining: up to 60 s
        started = time.monotonic()
        server.send_signal(signal.SIGINT)
        server.wait(timeout=20)
        assert time.monotonic() - started < 10
        assert "second signal: stopping now" in server.stderr.read()
        call.wait(timeout=20)
        assert call.returncode != 0
    finally:
        stop_processes(server, call)
