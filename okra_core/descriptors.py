"""Protobuf descriptors of a package: the types the host checks requests against.

Every package gets a fresh DescriptorPool built only from its own FileDescriptorSet, the
well-known types included. Sharing a pool (or using the default one) would make two
packages that define the same type name, or ship different versions of one `.proto` file,
conflict; with a pool each, their descriptors and message classes are distinct objects.
"""

from __future__ import annotations

import dataclasses

from google.protobuf import descriptor_pb2, message_factory
from google.protobuf.descriptor import Descriptor, ServiceDescriptor
from google.protobuf.descriptor_pool import DescriptorPool
from google.protobuf.message import DecodeError, Message

from okra_core.errors import PackageError

_INCLUDE_IMPORTS = "build it with protoc --descriptor_set_out=... --include_imports"


@dataclasses.dataclass(frozen=True)
class MethodSchema:
    """One RPC method, with the message classes that parse its input and output."""

    name: str  # "SayHello"
    full_path: str  # "/greeter.v1.Greeter/SayHello", the gRPC path
    input: Descriptor
    output: Descriptor
    input_class: type[Message]
    output_class: type[Message]
    client_streaming: bool
    server_streaming: bool


@dataclasses.dataclass(frozen=True)
class ServiceSchema:
    """One service of a package and everything needed to check its calls."""

    name: str  # fully qualified, "greeter.v1.Greeter"
    pool: DescriptorPool  # all files of the package
    descriptor: ServiceDescriptor
    methods: dict[str, MethodSchema]  # by simple name, in declaration order
    descriptor_set: bytes = dataclasses.field(repr=False)  # the serialized FileDescriptorSet


def parse_descriptor_set(data: bytes, *, source: str = "descriptor set") -> descriptor_pb2.FileDescriptorSet:
    """Parse a serialized FileDescriptorSet; raises PackageError naming `source`."""
    try:
        fds = descriptor_pb2.FileDescriptorSet.FromString(bytes(data))
    except (DecodeError, TypeError, ValueError) as exc:
        raise PackageError(
            f"{source} is not a serialized FileDescriptorSet ({_reason(exc)}): {_INCLUDE_IMPORTS}"
        ) from None
    if not fds.file:
        raise PackageError(f"{source} holds no .proto files: {_INCLUDE_IMPORTS}")
    return fds


def load_descriptor_set(data: bytes, *, source: str = "descriptor set") -> DescriptorPool:
    """A new DescriptorPool holding every file of the set, added in dependency order.

    Raises PackageError if the set does not parse, lacks a file that another imports (a
    set built without `--include_imports`), or a file does not build.
    """
    fds = parse_descriptor_set(data, source=source)
    pool = DescriptorPool()
    for file in _dependency_order(fds, source):
        try:
            pool.AddSerializedFile(file.SerializeToString())
        except (TypeError, ValueError) as exc:
            raise PackageError(f"{source}: {file.name} does not build: {_reason(exc)}") from None
    return pool


def _dependency_order(
    fds: descriptor_pb2.FileDescriptorSet, source: str
) -> list[descriptor_pb2.FileDescriptorProto]:
    by_name: dict[str, descriptor_pb2.FileDescriptorProto] = {}
    for file in fds.file:
        if file.name in by_name:
            raise PackageError(f"{source} holds {file.name} twice: {_INCLUDE_IMPORTS}")
        by_name[file.name] = file
    order: list[descriptor_pb2.FileDescriptorProto] = []
    done: set[str] = set()
    # Iterative depth-first walk: deep import chains must not hit the recursion limit.
    for root in by_name:
        if root in done:
            continue
        path: list[str] = [root]
        stack = [(root, iter(by_name[root].dependency))]
        on_path = {root}
        while stack:
            name, deps = stack[-1]
            dep = next(deps, None)
            if dep is None:
                stack.pop()
                path.pop()
                on_path.discard(name)
                done.add(name)
                order.append(by_name[name])
                continue
            if dep in done:
                continue
            if dep in on_path:
                cycle = " -> ".join(path[path.index(dep):] + [dep])
                raise PackageError(f"{source}: import cycle {cycle}: remove one of the imports")
            if dep not in by_name:
                raise PackageError(
                    f"{source}: {name} imports {dep}, which the set does not include: "
                    f"{_INCLUDE_IMPORTS}"
                )
            path.append(dep)
            on_path.add(dep)
            stack.append((dep, iter(by_name[dep].dependency)))
    return order


def service_names(descriptor_set: bytes | descriptor_pb2.FileDescriptorSet) -> list[str]:
    """Fully qualified names of every service the set defines, in file order."""
    fds = (
        descriptor_set
        if isinstance(descriptor_set, descriptor_pb2.FileDescriptorSet)
        else parse_descriptor_set(descriptor_set)
    )
    names = []
    for file in fds.file:
        prefix = f"{file.package}." if file.package else ""
        names.extend(prefix + service.name for service in file.service)
    return names


def service_schema(pool: DescriptorPool, descriptor_set: bytes, name: str) -> ServiceSchema:
    """The schema of service `name` from a pool made by `load_descriptor_set`.

    Raises PackageError, listing the services that exist, if the pool has no such service.
    """
    try:
        service = pool.FindServiceByName(name)
    except KeyError:
        known = ", ".join(service_names(descriptor_set)) or "none"
        raise PackageError(
            f"the descriptor set has no service {name} (services: {known})"
        ) from None
    methods = {}
    for method in service.methods:
        methods[method.name] = MethodSchema(
            name=method.name,
            full_path=f"/{service.full_name}/{method.name}",
            input=method.input_type,
            output=method.output_type,
            input_class=message_factory.GetMessageClass(method.input_type),
            output_class=message_factory.GetMessageClass(method.output_type),
            client_streaming=method.client_streaming,
            server_streaming=method.server_streaming,
        )
    return ServiceSchema(
        name=service.full_name,
        pool=pool,
        descriptor=service,
        methods=methods,
        descriptor_set=bytes(descriptor_set),
    )


def parse_input(method: MethodSchema, payload: bytes) -> None:
    """Check that `payload` parses as the method's input type; raise ValueError if not.

    The message says what is wrong ("the wire format is corrupt"); callers add the type
    name. Unknown fields are accepted, as protobuf does. Costs about as much as the
    parse itself: this runs on every request.
    """
    try:
        method.input_class.FromString(payload)
    except DecodeError as exc:
        raise ValueError(_reason(exc)) from None


def _reason(exc: Exception) -> str:
    """The useful part of a protobuf error message, without the restated type name."""
    text = str(exc) or type(exc).__name__
    text = text.removeprefix("Couldn't build proto file into descriptor pool: ")
    if text.startswith("Error parsing message"):
        text = text.split(": ", 1)[1] if ": " in text else "the wire format is corrupt"
    text = text.strip().rstrip(".")
    if text == "Wire format was corrupt":
        return "the wire format is corrupt"
    return text[:1].lower() + text[1:] if text[1:2].islower() else text
