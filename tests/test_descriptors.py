# Test plan: okra_core.descriptors, on descriptor sets compiled by grpc_tools.protoc from
# tests/fixtures/proto (and a few written inline or edited with descriptor_pb2).
# - service_schema: method names, gRPC paths, input/output descriptors and working message
#   classes; streaming flags for every shape; types from a local import and from the
#   well-known types; declaration order kept.
# - load_descriptor_set adds files in dependency order even when the set lists them in
#   reverse.
# - Each defect is a PackageError naming it: bytes that are not a FileDescriptorSet, an
#   empty set, a missing import (says --include_imports), a file listed twice, an import
#   cycle, a file that does not build; the message names the source given.
# - Isolation: every call makes a fresh pool; nothing leaks into the default pool; two
#   packages defining the same full names (or their own copy of a well-known type) get
#   distinct, non-colliding message classes.
# - service_schema on an absent service lists the services that exist.
# - parse_input accepts valid and empty payloads and unknown fields, and raises ValueError
#   with the reason for a corrupt payload or bad UTF-8 in a string field.

from __future__ import annotations

import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, timestamp_pb2

from okra_core.descriptors import (
    load_descriptor_set,
    parse_input,
    service_names,
    service_schema,
)
from okra_core.errors import PackageError
from support import compile_protos


@pytest.fixture(scope="module")
def greeter_set(tmp_path_factory) -> bytes:
    return compile_protos(tmp_path_factory.mktemp("greeter"), ["greeter/v1/greeter.proto"])


@pytest.fixture(scope="module")
def events_set(tmp_path_factory) -> bytes:
    return compile_protos(tmp_path_factory.mktemp("events"), ["events/v1/events.proto"])


def files_of(data: bytes) -> list[descriptor_pb2.FileDescriptorProto]:
    return list(descriptor_pb2.FileDescriptorSet.FromString(data).file)


def set_of(files) -> bytes:
    return descriptor_pb2.FileDescriptorSet(file=files).SerializeToString()


def schema(data: bytes, name: str):
    return service_schema(load_descriptor_set(data), data, name)


# -- schemas ------------------------------------------------------------------------------


def test_greeter_schema_describes_its_method(greeter_set):
    greeter = schema(greeter_set, "greeter.v1.Greeter")
    assert greeter.name == "greeter.v1.Greeter"
    assert greeter.descriptor.full_name == "greeter.v1.Greeter"
    assert greeter.descriptor_set == greeter_set
    assert list(greeter.methods) == ["SayHello"]
    method = greeter.methods["SayHello"]
    assert method.name == "SayHello"
    assert method.full_path == "/greeter.v1.Greeter/SayHello"
    assert method.input.full_name == "greeter.v1.HelloRequest"
    assert method.output.full_name == "greeter.v1.HelloReply"
    assert (method.client_streaming, method.server_streaming) == (False, False)
    request = method.input_class(name="okra")
    assert method.input_class.FromString(request.SerializeToString()).name == "okra"
    assert method.output_class(message="hi").message == "hi"
    assert greeter.pool.FindMessageTypeByName("greeter.v1.HelloRequest") is method.input


def test_streaming_shapes_and_imported_types(events_set):
    events = schema(events_set, "events.v1.Events")
    assert list(events.methods) == ["Publish", "Watch", "Upload", "Sync", "Ping"]
    shapes = {name: (m.client_streaming, m.server_streaming) for name, m in events.methods.items()}
    assert shapes == {
        "Publish": (False, False),
        "Watch": (False, True),
        "Upload": (True, False),
        "Sync": (True, True),
        "Ping": (False, False),
    }
    publish = events.methods["Publish"]
    assert publish.input.file.name == "events/v1/types.proto"
    event = publish.input_class(topic="t", labels={"k": "v"})
    event.at.seconds = 1700000000
    parsed = publish.input_class.FromString(event.SerializeToString())
    assert parsed.at.seconds == 1700000000 and parsed.labels["k"] == "v"
    assert events.methods["Ping"].input.full_name == "google.protobuf.Empty"


def test_second_service_in_a_file_is_found(events_set):
    admin = schema(events_set, "events.v1.Admin")
    assert admin.methods["Purge"].full_path == "/events.v1.Admin/Purge"


