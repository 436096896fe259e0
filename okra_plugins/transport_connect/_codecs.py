"""Codecs that keep the guest's bytes as they are.

connectrpc decodes each request with a codec and encodes each response with one. Here
the binary codec passes protobuf bytes through untouched (the runtime checks that they
parse before the guest sees them), and the JSON codec transcodes between the proto3 JSON
mapping and binary protobuf with the method's own message classes, built from the
package's descriptors, so the guest always receives binary protobuf whatever the client
sent.
"""

from __future__ import annotations

from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message

from connectrpc.code import Code
from connectrpc.errors import ConnectError


class Reply:
    """A response as the guest produced it, with the class that parses it (which the
    JSON codec needs: a codec's `encode` is given the message only)."""

    __slots__ = ("payload", "message_class")

    def __init__(self, payload: bytes, message_class: type[Message]):
        self.payload = payload
        self.message_class = message_class


class BinaryCodec:
    """application/proto: bytes in, bytes out."""

    def name(self) -> str:
        return "proto"

    def encode(self, reply: Reply) -> bytes:
        return reply.payload

    def decode(self, data: bytes | bytearray, message_class: type[Message]) -> bytes:
        return data if type(data) is bytes else bytes(data)


class JsonCodec:
    """application/json: the proto3 JSON mapping, transcoded with the package's types.

    Unknown JSON fields are ignored by default, as connect-go and connect-es do, so a
    newer client can talk to an older service; `discard_unknown=False` rejects them.
    Responses use JSON (lowerCamelCase) names and omit fields at their default value.
    """

    def __init__(self, *, discard_unknown: bool = True):
        self.discard_unknown = discard_unknown

    def name(self) -> str:
        return "json"

    def decode(self, data: bytes | bytearray, message_class: type[Message]) -> bytes:
        message = message_class()
        try:
            text = bytes(data).decode("utf-8")
            if not text.lstrip().startswith("{") and not _takes_bare_json(message):
                raise ConnectError(
                    Code.INVALID_ARGUMENT,
                    f"request JSON does not fit {message.DESCRIPTOR.full_name}: "
                    "expected a JSON object ({...})",
                )
            json_format.Parse(
                text,
                message,
                ignore_unknown_fields=self.discard_unknown,
                descriptor_pool=message.DESCRIPTOR.file.pool,
            )
        except (json_format.ParseError, UnicodeDecodeError) as exc:
            raise ConnectError(
                Code.INVALID_ARGUMENT,
                f"request JSON does not fit {message.DESCRIPTOR.full_name}: {_first_line(exc)}",
            ) from None
        return message.SerializeToString()

    def encode(self, reply: Reply) -> bytes:
        message_class = reply.message_class
        try:
            message = message_class.FromString(reply.payload)
        except DecodeError:
            raise ConnectError(
                Code.INTERNAL,
                f"the service's response does not parse as {message_class.DESCRIPTOR.full_name}",
            ) from None
        text = json_format.MessageToJson(
            message, indent=None, descriptor_pool=message.DESCRIPTOR.file.pool, ensure_ascii=False
        )
        return text.encode("utf-8")


def _takes_bare_json(message: Message) -> bool:
    """Well-known types (Value, ListValue, wrappers, Timestamp, Duration, FieldMask, ...)
    map to JSON that is not an object; every other message is an object."""
    return message.DESCRIPTOR.full_name.startswith("google.protobuf.")


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
