# Test plan: the Go guest's generated wire code and SDK, against the Python protobuf
# library as the reference, on a real Go guest (tests/fixtures/go/wire, built once) run
# by the wasmtime engine.
# - property: any Everything message (every scalar kind, enums incl. unknown and negative
#   values, nested/repeated/packed/unpacked fields, maps of all key kinds incl. message
#   values, oneofs, proto3 optional, imported well-known types, recursion) encoded by
#   Python, decoded and re-encoded by Go, decodes in Python to the same message, field by
#   field; and where map order cannot differ, Go's bytes equal Python's deterministic ones.
# - property (differential fuzzing): for mutated encodings and random bytes, Go accepts
#   exactly what Python accepts, and what it accepts it re-encodes to the same message
#   (unknown fields dropped).
# - each kind of malformed input (truncation, bad lengths, invalid wire types, bad groups,
#   invalid UTF-8, bad packed data, excessive nesting) is rejected by Python and answered
#   INVALID_ARGUMENT by Go, without a trap: the instance keeps serving.
# - a known field sent with the wrong wire type is skipped, as Python does; so is a map
#   entry holding unknown fields (upb keeps it as an unknown field of the message).
# - tricky names (tricky.v1) round-trip through their generated Go types.
# - errors: every status code and its message reach the caller; a panic becomes INTERNAL
#   and the instance survives; invalid UTF-8 in a response string field is INTERNAL;
#   unknown service or method is UNIMPLEMENTED.
# - context: service, method, metadata in order, case-insensitive lookup.
# - host calls: okra.CallHost gets results that fit, results that do not (pending + take)
#   and host errors with their message.
# - a request larger than the initial 64 KiB buffer works.
from __future__ import annotations

import math

import pytest
from google.protobuf import text_format
from google.protobuf.descriptor import FieldDescriptor as FD
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lang_go_support import FunctionsAPI, Guest, build_guest, message_classes
from okra_core.abi import encode_varint
from okra_core.hostapi import HostError, HostFunction
from okra_core.status import StatusCode

pytestmark = pytest.mark.slow

SERVICE = "wire.v1.Wire"
MAX_DEPTH = 2
FUZZ = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)


def host_data(ctx, size, fail_code, ptr, cap):
    """okra.test.data: `size` bytes of a known pattern, or a failure on request."""
    if fail_code:
        raise HostError(StatusCode(fail_code), f"asked to fail with {fail_code}")
    return ctx.return_data(pattern(size), ptr, cap)


def pattern(size: int) -> bytes:
    return bytes(i % 251 for i in range(size))


HOST_DATA = HostFunction("okra.test", "data", ("i32",) * 4, host_data)


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    return build_guest(
        "wire", tmp_path_factory.mktemp("go"), protos=("wire", "tricky"),
        host_apis=[FunctionsAPI("okra.test", [HOST_DATA])],
    )


@pytest.fixture(scope="module")
def types(package):
    return message_classes(package.descriptor_set)


@pytest.fixture(scope="module")
def guest(package):
    guest = Guest(package, SERVICE, extra=[HOST_DATA])
    yield guest
    guest.close()


# -- strategies from descriptors ---------------------------------------------------------

_INT_RANGES = {
    FD.TYPE_INT32: (-(2**31), 2**31 - 1),
    FD.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FD.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    FD.TYPE_INT64: (-(2**63), 2**63 - 1),
    FD.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FD.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FD.TYPE_UINT32: (0, 2**32 - 1),
    FD.TYPE_FIXED32: (0, 2**32 - 1),
    FD.TYPE_UINT64: (0, 2**64 - 1),
    FD.TYPE_FIXED64: (0, 2**64 - 1),
}