def test_service_names_lists_every_service(events_set, greeter_set):
    assert service_names(events_set) == ["events.v1.Events", "events.v1.Admin"]
    assert service_names(greeter_set) == ["greeter.v1.Greeter"]


def test_absent_service_lists_the_services_that_exist(events_set):
    pool = load_descriptor_set(events_set)
    with pytest.raises(PackageError) as info:
        service_schema(pool, events_set, "events.v1.Event")
    assert str(info.value) == (
        "the descriptor set has no service events.v1.Event "
        "(services: events.v1.Events, events.v1.Admin)"
    )


def test_service_without_package_is_found(tmp_path):
    data = compile_protos(tmp_path, {"bare.proto": 'syntax = "proto3"; message M {} service Bare { rpc Do(M) returns (M); }'})
    assert schema(data, "Bare").methods["Do"].full_path == "/Bare/Do"


# -- building the pool --------------------------------------------------------------------


def test_files_are_added_in_dependency_order_whatever_the_set_order(events_set):
    files = files_of(events_set)
    assert [f.name for f in files][-1] == "events/v1/events.proto"
    reversed_set = set_of(reversed(files))
    events = schema(reversed_set, "events.v1.Events")
    assert events.methods["Publish"].input.full_name == "events.v1.Event"


def test_missing_import_says_to_include_imports(events_set):
    files = [f for f in files_of(events_set) if f.name != "google/protobuf/timestamp.proto"]
    with pytest.raises(PackageError) as info:
        load_descriptor_set(set_of(files), source="service.pb.bin")
    message = str(info.value)
    assert message.startswith("service.pb.bin: events/v1/")
    assert "imports google/protobuf/timestamp.proto, which the set does not include" in message
    assert "--include_imports" in message


def test_set_compiled_without_include_imports_is_rejected(tmp_path, events_set):
    # protoc without --include_imports: only the named file.
    only = [f for f in files_of(events_set) if f.name == "events/v1/events.proto"]
    with pytest.raises(PackageError, match="events.proto imports events/v1/types.proto"):
        load_descriptor_set(set_of(only))


@pytest.mark.parametrize("data", [b"\xff\xff\xff", b"\x0a\x05abc"])
def test_bytes_that_are_not_a_descriptor_set_are_rejected(data):
    with pytest.raises(PackageError) as info:
        load_descriptor_set(data, source="service.pb.bin")
    assert str(info.value).startswith("service.pb.bin is not a serialized FileDescriptorSet (")
    assert "--include_imports" in str(info.value)


@pytest.mark.parametrize("data", [b"", b"\x68\x01"])  # nothing at all; an unknown field only
def test_set_without_files_is_rejected(data):
    with pytest.raises(PackageError, match="^descriptor set holds no .proto files"):
        load_descriptor_set(data)


def test_file_listed_twice_is_rejected(greeter_set):
    files = files_of(greeter_set)
    with pytest.raises(PackageError, match="holds greeter/v1/greeter.proto twice"):
        load_descriptor_set(set_of(files + files))


def test_import_cycle_is_named():
    a = descriptor_pb2.FileDescriptorProto(name="a.proto", dependency=["b.proto"])
    b = descriptor_pb2.FileDescriptorProto(name="b.proto", dependency=["c.proto"])
    c = descriptor_pb2.FileDescriptorProto(name="c.proto", dependency=["b.proto"])
    with pytest.raises(PackageError, match=r"import cycle b\.proto -> c\.proto -> b\.proto"):
        load_descriptor_set(set_of([a, b, c]))


def test_file_that_does_not_build_is_named(greeter_set):
    (file,) = files_of(greeter_set)
    file.message_type[0].field[0].type = descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE
    file.message_type[0].field[0].type_name = ".greeter.v1.Missing"
    with pytest.raises(PackageError) as info:
        load_descriptor_set(set_of([file]), source="service.pb.bin")
    message = str(info.value)
    assert message.startswith("service.pb.bin: greeter/v1/greeter.proto does not build: ")
    assert "greeter.v1.Missing" in message
    assert "\n" not in message


