# The JSON gRPC client's checks of its input (okra_plugins.transport_grpc.client), the
# engine of `okra call`: everything here is refused before a connection is made, so no
# server runs. (Calls through a real server: test_transport_grpc.py, test_e2e_grpc.py.)
#
# Test plan
# - parse_address: HOST:PORT and [IPV6]:PORT, after http://, grpc:// or dns:///, come
#   back as gRPC targets; no port, a port out of 1-65535 (gRPC would pick 443 or wrap it
#   around), no host, an IPv6 address without brackets, a bad host, an empty address and
#   https:// are INVALID_ARGUMENT saying what is wrong.
# - metadata_problem: lower-case ASCII names with printable ASCII text values, and -bin
#   names with bytes, pass; an empty or pseudo-header name, upper case, spaces, non-ASCII,
#   reserved grpc- names, control characters or non-ASCII in a value, text for a -bin
#   name and bytes for another are each refused with the reason.
# - call_json refuses, as INVALID_ARGUMENT and before connecting: metadata gRPC would
#   refuse (a -bin name with text used to raise TypeError from grpcio), a timeout that is
#   not a finite number above 0 (gRPC made it an instant DEADLINE_EXCEEDED), request JSON
#   that is not an object (it used to be sent as an empty request), a duplicate key (said
#   once); a package that is not a zip, or that lacks the service, is named once.
import socket

import pytest
import wasmtime

from okra_core.package import write_package
from okra_core.status import RpcError, StatusCode
from okra_plugins.transport_grpc.client import call_json, metadata_problem, parse_address
from support import FIXTURES_DIR, compile_protos, make_manifest

SAY_HELLO = "greeter.v1.Greeter/SayHello"


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("greeter")
    descriptors = compile_protos(tmp, ["greeter/v1/greeter.proto"])
    wasm = wasmtime.wat2wasm((FIXTURES_DIR / "echo.wat").read_text())
    return str(write_package(tmp / "echo.okra.pkg", manifest=make_manifest(host_apis={}), wasm=wasm,
                             descriptor_set=descriptors))