def scalar_values(field):
    if field.type in _INT_RANGES:
        low, high = _INT_RANGES[field.type]
        return st.one_of(st.sampled_from([0, 1, -1 if low else 2, low, high]), st.integers(low, high))
    if field.type == FD.TYPE_DOUBLE:
        return st.floats()
    if field.type == FD.TYPE_FLOAT:
        return st.floats(width=32)
    if field.type == FD.TYPE_BOOL:
        return st.booleans()
    if field.type == FD.TYPE_STRING:
        return st.text(max_size=12)
    if field.type == FD.TYPE_BYTES:
        return st.binary(max_size=12)
    if field.type == FD.TYPE_ENUM:
        named = [v.number for v in field.enum_type.values]
        return st.one_of(st.sampled_from(named), st.integers(-(2**31), 2**31 - 1))
    raise AssertionError(f"no strategy for {field.full_name}")


def is_map(field) -> bool:
    return field.type == FD.TYPE_MESSAGE and field.message_type.GetOptions().map_entry


def real_oneofs(descriptor):
    return [o for o in descriptor.oneofs if not (len(o.fields) == 1 and o.fields[0].has_presence
                                                  and o.name.startswith("_"))]


@st.composite
def messages(draw, descriptor, classes, depth=0):
    """A message of `descriptor` with a random subset of its fields set."""
    message = classes(descriptor.full_name)()
    oneofs = real_oneofs(descriptor)
    for field in descriptor.fields:
        if field.containing_oneof in oneofs:
            continue
        if draw(st.booleans()):
            set_field(draw, message, field, classes, depth)
    for oneof in oneofs:
        choice = draw(st.sampled_from([None, *oneof.fields]))
        if choice is not None:
            set_field(draw, message, choice, classes, depth)
    return message


def set_field(draw, message, field, classes, depth):
    deeper = depth < MAX_DEPTH
    if is_map(field):
        key_field = field.message_type.fields_by_name["key"]
        value_field = field.message_type.fields_by_name["value"]
        target = getattr(message, field.name)
        for key in draw(st.lists(scalar_values(key_field), max_size=3, unique=True)):
            if value_field.type == FD.TYPE_MESSAGE:
                target[key].SetInParent()
                if deeper:
                    target[key].MergeFrom(draw(messages(value_field.message_type, classes, depth + 1)))
            else:
                target[key] = draw(scalar_values(value_field))
    elif field.is_repeated:
        target = getattr(message, field.name)
        if field.type == FD.TYPE_MESSAGE:
            for _ in range(draw(st.integers(0, 2 if deeper else 0))):
                target.add().MergeFrom(draw(messages(field.message_type, classes, depth + 1)))
        else:
            target.extend(draw(st.lists(scalar_values(field), max_size=5)))
    elif field.type == FD.TYPE_MESSAGE:
        target = getattr(message, field.name)
        target.SetInParent()
        if deeper:
            target.MergeFrom(draw(messages(field.message_type, classes, depth + 1)))
    else:
        setattr(message, field.name, draw(scalar_values(field)))


def everything(types):
    cls = types("wire.v1.Everything")
    return messages(cls.DESCRIPTOR, types)


def has_reorderable_map(message) -> bool:
    """Whether Go may order map entries differently from Python's sorted order."""
    for field, value in message.ListFields():
        if is_map(field):
            if len(value) > 1:
                return True
            values = value.values() if field.message_type.fields_by_name["value"].type == FD.TYPE_MESSAGE else ()
            if any(has_reorderable_map(v) for v in values):
                return True
        elif field.type == FD.TYPE_MESSAGE:
            items = value if field.is_repeated else [value]
            if any(has_reorderable_map(v) for v in items):
                return True
    return False


def assert_same(actual, expected):
    """Field by field (readable on failure), then bit for bit (NaN payloads, -0.0)."""
    assert text_format.MessageToString(actual) == text_format.MessageToString(expected)
    assert actual.SerializeToString(deterministic=True) == expected.SerializeToString(deterministic=True)


# -- round trips -------------------------------------------------------------------------


