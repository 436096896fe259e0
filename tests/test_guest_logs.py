# Test plan: what guests write to the log, host side (okra_plugins.hostapi_log and the
# runtime's WASI stdout/stderr sink). End to end through real guests: test_runtime.py.
# - a LogRecord decodes into message and typed fields (string, zigzag int, double, bool),
#   and renders as `message key=value` with quoting where needed.
# - a malformed record is a ValueError (the host function answers -INVALID_ARGUMENT).
# - a guest cannot make a record arbitrarily large: message and string fields are cut
#   at MAX_TEXT with a note of how much was cut.
# - okra.log settings: unknown keys and unknown levels are ConfigErrors.
# - stdout/stderr become one record per line, at INFO/WARNING, across chunk boundaries;
#   a line over MAX_STDIO_LINE is cut with a count of the bytes dropped, without keeping
#   them in memory; other descriptors are ignored.
import logging
import struct

import pytest

from okra_core.abi import encode_varint
from okra_core.errors import ConfigError
from okra_core.runtime import MAX_STDIO_LINE, stdio_to_log
from okra_plugins.hostapi_log import MAX_TEXT, LogAPI, decode_record, render


def field(tag: int, payload: bytes) -> bytes:
    return bytes([tag]) + encode_varint(len(payload)) + payload


def record(message: str, *fields: bytes) -> bytes:
    return field(0x0A, message.encode()) + b"".join(field(0x12, f) for f in fields)


def test_record_decodes_typed_fields_and_renders_them():
    data = record(
        "hello",
        field(0x0A, b"name") + field(0x12, b"Ada Lovelace"),
        field(0x0A, b"n") + b"\x18" + encode_varint(5),  # zigzag(-3) = 5
        field(0x0A, b"r") + b"\x21" + struct.pack("<d", 0.25),
        field(0x0A, b"ok") + b"\x28\x00",
    )
    message, fields = decode_record(data)
    assert (message, fields) == ("hello", {"name": "Ada Lovelace", "n": -3, "r": 0.25, "ok": False})
    assert render(message, fields) == 'hello name="Ada Lovelace" n=-3 r=0.25 ok=false'


def test_malformed_record_is_a_value_error():
    with pytest.raises(ValueError):
        decode_record(b"\x0a\x10short")


def test_huge_message_and_fields_are_cut():
    message, fields = decode_record(record("m" * (MAX_TEXT + 100), field(0x0A, b"k") + field(0x12, b"v" * (MAX_TEXT * 3))))
    assert message == "m" * MAX_TEXT + "... [100 more characters]"
    assert fields["k"].endswith(f"... [{MAX_TEXT * 2} more characters]")


@pytest.mark.parametrize("config, complaint", [({"colour": "red"}, "unknown okra.log settings: colour"), ({"level": "loud"}, "okra.log level 'loud'")])
def test_bad_settings_are_config_errors(config, complaint):
    with pytest.raises(ConfigError, match=complaint):
        LogAPI().functions(config)


class Collect(logging.Handler):
    def __init__(self):
        super().__init__()
        self.records = []

    def emit(self, record):
        self.records.append((record.levelno, record.getMessage()))


@pytest.fixture
def collected():
    logger = logging.getLogger("okra.service.test.stdio")
    handler = Collect()
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield logger, handler.records
    logger.removeHandler(handler)


def test_stdio_lines_are_records_across_chunks(collected):
    logger, records = collected
    sink = stdio_to_log(logger)
    sink(1, b"hel")
    sink(1, b"lo\nwor")
    sink(2, b"oops\n")
    sink(1, b"ld\n")
    sink(5, b"ignored\n")
    assert records == [(logging.INFO, "hello"), (logging.WARNING, "oops"), (logging.INFO, "world")]


def test_overlong_stdio_line_is_cut_and_counted(collected):
    logger, records = collected
    sink = stdio_to_log(logger)
    for _ in range(100):  # 1 MB written in pieces, no newline until the end
        sink(1, b"x" * 10_000)
    sink(1, b"\nnext\n")
    (level, line), second = records
    assert line == "x" * MAX_STDIO_LINE + f"... [{1_000_000 - MAX_STDIO_LINE} more bytes]"
    assert second == (logging.INFO, "next")