def test_deep_import_chain_does_not_hit_the_recursion_limit():
    files = [descriptor_pb2.FileDescriptorProto(name="f0.proto", package="p0")]
    for i in range(1, 3000):
        files.append(descriptor_pb2.FileDescriptorProto(name=f"f{i}.proto", package=f"p{i}", dependency=[f"f{i - 1}.proto"]))
    pool = load_descriptor_set(set_of(reversed(files)))
    assert pool.FindFileByName("f2999.proto").dependencies[0].name == "f2998.proto"


# -- isolation ----------------------------------------------------------------------------


def test_every_load_makes_a_fresh_pool_and_leaves_the_default_pool_alone(greeter_set):
    one = load_descriptor_set(greeter_set)
    two = load_descriptor_set(greeter_set)
    assert one is not two
    assert one is not descriptor_pool.Default()
    with pytest.raises(KeyError):
        descriptor_pool.Default().FindMessageTypeByName("greeter.v1.HelloRequest")
    first = schema(greeter_set, "greeter.v1.Greeter").methods["SayHello"]
    second = schema(greeter_set, "greeter.v1.Greeter").methods["SayHello"]
    assert first.input_class is not second.input_class


def test_same_full_names_in_two_packages_do_not_collide(tmp_path):
    template = """syntax = "proto3";
package greeter.v1;
service Greeter {{ rpc SayHello(HelloRequest) returns (HelloReply); }}
message HelloRequest {{ {field} }}
message HelloReply {{ string message = 1; }}
"""
    old = compile_protos(tmp_path, {"greeter/v1/greeter.proto": template.format(field="string name = 1;")})
    new = compile_protos(tmp_path, {"greeter/v1/greeter.proto": template.format(field="int64 count = 1; string title = 2;")})
    old_class = schema(old, "greeter.v1.Greeter").methods["SayHello"].input_class
    new_class = schema(new, "greeter.v1.Greeter").methods["SayHello"].input_class
    assert old_class is not new_class
    assert old_class(name="x").name == "x"
    assert new_class(count=3, title="t").count == 3
    with pytest.raises(ValueError):
        old_class(count=3)
    with pytest.raises(ValueError):
        new_class(name="x")


def test_own_copy_of_a_well_known_type_does_not_touch_the_default_one(events_set):
    assert timestamp_pb2.Timestamp.DESCRIPTOR.file.pool is descriptor_pool.Default()
    files = files_of(events_set)
    for file in files:
        if file.name == "google/protobuf/timestamp.proto":
            extra = file.message_type[0].field.add()
            extra.CopyFrom(file.message_type[0].field[0])
            extra.name, extra.number, extra.json_name = "zone_offset", 9, "zoneOffset"
    patched = set_of(files)
    publish = schema(patched, "events.v1.Events").methods["Publish"]
    timestamp = publish.input.fields_by_name["at"].message_type
    assert "zone_offset" in timestamp.fields_by_name
    assert "zone_offset" not in timestamp_pb2.Timestamp.DESCRIPTOR.fields_by_name
    # and the unpatched set still builds its own, standard Timestamp.
    plain = schema(events_set, "events.v1.Events").methods["Publish"]
    assert "zone_offset" not in plain.input.fields_by_name["at"].message_type.fields_by_name


# -- parse_input --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def say_hello(greeter_set):
    return schema(greeter_set, "greeter.v1.Greeter").methods["SayHello"]


def test_valid_and_empty_payloads_parse(say_hello):
    assert parse_input(say_hello, say_hello.input_class(name="okra").SerializeToString()) is None
    assert parse_input(say_hello, b"") is None


def test_unknown_fields_are_accepted(say_hello):
    parse_input(say_hello, b"\x0a\x02ok" + b"\x98\x06\x01")  # field 99, varint 1


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"\x0a\x05ab", "the wire format is corrupt"),  # length runs past the end
        (b"\xff", "the wire format is corrupt"),
        (b"\x0a\x02\xff\xfe", "UTF-8"),  # invalid UTF-8 in a proto3 string
    ],
)
def test_corrupt_payload_raises_value_error_with_the_reason(say_hello, payload, reason):
    with pytest.raises(ValueError) as info:
        parse_input(say_hello, payload)
    assert reason in str(info.value)
    assert "\n" not in str(info.value)
