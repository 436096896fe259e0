"""How each protobuf scalar type maps to Go and to the wire: the one table the encoder
and decoder emitters share. `{v}` stands for the decoded raw value, `{x}` for the Go
value to encode.

Decoded strings and bytes alias the buffer being decoded (a private copy that the
generated Unmarshal makes of its input), so they cost no allocation each."""

from __future__ import annotations

import dataclasses

from google.protobuf import descriptor_pb2

FD = descriptor_pb2.FieldDescriptorProto

WIRE_VARINT, WIRE_FIXED64, WIRE_BYTES, WIRE_FIXED32 = 0, 1, 2, 5

WIRE_NAMES = {
    WIRE_VARINT: "wireVarint",
    WIRE_FIXED64: "wireFixed64",
    WIRE_BYTES: "wireBytes",
    WIRE_FIXED32: "wireFixed32",
}

CONSUME = {
    WIRE_VARINT: "consumeVarint",
    WIRE_FIXED64: "consumeFixed64",
    WIRE_BYTES: "consumeBytes",
    WIRE_FIXED32: "consumeFixed32",
}


@dataclasses.dataclass(frozen=True)
class Scalar:
    go_type: str
    wire: int
    decode: str  # Go expression of {v}, the raw value consumed
    append: str  # Go expression appending {x} to b
    nonzero: str  # Go condition: {x} differs from the default
    zero: str  # the Go zero value

    @property
    def fixed_size(self) -> int | None:
        return {WIRE_FIXED32: 4, WIRE_FIXED64: 8}.get(self.wire)


def _num(go_type, wire, decode, append):
    return Scalar(go_type, wire, decode, append, "{x} != 0", "0")


SCALARS: dict[int, Scalar] = {
    FD.TYPE_DOUBLE: Scalar(
        "float64", WIRE_FIXED64, "float64FromBits({v})", "appendFixed64(b, float64Bits({x}))",
        # -0.0 differs from the default too: compare bits, as protobuf does.
        "float64Bits({x}) != 0", "0",
    ),
    FD.TYPE_FLOAT: Scalar(
        "float32", WIRE_FIXED32, "float32FromBits({v})", "appendFixed32(b, float32Bits({x}))",
        "float32Bits({x}) != 0", "0",
    ),
    FD.TYPE_INT64: _num("int64", WIRE_VARINT, "int64({v})", "appendVarint(b, uint64({x}))"),
    FD.TYPE_UINT64: _num("uint64", WIRE_VARINT, "{v}", "appendVarint(b, {x})"),
    # A negative int32 is sign-extended to 64 bits: a 10-byte varint, as protobuf requires.
    FD.TYPE_INT32: _num("int32", WIRE_VARINT, "int32({v})", "appendVarint(b, uint64({x}))"),
    FD.TYPE_FIXED64: _num("uint64", WIRE_FIXED64, "{v}", "appendFixed64(b, {x})"),
    FD.TYPE_FIXED32: _num("uint32", WIRE_FIXED32, "{v}", "appendFixed32(b, {x})"),
    FD.TYPE_BOOL: Scalar(
        "bool", WIRE_VARINT, "{v} != 0", "appendVarint(b, boolToVarint({x}))", "{x}", "false"
    ),
    FD.TYPE_STRING: Scalar(
        "string", WIRE_BYTES, "aliasString({v})", "appendString(b, {x})", '{x} != ""', '""'
    ),
    FD.TYPE_BYTES: Scalar(
        "[]byte", WIRE_BYTES, "{v}", "appendBytes(b, {x})", "len({x}) != 0", "nil"
    ),
    FD.TYPE_UINT32: _num("uint32", WIRE_VARINT, "uint32({v})", "appendVarint(b, uint64({x}))"),
    FD.TYPE_SFIXED32: _num("int32", WIRE_FIXED32, "int32({v})", "appendFixed32(b, uint32({x}))"),
    FD.TYPE_SFIXED64: _num("int64", WIRE_FIXED64, "int64({v})", "appendFixed64(b, uint64({x}))"),
    FD.TYPE_SINT32: _num(
        "int32", WIRE_VARINT, "decodeZigZag32({v})", "appendVarint(b, encodeZigZag32({x}))"
    ),
    FD.TYPE_SINT64: _num(
        "int64", WIRE_VARINT, "decodeZigZag64({v})", "appendVarint(b, encodeZigZag64({x}))"
    ),
}


def enum_scalar(go_type: str) -> Scalar:
    """Enums are open: any int32 is kept, named or not."""
    return _num(go_type, WIRE_VARINT, f"{go_type}(int32({{v}}))", "appendVarint(b, uint64({x}))")


def tag_bytes(number: int, wire: int) -> str:
    """A field key as Go byte literals, e.g. `0x0a` or `0x82, 0x01`."""
    value = (number << 3) | wire
    out = []
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return ", ".join(f"0x{b:02x}" for b in out)