@pytest.fixture
def closed():
    """An address where nothing listens: a call that got that far would be UNAVAILABLE."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{probe.getsockname()[1]}"


@pytest.mark.parametrize(
    "given, target",
    [
        ("127.0.0.1:50051", "127.0.0.1:50051"),
        ("localhost:050051", "localhost:50051"),
        ("http://example.com:80/", "example.com:80"),
        ("grpc://my_host.internal:1", "my_host.internal:1"),
        ("dns:///127.0.0.1:65535", "127.0.0.1:65535"),
        ("[::1]:50051", "[::1]:50051"),
        ("[2001:db8::1]:443", "[2001:db8::1]:443"),
    ],
)
def test_parse_address_gives_the_grpc_target(given, target):
    assert parse_address(given) == target


@pytest.mark.parametrize(
    "given, fragment",
    [
        ("127.0.0.1", "no port"),
        ("127.0.0.1:", "no port"),
        ("127.0.0.1:115587", "the port must be a number from 1 to 65535, not '115587'"),
        ("127.0.0.1:0", "the port must be a number from 1 to 65535"),
        ("127.0.0.1:http", "the port must be a number from 1 to 65535"),
        ("127.0.0.1:٥٠", "the port must be a number from 1 to 65535"),  # digits, but not ASCII
        (":50051", "no host"),
        ("", "empty"),
        ("::1:50051", "put an IPv6 address in brackets"),
        ("::1", "put an IPv6 address in brackets"),
        ("[::1]", "no port"),
        ("[::1]50051", "not [IPV6]:PORT"),
        ("[::1:50051", "not [IPV6]:PORT"),
        ("[127.0.0.1]:50051", "'127.0.0.1' is not an IPv6 address"),
        ("user@host:50051", "'user@host' is not a host name or IP address"),
        ("https://example.com:443", "TLS is not supported"),
    ],
)
def test_parse_address_refuses_what_is_not_host_port(given, fragment):
    with pytest.raises(RpcError) as info:
        parse_address(given)
    assert info.value.code == StatusCode.INVALID_ARGUMENT
    assert fragment in info.value.message


@pytest.mark.parametrize(
    "key, value",
    [("x-request-id", "abc-123"), ("a_b.c-9", " ~ printable "), ("x-empty", ""), ("x-trace-bin", b"\0\xff")],
)
def test_metadata_problem_passes_what_grpc_sends(key, value):
    assert metadata_problem(key, value) is None


@pytest.mark.parametrize(
    "key, value, fragment",
    [
        ("", "v", "the name is empty"),
        (":authority", "v", "pseudo-headers"),
        ("X-Upper", "v", "lower-case ASCII letters, digits and - _ ."),
        ("bad key", "v", "lower-case ASCII letters, digits and - _ ."),
        ("x-é", "v", "lower-case ASCII letters, digits and - _ ."),
        ("grpc-timeout", "1S", "reserved by gRPC (use the timeout for the deadline)"),
        ("grpc-encoding", "gzip", "names starting with grpc- are reserved by gRPC"),
        ("x-a", "a\x01b", "printable ASCII, not '\\x01' (at 1)"),
        ("x-a", "line\nbreak", "printable ASCII"),
        ("x-a", "café", "printable ASCII, not 'é'"),
        ("x-a", b"bytes", "the value must be text"),
        ("x-bin", "text", "binary metadata: its value must be bytes"),
    ],
)
def test_metadata_problem_names_what_grpc_would_refuse(key, value, fragment):
    assert fragment in metadata_problem(key, value)


def assert_refused(call, code=StatusCode.INVALID_ARGUMENT):
    with pytest.raises(RpcError) as info:
        call()
    assert info.value.code == code, info.value
    return info.value.message


@pytest.mark.parametrize("metadata", [[("x-bin", "v")], [("bad key", "v")], [("x-a", "a\x01")], [("grpc-x", "v")]])
def test_call_json_refuses_metadata_grpc_would_refuse(package, closed, metadata):
    message = assert_refused(lambda: call_json(closed, SAY_HELLO, "{}", package=package, metadata=metadata))
    assert message.startswith(f"metadata {metadata[0][0]!r}: ")


@pytest.mark.parametrize("timeout", [0, -1, float("inf"), float("nan"), 1e10])
def test_call_json_refuses_a_timeout_that_is_not_finite_and_above_zero(package, closed, timeout):
    message = assert_refused(lambda: call_json(closed, SAY_HELLO, "{}", package=package, timeout=timeout))
    assert message == f"the timeout must be above 0 and at most 1e9 seconds, not {timeout}"


@pytest.mark.parametrize(
    "body, kind", [('""', "a string"), ("[]", "an array"), ("[1]", "an array"), ("0", "a number"), ("false", "a boolean")]
)
def test_call_json_refuses_request_json_that_is_not_an_object(package, closed, body, kind):
    message = assert_refused(lambda: call_json(closed, SAY_HELLO, body, package=package))
    assert message == (
        f"request JSON must be an object holding the fields of greeter.v1.HelloRequest (e.g. {{}}), not {kind}"
    )


def test_call_json_names_a_duplicate_key_once(package, closed):
    message = assert_refused(lambda: call_json(closed, SAY_HELLO, '{"name": "a", "name": "b"}', package=package))
    assert message == 'request JSON for greeter.v1.HelloRequest does not parse: key "name" appears twice in one object'


def test_call_json_names_a_package_that_is_not_a_zip_once(tmp_path, closed):
    bogus = tmp_path / "notzip.okra.pkg"
    bogus.write_bytes(b"not a zip")
    message = assert_refused(lambda: call_json(closed, SAY_HELLO, "{}", package=str(bogus)))
    assert message.startswith(f"{bogus}: not an OKRA package") and message.count(str(bogus)) == 1


def test_call_json_names_the_package_once_when_it_lacks_the_service(package, closed):
    message = assert_refused(lambda: call_json(closed, "nope.v1.Nope/Say", "{}", package=package))
    assert message == f"{package}: package greeter has no service nope.v1.Nope (it has: greeter.v1.Greeter)"