def test_every_feature_round_trips_through_go(guest, types):
    @FUZZ
    @given(st.data())
    def check(data):
        original = data.draw(everything(types))
        encoded = original.SerializeToString()
        reply = guest.call("Echo", encoded)
        assert (reply.code, reply.message) == (0, "")
        decoded = types("wire.v1.Everything").FromString(reply.output)
        assert_same(decoded, original)
        if not has_reorderable_map(original):
            # Go's encoder writes the canonical encoding, byte for byte.
            assert reply.output == original.SerializeToString(deterministic=True)

    check()


def test_edge_values_round_trip_exactly(guest, types):
    Everything = types("wire.v1.Everything")
    original = Everything(
        f_double=-0.0, f_float=float("nan"), f_int32=-1, f_int64=-(2**63), f_uint64=2**64 - 1,
        f_sint32=-(2**31), f_sint64=2**63 - 1, f_sfixed32=-1, f_color=-1, f_max_number=-7,
        r_double=[math.inf, -math.inf, -0.0], r_color=[-1, 99, 0], r_unpacked_int32=[-1, 0, 1],
        o_int32=0, o_string="", o_bytes=b"", o_bool=False, o_double=-0.0, c_bytes=b"",
        f_string="ünïcödé \U0001f600",
    )
    original.o_nested.SetInParent()
    original.m_bool_color[False] = 0
    original.m_int32_nested[-5].SetInParent()
    original.child.child.child.f_bool = True
    original.at.seconds = -62135596800
    original.took.nanos = -1
    reply = guest.call("Echo", original.SerializeToString())
    assert reply.code == 0, reply.message
    decoded = Everything.FromString(reply.output)
    assert_same(decoded, original)
    assert decoded.HasField("o_int32") and decoded.HasField("o_nested") and decoded.HasField("c_bytes")
    # A negative int32 is a 10-byte varint on the wire, as protobuf specifies.
    assert b"\x18" + b"\xff" * 9 + b"\x01" in reply.output


def test_empty_message_encodes_to_nothing(guest):
    assert guest.call("Echo", b"").output == b""


def test_tricky_names_round_trip(guest, types):
    Outer = types("tricky.v1.Outer")
    original = Outer(reset="r", get_name="g", name="n", _under=-3, field2name=2, marshal="m",
                     type="t", outer_kind=2, text="hello", status=1)
    original.primary.kind = 1
    original.inner_by_name["a"].kind = 1
    original.lower.x_y_z = "xyz"
    original.lower.a1b = 7
    reply = guest.call("Tricky", original.SerializeToString())
    assert reply.code == 0, reply.message
    assert_same(Outer.FromString(reply.output), original)
    original.inner.kind = 1  # the other member of the oneof
    reply = guest.call("Tricky", original.SerializeToString())
    assert_same(Outer.FromString(reply.output), original)

    inner = types("tricky.v1.Outer.Inner")(kind=1)
    reply = guest.call("say_hello", inner.SerializeToString(), service="tricky.v1.Outer_Inner")
    assert (reply.code, reply.output) == (0, inner.SerializeToString())


# -- malformed input ---------------------------------------------------------------------

def _nested(depth: int) -> bytes:
    data = b""
    for _ in range(depth):
        data = b"\xc2\x04" + encode_varint(len(data)) + data  # Everything.child = 72
    return data


MALFORMED = {
    "truncated varint": b"\x18\x80",
    "truncated key": b"\x80",
    "varint longer than 10 bytes": b"\x18" + b"\xff" * 10 + b"\x01",
    "length beyond the end": b"\x72\x05ab",
    "huge length": b"\x72" + encode_varint(2**40) + b"ab",
    "truncated fixed64": b"\x09\x00\x00",
    "truncated fixed32": b"\x15\x00",
    "wire type 6": b"\x1e\x00",
    "wire type 7": b"\x1f\x00",
    "field number 0": b"\x00\x00",
    "end group without a start": b"\x1c",
    "unterminated group": b"\x1b\x08\x01",
    "mismatched end group": b"\x1b\x24",
    "invalid UTF-8 in a string": b"\x72\x02\xc3\x28",
    "invalid UTF-8 in a nested string": b"\x8a\x01\x04\x0a\x02\xc3\x28",
    "invalid UTF-8 in a map key": b"\xc2\x02\x06\x0a\x01\xff\x12\x01a",
    "invalid UTF-8 in a repeated string": b"\x92\x02\x01\xff",
    "packed fixed32 with a partial element": b"\xea\x01\x03\x00\x00\x00",
    "packed varint cut short": b"\xba\x01\x01\x80",
    "nested message cut short inside": b"\x8a\x01\x02\x10\x80",
    "nesting deeper than the limit": _nested(120),
}


