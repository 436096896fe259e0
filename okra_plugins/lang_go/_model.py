"""What the Go code generator generates, decided before any code is written: which
proto files, which Go package each lands in, and every Go name.

Each proto package becomes one Go package under `gen/` (`greeter.v1` ->
`<module>/gen/greeter/v1`, package `greeterv1`), so names never clash across proto
packages; within a package, clashes are settled as protoc-gen-go settles them (a `_`
suffix), with types served first so their names stay stable.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from google.protobuf import descriptor_pb2

from okra_core.errors import BuildError
from okra_plugins.lang_go._names import Namespace, go_camel_case, go_package_name

FD = descriptor_pb2.FieldDescriptorProto

#: Methods every generated message has; field names must avoid them.
MESSAGE_METHODS = frozenset(
    {"Reset", "Marshal", "MarshalAppend", "Unmarshal", "UnmarshalMerge", "String"}
)

#: Local names used inside generated functions; import aliases must avoid them.
LOCAL_NAMES = frozenset(
    "b c v n x k m e p s ok err num typ start valueStart depth key value unknown dst ctx req resp in out impl opts".split()
)

@dataclasses.dataclass(eq=False)
class GoPackage:
    proto_package: str
    import_path: str
    dir: str  # relative to the project, e.g. "gen/greeter/v1"
    name: str  # e.g. "greeterv1"
    files: list[descriptor_pb2.FileDescriptorProto] = dataclasses.field(default_factory=list)
    names: Namespace = dataclasses.field(default_factory=Namespace)


@dataclasses.dataclass(eq=False)
class GoType:
    """A message or enum, with its Go name and where it lives."""

    full_name: str  # "greeter.v1.HelloRequest" (no leading dot)
    kind: str  # "message" or "enum"
    proto: descriptor_pb2.DescriptorProto | descriptor_pb2.EnumDescriptorProto
    file: descriptor_pb2.FileDescriptorProto
    parent: GoType | None
    path: tuple[int, ...]  # source-code-info path, for comments
    package: GoPackage | None = None
    go_name: str = ""
    # messages
    fields: list[GoField] = dataclasses.field(default_factory=list)
    oneofs: list[GoOneof] = dataclasses.field(default_factory=list)
    # enums
    values: list[tuple[str, int, str]] = dataclasses.field(default_factory=list)  # (const, number, proto name)

    @property
    def is_map_entry(self) -> bool:
        return self.kind == "message" and self.proto.options.map_entry


@dataclasses.dataclass(eq=False)
class GoOneof:
    proto_name: str
    go_name: str  # the struct field, e.g. "Kind"
    interface: str  # e.g. "isContact_Kind"
    getter: str
    path: tuple[int, ...]
    members: list[GoField] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(eq=False)
class GoField:
    proto: descriptor_pb2.FieldDescriptorProto
    full_name: str  # "greeter.v1.HelloRequest.name", for error messages
    go_name: str = ""
    getter: str = ""
    path: tuple[int, ...] = ()
    oneof: GoOneof | None = None
    wrapper: str = ""  # oneof members: the wrapper type, e.g. "Contact_Email"
    type_ref: GoType | None = None  # messages and enums
    map_key: GoField | None = None
    map_value: GoField | None = None

    @property
    def number(self) -> int:
        return self.proto.number

    @property
    def type(self) -> int:
        return self.proto.type

    @property
    def repeated(self) -> bool:
        return self.proto.label == FD.LABEL_REPEATED and self.map_key is None

    @property
    def is_map(self) -> bool:
        return self.map_key is not None

    @property
    def optional(self) -> bool:
        return self.proto.proto3_optional

    @property
    def is_message(self) -> bool:
        return self.proto.type == FD.TYPE_MESSAGE

    @property
    def packed(self) -> bool:
        if self.proto.type in (FD.TYPE_STRING, FD.TYPE_BYTES, FD.TYPE_MESSAGE):
            return False
        options = self.proto.options
        return not (options.HasField("packed") and not options.packed)


@dataclasses.dataclass(eq=False)
class GoMethod:
    proto_name: str
    go_name: str
    input: GoType
    output: GoType
    path: tuple[int, ...]
    #: For a server-streaming method, the Go type its implementation sends through
    #: (e.g. "GreeterWatchStream"); "" for a unary one.
    stream_type: str = ""


@dataclasses.dataclass(eq=False)
class GoService:
    full_name: str
    interface: str
    register: str
    file: descriptor_pb2.FileDescriptorProto
    path: tuple[int, ...]
    methods: list[GoMethod] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(eq=False)
class GoClient:
    """The client of a service the project calls (a dependency, okra.call): a struct
    with one method per unary method of the service."""

    full_name: str
    type_name: str  # e.g. "InventoryClient"
    constructor: str  # e.g. "NewInventoryClient"
    file: descriptor_pb2.FileDescriptorProto
    path: tuple[int, ...]
    methods: list[GoMethod] = dataclasses.field(default_factory=list)
    #: (method name, kind) of the streaming methods, which okra.call cannot call.
    skipped: list[tuple[str, str]] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class Model:
    packages: list[GoPackage]
    types: dict[str, GoType]
    services: list[GoService]
    #: proto file name -> the file's types in declaration order (messages pre-order)
    file_types: dict[str, list[GoType]]
    clients: list[GoClient] = dataclasses.field(default_factory=list)


def build_model(
    descriptor_set: bytes,
    proto_files: Sequence[str],
    services: Sequence[str],
    module: str,
    clients: Sequence[str] = (),
) -> Model:
    """`services` are implemented by the project; `clients` are the services it calls
    (its okra.call dependencies), found in any file of the descriptor set."""
    fds = descriptor_pb2.FileDescriptorSet.FromString(descriptor_set)
    files = {f.name: f for f in fds.file}
    for name in proto_files:
        if name not in files:
            raise BuildError(f"the descriptor set does not contain {name}")

    types: dict[str, GoType] = {}
    file_types: dict[str, list[GoType]] = {}
    for file in fds.file:
        file_types[file.name] = _index_file(file, types)

    selected = _select_services(files, proto_files, services, types)
    selected_clients = _select_clients(fds.file, clients)
    needed = _needed_files(files, proto_files, selected, types, file_types, selected_clients)
    for name in needed:
        _check_syntax(files[name])

    packages: dict[str, GoPackage] = {}
    for name in needed:  # descriptor-set order: deterministic
        file = files[name]
        pkg = packages.get(file.package)
        if pkg is None:
            directory = "/".join(["gen", *[p for p in file.package.split(".") if p]])
            pkg = packages[file.package] = GoPackage(
                proto_package=file.package,
                import_path=f"{module}/{directory}",
                dir=directory,
                name=go_package_name(file.package),
            )
        pkg.files.append(file)

    for pkg in packages.values():
        _name_package(pkg, file_types, types)
    go_services = [_name_service(packages[files[f].package], s, files[f], i, types) for f, s, i in selected]
    go_clients = [_name_client(packages[files[f].package], s, files[f], i, types) for f, s, i in selected_clients]
    _check_import_cycles(list(packages.values()), file_types)
    return Model(list(packages.values()), types, go_services, file_types, go_clients)


def _index_file(file, types: dict[str, GoType]) -> list[GoType]:
    """Register every message and enum of a file by full name, in declaration order."""
    prefix = f"{file.package}." if file.package else ""
    out: list[GoType] = []

    def add_enum(enum, parent, path):
        full = f"{parent.full_name}.{enum.name}" if parent else prefix + enum.name
        t = GoType(full, "enum", enum, file, parent, path)
        types[full] = t
        out.append(t)

    def add_message(message, parent, path):
        full = f"{parent.full_name}.{message.name}" if parent else prefix + message.name
        t = GoType(full, "message", message, file, parent, path)
        types[full] = t
        out.append(t)
        for i, enum in enumerate(message.enum_type):
            add_enum(enum, t, (*path, 4, i))
        for i, nested in enumerate(message.nested_type):
            add_message(nested, t, (*path, 3, i))

    for i, enum in enumerate(file.enum_type):
        add_enum(enum, None, (5, i))
    for i, message in enumerate(file.message_type):
        add_message(message, None, (4, i))
    return out


def _select_services(files, proto_files, services, types):
    """(file name, ServiceDescriptorProto, index) of each service to implement."""
    by_name = {}
    for name in proto_files:
        file = files[name]
        prefix = f"{file.package}." if file.package else ""
        for i, service in enumerate(file.service):
            by_name[prefix + service.name] = (name, service, i)
    selected = []
    for name in services:
        if name not in by_name:
            known = ", ".join(sorted(by_name)) or "none"
            raise BuildError(f"service {name} is not declared by the project's protos (declared: {known})")
        file_name, service, i = by_name[name]
        for method in service.method:
            if method.client_streaming:
                kind = "bidirectional-streaming" if method.server_streaming else "client-streaming"
                raise BuildError(
                    f"{name}.{method.name} is a {kind} method, which OKRA does not support: "
                    "methods may stream responses only (drop `stream` before the request type)"
                )
        selected.append(by_name[name])
    return selected


def _select_clients(all_files, clients):
    """(file name, ServiceDescriptorProto, index) of each service the project calls."""
    by_name = {}
    for file in all_files:
        prefix = f"{file.package}." if file.package else ""
        for i, service in enumerate(file.service):
            by_name[prefix + service.name] = (file.name, service, i)
    selected = []
    for name in clients:
        if name not in by_name:
            raise BuildError(
                f'okra.toml lists {name} in [host_apis."okra.call"] services, but no .proto '
                "of the project declares it: add the service's .proto to [service] proto "
                "(or import it from one), so that its client can be generated"
            )
        selected.append(by_name[name])
    return selected


def _unary(method) -> bool:
    return not (method.client_streaming or method.server_streaming)


def _type_of(types, type_name: str) -> GoType:
    t = types.get(type_name.lstrip("."))
    if t is None:
        raise BuildError(f"type {type_name.lstrip('.')} is not in the descriptor set")
    return t


def _needed_files(files, proto_files, selected, types, file_types, clients=()) -> list[str]:
    """The project's files, plus every file defining a type they (or the selected
    services, or the unary methods of the clients) use, transitively, and the files
    declaring the clients. Imports used only for options are left out."""
    needed: set[str] = set()
    todo = list(proto_files)
    for _, service, _ in selected:
        for method in service.method:
            todo.append(_type_of(types, method.input_type).file.name)
            todo.append(_type_of(types, method.output_type).file.name)
    for file_name, service, _ in clients:
        todo.append(file_name)
        for method in filter(_unary, service.method):
            todo.append(_type_of(types, method.input_type).file.name)
            todo.append(_type_of(types, method.output_type).file.name)
    while todo:
        name = todo.pop()
        if name in needed:
            continue
        needed.add(name)
        for t in file_types[name]:
            if t.kind != "message":
                continue
            for field in t.proto.field:
                if field.type in (FD.TYPE_MESSAGE, FD.TYPE_ENUM, FD.TYPE_GROUP):
                    todo.append(_type_of(types, field.type_name).file.name)
    return [name for name in files if name in needed]


def _check_syntax(file) -> None:
    if file.syntax == "proto3":
        return
    syntax = "editions" if file.syntax == "editions" else "proto2"
    raise BuildError(
        f"{file.name} uses {syntax} syntax; Go guests support proto3 only: "
        f'use syntax = "proto3"'
    )


def _name_package(pkg: GoPackage, file_types, types) -> None:
    names = pkg.names
    all_types = [t for f in pkg.files for t in file_types[f.name]]
    for t in all_types:
        t.package = pkg
    # Types first, so that their names never depend on what else is declared.
    for t in all_types:
        if t.is_map_entry:
            continue
        base = go_camel_case(t.proto.name)
        t.go_name = names.claim(f"{t.parent.go_name}_{base}" if t.parent else base)
    for t in all_types:
        if t.kind == "enum":
            prefix = t.parent.go_name if t.parent else t.go_name
            for value in t.proto.value:
                const = names.claim(f"{prefix}_{value.name}")
                t.values.append((const, value.number, value.name))
    for t in all_types:
        if t.kind == "message" and not t.is_map_entry:
            _name_message(t, names, types)


def _name_message(t: GoType, names: Namespace, types) -> None:
    message = t.proto
    fields_ns = Namespace(MESSAGE_METHODS)
    oneofs: dict[int, GoOneof] = {}
    ordered: list[GoField | GoOneof] = []
    for i, field in enumerate(message.field):
        if field.type == FD.TYPE_GROUP:
            raise BuildError(f"{t.full_name}.{field.name} is a group, which proto3 does not have")
        go_field = GoField(field, f"{t.full_name}.{field.name}", path=(*t.path, 2, i))
        if field.type in (FD.TYPE_MESSAGE, FD.TYPE_ENUM):
            go_field.type_ref = _type_of(types, field.type_name)
        if go_field.type_ref is not None and go_field.type_ref.is_map_entry and field.label == FD.LABEL_REPEATED:
            entry = go_field.type_ref
            key, value = sorted(entry.proto.field, key=lambda f: f.number)
            go_field.map_key = GoField(key, f"{entry.full_name}.key")
            go_field.map_value = GoField(value, f"{entry.full_name}.value")
            if value.type in (FD.TYPE_MESSAGE, FD.TYPE_ENUM):
                go_field.map_value.type_ref = _type_of(types, value.type_name)
        if field.HasField("oneof_index") and not field.proto3_optional:
            oneof = oneofs.get(field.oneof_index)
            if oneof is None:
                decl = message.oneof_decl[field.oneof_index]
                oneof = oneofs[field.oneof_index] = GoOneof(
                    decl.name, "", "", "", (*t.path, 8, field.oneof_index)
                )
                ordered.append(oneof)
            oneof.members.append(go_field)
            go_field.oneof = oneof
        else:
            ordered.append(go_field)
        t.fields.append(go_field)
    t.oneofs = list(oneofs.values())

    for item in ordered:
        item.go_name = fields_ns.claim(go_camel_case(item.proto_name if isinstance(item, GoOneof) else item.proto.name))
    getters = Namespace({*MESSAGE_METHODS, *(i.go_name for i in ordered)})
    for item in ordered:
        item.getter = getters.claim("Get" + item.go_name)
        if isinstance(item, GoOneof):
            for member in item.members:
                member.go_name = go_camel_case(member.proto.name)
                member.getter = getters.claim("Get" + member.go_name)
    for oneof in t.oneofs:
        oneof.interface = names.claim(f"is{t.go_name}_{go_camel_case(oneof.proto_name)}")
        for member in oneof.members:
            member.wrapper = names.claim(f"{t.go_name}_{member.go_name}")


def _name_service(pkg: GoPackage, service, file, index: int, types) -> GoService:
    prefix = f"{file.package}." if file.package else ""
    interface = go_camel_case(service.name)
    if interface in pkg.names:
        interface += "Service"
    interface = pkg.names.claim(interface)
    go_service = GoService(
        full_name=prefix + service.name,
        interface=interface,
        register=pkg.names.claim("Register" + interface),
        file=file,
        path=(6, index),
    )
    methods = Namespace()
    for i, method in enumerate(service.method):
        go_name = methods.claim(go_camel_case(method.name))
        go_service.methods.append(
            GoMethod(
                proto_name=method.name,
                go_name=go_name,
                input=_type_of(types, method.input_type),
                output=_type_of(types, method.output_type),
                path=(6, index, 2, i),
                stream_type=(
                    pkg.names.claim(f"{interface}{go_name}Stream")
                    if method.server_streaming
                    else ""
                ),
            )
        )
    return go_service


def _name_client(pkg: GoPackage, service, file, index: int, types) -> GoClient:
    prefix = f"{file.package}." if file.package else ""
    type_name = pkg.names.claim(go_camel_case(service.name) + "Client")
    client = GoClient(
        full_name=prefix + service.name,
        type_name=type_name,
        constructor=pkg.names.claim("New" + type_name),
        file=file,
        path=(6, index),
    )
    methods = Namespace()
    for i, method in enumerate(service.method):
        if not _unary(method):
            kind = {
                (False, True): "server-streaming",
                (True, False): "client-streaming",
            }.get((method.client_streaming, method.server_streaming), "bidirectional-streaming")
            client.skipped.append((method.name, kind))
            continue
        client.methods.append(
            GoMethod(
                proto_name=method.name,
                go_name=methods.claim(go_camel_case(method.name)),
                input=_type_of(types, method.input_type),
                output=_type_of(types, method.output_type),
                path=(6, index, 2, i),
            )
        )
    return client


def _check_import_cycles(packages: list[GoPackage], file_types) -> None:
    """Go packages cannot import each other; proto packages can (through different
    files). Say so plainly instead of letting the Go compiler report a cycle."""
    deps: dict[str, set[str]] = {p.proto_package: set() for p in packages}
    for pkg in packages:
        for file in pkg.files:
            for t in file_types[file.name]:
                for f in t.fields:
                    for ref in (f.type_ref, f.map_value.type_ref if f.map_value else None):
                        if ref is not None and ref.package is not pkg:
                            deps[pkg.proto_package].add(ref.package.proto_package)

    def visit(name, stack):
        for dep in sorted(deps[name]):
            if dep in stack:
                cycle = " -> ".join([*stack[stack.index(dep):], dep])
                raise BuildError(
                    f"proto packages import each other ({cycle}); Go packages cannot: move "
                    "the shared messages into one package"
                )
            visit(dep, [*stack, dep])

    for name in deps:
        visit(name, [name])
