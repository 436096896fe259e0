"""A JSON client for any gRPC server that OKRA serves (the engine of `okra call`).

It learns the method's message types from the server itself (server reflection, v1 then
v1alpha) or from a package file, so calling a service needs no generated code:

    call_json("127.0.0.1:50051", "greeter.v1.Greeter/SayHello", '{"name": "Ada"}')
    for reply in call_json_stream("127.0.0.1:50051", "greeter.v1.Greeter/GreetMany", '{"name": "Ada"}'):
        print(reply)  # each response of a server stream as it arrives

JSON follows the proto3 JSON mapping. The request accepts both the JSON names
(``userId``) and the proto field names (``user_id``). The response is printed with the
JSON names and with every field, including fields at their default value (``"count": 0``,
``"items": []``): an empty object for a response that does carry a zero is more confusing
than a few extra lines. Fields with explicit presence (``optional``, messages, oneofs)
appear only when set, so "unset" stays distinguishable from "zero" where the schema
makes the distinction.

Every failure raises `okra_core.status.RpcError`: the server's own code and message, or
a code chosen here for what went wrong before the call (INVALID_ARGUMENT for bad JSON or
a bad target, UNIMPLEMENTED for an unknown service or method, UNAVAILABLE when nothing
listens at the address).

Bad input is refused before anything is sent, with INVALID_ARGUMENT naming it: an
address that is not HOST:PORT (`parse_address`), metadata gRPC would refuse
(`metadata_problem`), a request that is not a JSON object.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Iterable, Iterator

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory
from google.protobuf.message import Message
from grpc_reflection.v1alpha import reflection_pb2

from okra_core.metadata import is_header_name
from okra_core.status import RpcError, StatusCode

from ._status import FROM_GRPC

__all__ = [
    "call_json", "call_json_stream", "parse_target", "parse_address", "metadata_problem", "list_services",
]

#: The longest timeout, in seconds (about 31 years): gRPC counts deadlines in int64
#: nanoseconds since 1970, and turns a later one into an instant DEADLINE_EXCEEDED.
MAX_TIMEOUT = 1e9

_REFLECTION_PATHS = (
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
)


def call_json(
    address: str,
    target: str,
    json_text: str,
    *,
    package: str | None = None,
    timeout: float = 30.0,
    metadata: Iterable[tuple[str, str | bytes]] = (),
) -> str:
    """Call the unary method `target` ("pkg.Service/Method") at `address` ("host:port")
    with the request `json_text`; return the response as JSON text (indent 2).

    The schema comes from `package` (a path to an .okra.pkg) when given, else from the
    server's reflection service.
    """
    responses = list(
        call_json_stream(address, target, json_text, package=package, timeout=timeout,
                         metadata=metadata, unary_only=True)
    )
    return responses[0]


def call_json_stream(
    address: str,
    target: str,
    json_text: str,
    *,
    package: str | None = None,
    timeout: float = 30.0,
    metadata: Iterable[tuple[str, str | bytes]] = (),
    unary_only: bool = False,
) -> Iterator[str]:
    """Call the unary or server-streaming method `target`; yield each response as JSON
    text (indent 2) as it arrives: one for a unary method, any number for a stream.
    An error (RpcError) may come after some responses. `timeout` bounds the whole call.

    `metadata` holds (key, value) pairs: lower-case keys, text values, bytes values for
    keys ending in ``-bin`` (binary metadata)."""
    service, method = parse_target(target)
    address = parse_address(address)
    metadata = _checked_metadata(metadata)
    if not 0 < timeout <= MAX_TIMEOUT:  # also refuses nan
        raise RpcError(
            StatusCode.INVALID_ARGUMENT, f"the timeout must be above 0 and at most 1e9 seconds, not {timeout}"
        )
    with grpc.insecure_channel(address) as channel:
        if package is not None:
            found = _method_from_package(package, service, method)
        else:
            found = _method_from_reflection(channel, address, service, method, timeout)
        input_class, output_class, streaming = found
        if streaming and unary_only:
            raise RpcError(
                StatusCode.INVALID_ARGUMENT,
                f"{service}/{method} is a server-streaming method; call it with call_json_stream",
            )
        request = _parse_request(json_text, input_class).SerializeToString()
        try:
            if streaming:
                call = channel.unary_stream(f"/{service}/{method}")
                responses = call(request, timeout=timeout, metadata=metadata)
            else:
                call = channel.unary_unary(f"/{service}/{method}")
                responses = (call(request, timeout=timeout, metadata=metadata),)
            for response in responses:
                yield _to_json(response, output_class, service, method)
        except grpc.RpcError as error:
            raise _rpc_error(error, address) from None


def _to_json(response: bytes, output_class: type[Message], service: str, method: str) -> str:
    try:
        message = output_class.FromString(response)
    except Exception as exc:  # DecodeError, or a schema that does not match the server
        raise RpcError(
            StatusCode.INTERNAL,
            f"the response of {service}/{method} does not parse as {output_class.DESCRIPTOR.full_name}: {exc}",
        ) from None
    return json_format.MessageToJson(
        message,
        indent=2,
        preserving_proto_field_name=False,
        always_print_fields_with_no_presence=True,
    )


def list_services(address: str, *, timeout: float = 10.0) -> list[str]:
    """The services the server at `address` lists through reflection."""
    address = parse_address(address)
    with grpc.insecure_channel(address) as channel:
        response = _reflect(channel, address, reflection_pb2.ServerReflectionRequest(list_services=""), timeout)
    return sorted(s.name for s in response.list_services_response.service)


def parse_target(target: str) -> tuple[str, str]:
    """("pkg.Service", "Method") from "pkg.Service/Method" or "/pkg.Service/Method"."""
    service, slash, method = target.strip().lstrip("/").partition("/")
    if not slash or not service or not method or "/" in method:
        raise RpcError(
            StatusCode.INVALID_ARGUMENT,
            f"target {target!r} is not of the form package.Service/Method "
            "(e.g. greeter.v1.Greeter/SayHello)",
        )
    return service, method


_HOST = re.compile(r"[A-Za-z0-9._-]+")


def parse_address(address: str) -> str:
    """The gRPC target for `address`: "host:port" or "[ipv6]:port", optionally after
    http://, grpc:// or dns:///. The port is required (1-65535): gRPC would otherwise
    pick 443, or wrap a port above 65535 around. RpcError INVALID_ARGUMENT if it is not
    such an address."""
    given = address
    for scheme in ("http://", "grpc://", "dns:///"):
        if address.startswith(scheme):
            address = address[len(scheme) :]
    if address.startswith("https://"):
        raise RpcError(StatusCode.INVALID_ARGUMENT, f"{given}: TLS is not supported by this client; use host:port")
    address = address.rstrip("/")

    def bad(why: str) -> RpcError:
        return RpcError(StatusCode.INVALID_ARGUMENT, f"address {given!r}: {why}")

    if not address:
        raise bad("empty (use HOST:PORT, e.g. 127.0.0.1:50051)")
    if address.startswith("["):
        host, bracket, port = address[1:].partition("]")
        if not bracket or (port and not port.startswith(":")):
            raise bad("not [IPV6]:PORT (e.g. [::1]:50051)")
        port = port[1:]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise bad(f"{host!r} is not an IPv6 address") from None
        host = f"[{host}]"
    else:
        host, colon, port = address.rpartition(":")
        if ":" in host:
            raise bad("put an IPv6 address in brackets (e.g. [::1]:50051)")
        if not colon:
            raise bad("no port (use HOST:PORT, e.g. 127.0.0.1:50051)")
        if not host:
            raise bad("no host (use HOST:PORT, e.g. 127.0.0.1:50051)")
        if not _HOST.fullmatch(host):
            raise bad(f"{host!r} is not a host name or IP address")
    if not port:
        raise bad("no port (use HOST:PORT, e.g. 127.0.0.1:50051)")
    if not port.isascii() or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise bad(f"the port must be a number from 1 to 65535, not {port!r}")
    return f"{host}:{int(port)}"


def metadata_problem(key: str, value: str | bytes) -> str | None:
    """Why gRPC would refuse to send the metadata pair (key, value), or None.

    Keys are lower-case ASCII letters, digits and ``- _ .``; names starting with
    ``grpc-`` are gRPC's own. A key ending in ``-bin`` carries binary data (bytes);
    any other key carries printable ASCII text (space to ``~``).
    """
    if not key:
        return "the name is empty"
    if key.startswith(":"):
        return "names starting with ':' are HTTP/2 pseudo-headers, which gRPC sets itself"
    if not is_header_name(key):
        return "a name may hold only lower-case ASCII letters, digits and - _ ."
    if key.startswith("grpc-"):
        hint = " (use the timeout for the deadline)" if key == "grpc-timeout" else ""
        return f"names starting with grpc- are reserved by gRPC{hint}"
    if key.endswith("-bin"):
        if not isinstance(value, (bytes, bytearray)):
            return "a name ending in -bin is binary metadata: its value must be bytes"
        return None
    if not isinstance(value, str):
        return "the value must be text (binary metadata needs a name ending in -bin)"
    for index, char in enumerate(value):
        if not " " <= char <= "~":
            return (
                f"the value may hold only printable ASCII, not {char!r} (at {index}); "
                "binary metadata needs a name ending in -bin"
            )
    return None


def _checked_metadata(metadata: Iterable[tuple[str, str | bytes]]) -> tuple[tuple[str, str | bytes], ...]:
    checked = tuple((key, bytes(value) if isinstance(value, bytearray) else value) for key, value in metadata)
    for key, value in checked:
        problem = metadata_problem(key, value)
        if problem:
            raise RpcError(StatusCode.INVALID_ARGUMENT, f"metadata {key!r}: {problem}")
    return checked


def _parse_request(json_text: str, input_class: type[Message]) -> Message:
    """The request message for `json_text`, which must be a JSON object (a string, a
    list or null would otherwise pass as an empty request)."""
    name = input_class.DESCRIPTOR.full_name
    try:
        value = json.loads(json_text or "{}", object_pairs_hook=_refuse_duplicate_keys)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, a duplicate key, too deep
        raise RpcError(StatusCode.INVALID_ARGUMENT, f"request JSON for {name} does not parse: {exc}") from None
    if not isinstance(value, dict):
        kind = {str: "a string", list: "an array", bool: "a boolean", type(None): "null"}.get(type(value), "a number")
        raise RpcError(
            StatusCode.INVALID_ARGUMENT,
            f"request JSON must be an object holding the fields of {name} (e.g. {{}}), not {kind}",
        )
    request = input_class()
    try:
        json_format.ParseDict(value, request)
    except json_format.ParseError as exc:
        raise RpcError(StatusCode.INVALID_ARGUMENT, f"request JSON does not fit {name}: {exc}") from None
    return request


def _refuse_duplicate_keys(pairs: list[tuple[str, object]]) -> dict:
    result: dict = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"key {json.dumps(key)} appears twice in one object")
        result[key] = value
    return result


def _method_from_package(path: str, service: str, method: str) -> tuple[type[Message], type[Message], bool]:
    from okra_core.errors import PackageError
    from okra_core.package import load_package

    try:
        package = load_package(path)
    except PackageError as exc:  # its message starts with the path already
        raise RpcError(StatusCode.INVALID_ARGUMENT, str(exc)) from None
    try:
        schema = package.schema(service)
    except PackageError as exc:
        raise RpcError(StatusCode.INVALID_ARGUMENT, f"{path}: {exc}") from None
    found = schema.methods.get(method)
    if found is None:
        raise RpcError(
            StatusCode.UNIMPLEMENTED,
            f"service {service} in {path} has no method {method!r} "
            f"(methods: {', '.join(sorted(schema.methods)) or 'none'})",
        )
    _refuse_client_streaming(service, method, found.client_streaming)
    return found.input_class, found.output_class, found.server_streaming


def _method_from_reflection(
    channel: grpc.Channel, address: str, service: str, method: str, timeout: float
) -> tuple[type[Message], type[Message], bool]:
    request = reflection_pb2.ServerReflectionRequest(file_containing_symbol=service)
    response = _reflect(channel, address, request, timeout)
    if response.HasField("error_response"):
        served = list_services(address, timeout=timeout)
        raise RpcError(
            StatusCode.UNIMPLEMENTED,
            f"{address} does not serve {service} (it serves: {', '.join(served) or 'nothing'})",
        )
    files = {}
    for raw in response.file_descriptor_response.file_descriptor_proto:
        file = descriptor_pb2.FileDescriptorProto.FromString(raw)
        files[file.name] = file
    _fetch_missing(channel, address, files, timeout)
    pool = descriptor_pool.DescriptorPool()
    for file in _dependencies_first(files):
        pool.Add(file)
    try:
        descriptor = pool.FindServiceByName(service)
    except KeyError:
        raise RpcError(
            StatusCode.UNIMPLEMENTED, f"{address} reflection does not describe service {service}"
        ) from None
    found = descriptor.methods_by_name.get(method)
    if found is None:
        raise RpcError(
            StatusCode.UNIMPLEMENTED,
            f"service {service} has no method {method!r} "
            f"(methods: {', '.join(sorted(descriptor.methods_by_name)) or 'none'})",
        )
    _refuse_client_streaming(service, method, found.client_streaming)
    return (
        message_factory.GetMessageClass(found.input_type),
        message_factory.GetMessageClass(found.output_type),
        found.server_streaming,
    )


def _refuse_client_streaming(service: str, method: str, client_streaming: bool) -> None:
    if client_streaming:
        raise RpcError(
            StatusCode.UNIMPLEMENTED,
            f"{service}/{method} streams requests; this client calls unary and "
            "server-streaming methods only",
        )


def _fetch_missing(channel, address: str, files: dict, timeout: float) -> None:
    """Ask for dependencies the server did not send along (servers may send each file
    once per stream, or only the file asked for)."""
    while True:
        missing = {dep for file in files.values() for dep in file.dependency if dep not in files}
        if not missing:
            return
        for name in missing:
            response = _reflect(
                channel, address, reflection_pb2.ServerReflectionRequest(file_by_filename=name), timeout
            )
            if response.HasField("error_response"):
                raise RpcError(
                    StatusCode.INTERNAL,
                    f"{address} reflection cannot supply {name}: {response.error_response.error_message}",
                )
            for raw in response.file_descriptor_response.file_descriptor_proto:
                file = descriptor_pb2.FileDescriptorProto.FromString(raw)
                files.setdefault(file.name, file)


def _dependencies_first(files: dict[str, descriptor_pb2.FileDescriptorProto]):
    done: set[str] = set()
    ordered = []

    def visit(name: str) -> None:
        if name in done or name not in files:
            return
        done.add(name)
        for dep in files[name].dependency:
            visit(dep)
        ordered.append(files[name])

    for name in files:
        visit(name)
    return ordered


def _reflect(channel, address: str, request, timeout: float):
    """One reflection request: v1 first, v1alpha if the server lacks v1."""
    last: grpc.RpcError | None = None
    for path in _REFLECTION_PATHS:
        stream = channel.stream_stream(
            path,
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
        )
        try:
            for response in stream(iter((request,)), timeout=timeout):
                return response
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.UNIMPLEMENTED:
                raise _rpc_error(error, address) from None
            last = error
    raise RpcError(
        StatusCode.UNIMPLEMENTED,
        f"{address} does not offer server reflection ({last.details() if last else 'no answer'}); "
        "pass the service's package with --package to call it",
    )


def _rpc_error(error: grpc.RpcError, address: str) -> RpcError:
    code = FROM_GRPC.get(error.code(), StatusCode.UNKNOWN)
    details = error.details() or ""
    if code == StatusCode.UNAVAILABLE and _is_connect_failure(details):
        return RpcError(code, f"nothing answers at {address}: is the server running there? ({details})")
    return RpcError(code, details)


def _is_connect_failure(details: str) -> bool:
    text = details.lower()
    return any(
        hint in text
        for hint in ("failed to connect", "connection refused", "connect failed", "dns resolution failed", "name resolution")
    )