@pytest.mark.parametrize("payload", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_input_is_invalid_argument_not_a_trap(guest, types, payload):
    with pytest.raises(DecodeError):
        types("wire.v1.Everything").FromString(payload)  # the reference agrees it is bad
    reply = guest.call("Echo", payload)
    assert reply.code == StatusCode.INVALID_ARGUMENT
    assert reply.message  # says what is wrong
    assert guest.call("Echo", b"\x18\x05").output == b"\x18\x05"  # and the instance still serves


def test_known_field_with_the_wrong_wire_type_is_skipped_like_python(guest, types):
    payload = b"\x1d\x01\x00\x00\x00" + b"\x20\x07"  # f_int32 as fixed32 (skipped), f_int64 = 7
    expected = types("wire.v1.Everything").FromString(payload)
    expected.DiscardUnknownFields()
    reply = guest.call("Echo", payload)
    assert reply.code == 0
    assert_same(types("wire.v1.Everything").FromString(reply.output), expected)


def test_map_entry_with_unknown_fields_is_dropped_like_python(guest, types):
    # m_string_string (40) entries: {"k": "v"} plus an unknown field 3, then {"x": "y"}
    payload = b"\xc2\x02\x08\x0a\x01k\x12\x01v\x18\x01" + b"\xc2\x02\x06\x0a\x01x\x12\x01y"
    expected = types("wire.v1.Everything").FromString(payload)
    expected.DiscardUnknownFields()
    assert dict(expected.m_string_string) == {"x": "y"}  # upb keeps the odd entry as unknown
    reply = guest.call("Echo", payload)
    assert_same(types("wire.v1.Everything").FromString(reply.output), expected)


def test_nesting_within_the_limit_is_accepted(guest, types):
    payload = _nested(50)
    types("wire.v1.Everything").FromString(payload)
    assert guest.call("Echo", payload).output == payload


@st.composite
def mutations(draw, data: bytes):
    data = bytearray(data)
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["truncate", "flip", "insert", "delete"]))
        at = draw(st.integers(0, len(data)))
        if kind == "truncate":
            del data[at:]
        elif kind == "flip" and at < len(data):
            data[at] = draw(st.integers(0, 255))
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=4))
        elif kind == "delete":
            del data[at : at + draw(st.integers(1, 4))]
    return bytes(data)


def test_go_accepts_exactly_what_python_accepts(guest, types):
    Everything = types("wire.v1.Everything")

    @FUZZ
    @given(st.data())
    def check(data):
        if data.draw(st.booleans()):
            payload = data.draw(mutations(data.draw(everything(types)).SerializeToString()))
        else:
            payload = data.draw(st.binary(max_size=40))
        try:
            expected = Everything.FromString(payload)
        except DecodeError:
            expected = None
        reply = guest.call("Echo", payload)
        if expected is None:
            assert reply.code == StatusCode.INVALID_ARGUMENT, f"Go accepted what Python rejects: {payload!r}"
        else:
            assert reply.code == 0, f"Go rejected what Python accepts ({reply.message}): {payload!r}"
            expected.DiscardUnknownFields()  # Go keeps no unknown fields
            assert_same(Everything.FromString(reply.output), expected)

    check()


# -- errors, context, host calls ---------------------------------------------------------


@pytest.mark.parametrize("code", [c for c in StatusCode if c != StatusCode.OK])
def test_status_codes_and_messages_reach_the_caller(guest, types, code):
    request = types("wire.v1.FailRequest")(code=code, message=f"failed with {code.name} ✓")
    reply = guest.call("Fail", request.SerializeToString())
    assert (reply.code, reply.message) == (code, f"failed with {code.name} ✓")


def test_error_with_code_ok_is_reported_as_unknown(guest, types):
    reply = guest.call("Fail", types("wire.v1.FailRequest")(code=0, message="oops").SerializeToString())
    assert (reply.code, reply.message) == (StatusCode.UNKNOWN, "oops")


def test_failing_method_logs_structured_fields(guest, types):
    guest.logs.records.clear()
    guest.call("Fail", types("wire.v1.FailRequest")(code=5, message="gone").SerializeToString())
    (record,) = guest.logs.records
    assert record.levelname == "WARNING"
    assert record.okra_fields == {"code": 5, "message": "gone"}


def test_panic_is_internal_and_the_instance_survives(guest, types):
    guest.stdio.clear()
    reply = guest.call("Fail", types("wire.v1.FailRequest")(panic=True, message="boom").SerializeToString())
    assert reply.code == StatusCode.INTERNAL
    assert "boom" in reply.message
    assert b"panic in wire.v1.Wire/Fail" in b"".join(data for fd, data in guest.stdio if fd == 2)
    assert guest.call("Echo", b"\x18\x05").output == b"\x18\x05"


def test_invalid_utf8_in_a_response_string_is_internal(guest, types):
    request = types("wire.v1.FailRequest")(bad_string=b"\xff\xfe")
    reply = guest.call("Fail", request.SerializeToString())
    assert reply.code == StatusCode.INTERNAL
    assert "wire.v1.Inspection.service" in reply.message and "UTF-8" in reply.message


@pytest.mark.parametrize(
    ("service", "method", "named"),
    [(SERVICE, "Nope", "method Nope"), ("wire.v1.Other", "Echo", "service wire.v1.Other")],
)
def test_unknown_method_or_service_is_unimplemented(guest, service, method, named):
    reply = guest.call(method, b"", service=service)
    assert reply.code == StatusCode.UNIMPLEMENTED
    assert named in reply.message


def test_context_exposes_service_method_and_metadata(guest, types):
    metadata = [("x-trace", "t1"), ("user", "ann"), ("x-trace", "t2")]
    reply = guest.call("Inspect", b"", metadata=metadata)
    inspection = types("wire.v1.Inspection").FromString(reply.output)
    assert (inspection.service, inspection.method) == (SERVICE, "Inspect")
    assert list(inspection.metadata) == ["x-trace=t1", "user=ann", "x-trace=t2"]
    assert inspection.first_trace == "t1"
    # metadata does not leak into the next call
    assert types("wire.v1.Inspection").FromString(guest.call("Inspect", b"").output).metadata == []


@pytest.mark.parametrize("size", [0, 10, 64, 65, 100_000])
def test_call_host_fetches_results_that_fit_and_that_do_not(guest, types, size):
    reply = guest.call("HostData", types("wire.v1.HostDataRequest")(size=size).SerializeToString())
    assert reply.code == 0, reply.message
    assert types("wire.v1.HostDataReply").FromString(reply.output).data == pattern(size)


def test_call_host_turns_a_host_error_into_its_code_and_message(guest, types):
    request = types("wire.v1.HostDataRequest")(size=1, fail_code=StatusCode.PERMISSION_DENIED)
    reply = guest.call("HostData", request.SerializeToString())
    assert (reply.code, reply.message) == (StatusCode.PERMISSION_DENIED, "asked to fail with 7")


def test_request_larger_than_the_initial_buffer(guest, types):
    Everything = types("wire.v1.Everything")
    original = Everything(f_bytes=bytes(range(256)) * 1024, r_string=["x" * 1000] * 100)
    reply = guest.call("Echo", original.SerializeToString())
    assert reply.code == 0
    assert_same(Everything.FromString(reply.output), original)
    assert guest.call("Echo", b"\x18\x05").output == b"\x18\x05"
