# Test plan: host API okra.state (okra_plugins.hostapi_state), called through
# call_host_function (the path every engine takes) on a bounds-checked bytearray guest
# memory (hostapi_basic_support.ByteMemory), with a real HostEnvironment: a memory
# state store on a FakeClock, Metrics and Audit.
# - registered by its plugin under "okra.state"; the six functions have the spec's
#   wasm types and are blocking; building them does not open the store.
# - get: the 8-byte LE version then the value; a result over out_cap kept pending (its
#   length returned); a missing key is -5 NOT_FOUND with a message pending.
# - set: 0, the new version to version_out (exactly 8 bytes, nothing around), nothing
#   written when version_out is 0; versions grow; ttl_ms expires the value on the
#   runtime's clock, 0 never; negative or absurd ttl_ms -3.
# - delete: 1 if the key existed, else 0.
# - compare_and_set: only over the expected version (0: only if absent); a mismatch is
#   -10 ABORTED naming the current version; a negative expected version -3.
# - increment: the new value to value_out; a value that is not a decimal integer -9
#   FAILED_PRECONDITION; leaving the 64-bit range -11 OUT_OF_RANGE, value unchanged.
# - list: ListRequest -> ListResult (prefix, cursor, limit; limit 0 -> 100, over 1000
#   -> 1000); pages walk every key once; a page of large values is cut at 4 MiB and its
#   next_cursor goes on; malformed requests (truncated, a varint where bytes belong,
#   bytes where the limit belongs, oversized) -3 without allocating what they claim;
#   unknown fields ignored.
# - hostile pointers and lengths (negative, past the end, straddling the end) on every
#   argument: -3 INVALID_ARGUMENT and the store untouched; a bad out slot is found
#   before anything is written.
# - sizes: an empty key or one over max_key_bytes -3 (memory never read); a value over
#   max_value_bytes -8 RESOURCE_EXHAUSTED naming the setting; both settings honoured.
#   A length of -1 as the built-in engines deliver it (unsigned, 0xFFFFFFFF): a key -3,
#   a value -8 (over max_value_bytes), nothing stored.
# - read_only: every write -7 PERMISSION_DENIED naming the setting (or the policy rule),
#   audited (okra.audit record, per-service count, okra_denials_total) and the store
#   untouched; reads still work.
# - isolation: two services; two keys of a keyed service (and its singleton/regular
#   namespace); a key holding '#'; listing sees only the caller's namespace.
# - a store that fails (or cannot be opened): -14 UNAVAILABLE, the cause in the host log
#   and not in the guest's message.
# - settings: defaults, unknown keys listed, bad types; policy narrowing: read_only,
#   lowered limits (never raised), unknown policy keys, several rules.
# - a manifest setting policy_rules (the key narrow writes to name the rule) is refused
#   at grant time: a package cannot make its own settings look like a policy rule's.
# - threads: many guests of one keyed actor incrementing one counter lose no update.
import logging
import struct

import pytest

from hostapi_basic_support import Guest, Result, registry, run_threads
from okra_core.abi import encode_varint, iter_fields
from okra_core.audit import Audit
from okra_core.clock import FakeClock
from okra_core.config import RuntimeConfig
from okra_core.errors import ConfigError, DeployError
from okra_core.grants import grant
from okra_core.hostapi import HostEnvironment
from okra_core.metrics import Metrics
from okra_core.status import StatusCode
from okra_plugins.hostapi_state import (
    MAX_LIST_RESULT_BYTES,
    StateAPI,
    encode_list_result,
    namespace_of,
)
from okra_plugins.store_memory import MemoryStore
from support import make_manifest

SERVICE = "shop.v1.Cart"
MEMORY = 4 * 1024 * 1024
END = MEMORY  # the first address past the guest's memory


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def store(clock):
    return MemoryStore(clock=clock)


def make_env(store, clock=None) -> HostEnvironment:
    metrics = Metrics()

    def unused(*_, **__):
        raise AssertionError("okra.state must not use this")

    return HostEnvironment(
        clock=clock or FakeClock(), metrics=metrics, audit=Audit(metrics),
        state=lambda: store, secrets=unused, invoke=unused,
    )


@pytest.fixture
def env(store, clock):
    return make_env(store, clock)


class StateGuest(Guest):
    """A guest calling okra.state as the Go SDK does."""

    def __init__(self, config, env, service=SERVICE, key=None):
        super().__init__(StateAPI(), config, env, service=service, memory_size=MEMORY)
        self.ctx.key = key

    def get(self, key: bytes, cap: int = 256) -> Result:
        return self.fetch("get", key, cap)

    def set(self, key: bytes, value: bytes, ttl_ms: int = 0) -> Result:
        key_ptr, key_len = self.memory.put(key)
        val_ptr, val_len = self.memory.put(value)
        out = self.memory.alloc(8)
        return self._int_result(self.call("set", key_ptr, key_len, val_ptr, val_len, ttl_ms, out), out)

    def delete(self, key: bytes) -> Result:
        ptr, length = self.memory.put(key)
        code = self.call("delete", ptr, length)
        return self.error(code) if code < 0 else Result(code)

    def cas(self, key: bytes, expected: int, value: bytes, ttl_ms: int = 0) -> Result:
        key_ptr, key_len = self.memory.put(key)
        val_ptr, val_len = self.memory.put(value)
        out = self.memory.alloc(8)
        code = self.call("compare_and_set", key_ptr, key_len, expected, val_ptr, val_len, ttl_ms, out)
        return self._int_result(code, out)

    def increment(self, key: bytes, delta: int, ttl_ms: int = 0) -> Result:
        ptr, length = self.memory.put(key)
        out = self.memory.alloc(8)
        return self._int_result(self.call("increment", ptr, length, delta, ttl_ms, out), out)

    def list(self, prefix: bytes = b"", cursor: bytes = b"", limit: int = 0, cap: int = 1 << 16) -> Result:
        return self.fetch("list", list_request(prefix, cursor, limit), cap)

    def _int_result(self, code: int, out: int) -> Result:
        """A (0, i64 written to out) result as Result(0, the i64's 8 bytes)."""
        if code < 0:
            return self.error(code)
        assert code == 0
        return Result(0, self.memory.read(out, 8))

    def fresh(self) -> None:
        self.memory.reset()


def i64(result: Result) -> int:
    assert result.ok, result
    return struct.unpack("<q", result.data)[0]


def value_of(result: Result) -> tuple[int, bytes]:
    """A get result: (version, value)."""
    assert result.ok, result
    return struct.unpack("<q", result.data[:8])[0], result.data[8:]


def list_request(prefix: bytes = b"", cursor: bytes = b"", limit: int = 0) -> bytes:
    out = b""
    if prefix:
        out += b"\x0a" + encode_varint(len(prefix)) + prefix
    if cursor:
        out += b"\x12" + encode_varint(len(cursor)) + cursor
    if limit:
        out += b"\x18" + encode_varint(limit)
    return out


def decode_list(result: Result) -> tuple[list[tuple[bytes, bytes, int]], bytes]:
    assert result.ok, result
    entries, cursor = [], b""
    for number, value in iter_fields(result.data):
        if number == 1:
            fields = dict(iter_fields(bytes(value)))
            entries.append((bytes(fields.get(1, b"")), bytes(fields.get(2, b"")), fields[3]))
        elif number == 2:
            cursor = bytes(value)
    return entries, cursor


@pytest.fixture
def guest(env):
    return StateGuest({}, env)


# -- registration ----------------------------------------------------------------------


def test_registered_by_its_plugin_with_the_specs_functions(env):
    api = registry().host_api("okra.state")
    assert isinstance(api, StateAPI)
    functions = api.functions({}, env)
    assert [f.name for f in functions] == list(api.function_names()) == [
        "get", "set", "delete", "compare_and_set", "increment", "list",
    ]
    types = {f.name: f.params for f in functions}
    assert types == {
        "get": ("i32", "i32", "i32", "i32"),
        "set": ("i32", "i32", "i32", "i32", "i64", "i32"),
        "delete": ("i32", "i32"),
        "compare_and_set": ("i32", "i32", "i64", "i32", "i32", "i64", "i32"),
        "increment": ("i32", "i32", "i64", "i64", "i32"),
        "list": ("i32", "i32", "i32", "i32"),
    }
    for function in functions:
        assert function.namespace == "okra.state" and function.results == ("i32",)
        assert function.blocking is True


def test_building_the_functions_does_not_open_the_store():
    opened = []
    env = HostEnvironment(
        clock=FakeClock(), metrics=Metrics(), audit=Audit(),
        state=lambda: opened.append(1) or MemoryStore(), secrets=None, invoke=None,
    )
    guest = StateGuest({}, env)
    assert opened == []
    assert guest.get(b"k").code == -StatusCode.NOT_FOUND
    assert opened == [1]


# -- get / set / delete ------------------------------------------------------------------


def test_set_then_get_returns_version_and_value(guest):
    version = i64(guest.set(b"k", b"value"))
    assert version > 0
    assert value_of(guest.get(b"k")) == (version, b"value")


def test_get_of_a_missing_key_is_not_found_with_a_message(guest):
    result = guest.get(b"missing")
    assert result.code == -StatusCode.NOT_FOUND and "no value" in result.message


def test_binary_keys_and_values_and_growing_versions(guest):
    key, value = b"bin\x00\xffkey", bytes(range(256))
    first = i64(guest.set(key, value))
    second = i64(guest.set(key, b""))
    assert second > first
    assert value_of(guest.get(key)) == (second, b"")


def test_a_value_bigger_than_out_cap_is_pending(guest):
    version = i64(guest.set(b"big", b"x" * 1000))
    ptr, length = guest.memory.put(b"big")
    out = guest.memory.alloc(16)
    assert guest.call("get", ptr, length, out, 16) == 1008
    assert guest.memory.read(out, 16) == bytes(16)
    assert guest.ctx.pending == struct.pack("<q", version) + b"x" * 1000


def test_a_value_exactly_out_cap_is_written(guest):
    version = i64(guest.set(b"k", b"12345678"))
    ptr, length = guest.memory.put(b"k")
    out = guest.memory.alloc(16)
    assert guest.call("get", ptr, length, out, 16) == 16
    assert guest.memory.read(out, 16) == struct.pack("<q", version) + b"12345678"
    assert guest.ctx.pending is None


def test_set_writes_exactly_eight_bytes_to_version_out_and_none_for_zero(guest, store):
    key_ptr, key_len = guest.memory.put(b"k")
    val_ptr, val_len = guest.memory.put(b"v")
    out = guest.memory.alloc(24)
    guest.memory.write(out, b"\xaa" * 24)
    assert guest.call("set", key_ptr, key_len, val_ptr, val_len, 0, out + 8) == 0
    version = store.get(SERVICE, b"k").version
    assert guest.memory.read(out, 24) == b"\xaa" * 8 + struct.pack("<q", version) + b"\xaa" * 8
    snapshot = bytes(guest.memory.data)
    assert guest.call("set", key_ptr, key_len, val_ptr, val_len, 0, 0) == 0
    assert bytes(guest.memory.data) == snapshot
    assert store.get(SERVICE, b"k").version > version


def test_delete_says_whether_the_key_existed(guest):
    assert guest.delete(b"k").code == 0
    guest.set(b"k", b"v")
    assert guest.delete(b"k").code == 1
    assert guest.get(b"k").code == -StatusCode.NOT_FOUND
    assert guest.delete(b"k").code == 0


# -- TTL -------------------------------------------------------------------------------


def test_ttl_ms_expires_on_the_runtimes_clock(guest, clock):
    guest.set(b"session", b"x", ttl_ms=1000)
    guest.increment(b"hits", 1, ttl_ms=1000)
    guest.set(b"forever", b"y", ttl_ms=0)
    clock.advance(0.5)
    assert guest.get(b"session").ok and guest.get(b"hits").ok
    clock.advance(0.6)
    assert guest.get(b"session").code == -StatusCode.NOT_FOUND
    assert guest.get(b"hits").code == -StatusCode.NOT_FOUND
    clock.advance(10**6)
    assert guest.get(b"forever").ok


@pytest.mark.parametrize("ttl_ms", [-1, -(2**63), 2**63 - 1, 100 * 366 * 24 * 3600 * 1000])
def test_a_negative_or_absurd_ttl_is_invalid_and_stores_nothing(guest, store, ttl_ms):
    for result in (
        guest.set(b"k", b"v", ttl_ms=ttl_ms),
        guest.cas(b"k", 0, b"v", ttl_ms=ttl_ms),
        guest.increment(b"k", 1, ttl_ms=ttl_ms),
    ):
        assert result.code == -StatusCode.INVALID_ARGUMENT and "ttl_ms" in result.message
    assert store.get(SERVICE, b"k") is None


# -- compare_and_set ---------------------------------------------------------------------


def test_compare_and_set_writes_only_over_the_expected_version(guest):
    created = i64(guest.cas(b"k", 0, b"one"))
    clash = guest.cas(b"k", 0, b"again")
    assert clash.code == -StatusCode.ABORTED
    assert f"current version is {created}" in clash.message and "expected version 0" in clash.message
    updated = i64(guest.cas(b"k", created, b"two"))
    assert updated > created
    stale = guest.cas(b"k", created, b"lost")
    assert stale.code == -StatusCode.ABORTED and str(updated) in stale.message
    assert value_of(guest.get(b"k")) == (updated, b"two")


def test_compare_and_set_on_a_missing_key_says_it_does_not_exist(guest):
    result = guest.cas(b"nothing", 7, b"v")
    assert result.code == -StatusCode.ABORTED and "does not exist" in result.message
    assert guest.get(b"nothing").code == -StatusCode.NOT_FOUND


def test_compare_and_set_refuses_a_negative_expected_version(guest):
    result = guest.cas(b"k", -1, b"v")
    assert result.code == -StatusCode.INVALID_ARGUMENT and "expected_version" in result.message


# -- increment -------------------------------------------------------------------------


def test_increment_counts_and_stores_decimal_text(guest):
    assert i64(guest.increment(b"n", 5)) == 5
    assert i64(guest.increment(b"n", -7)) == -2
    assert value_of(guest.get(b"n"))[1] == b"-2"


def test_increment_of_a_value_that_is_not_an_integer_is_failed_precondition(guest, store):
    version = i64(guest.set(b"text", b"abc"))
    result = guest.increment(b"text", 1)
    assert result.code == -StatusCode.FAILED_PRECONDITION and "decimal integer" in result.message
    assert store.get(SERVICE, b"text").version == version


def test_increment_past_64_bits_is_out_of_range_and_changes_nothing(guest, store):
    guest.set(b"n", str(2**63 - 1).encode())
    result = guest.increment(b"n", 1)
    assert result.code == -StatusCode.OUT_OF_RANGE and "64-bit" in result.message
    assert store.get(SERVICE, b"n").value == str(2**63 - 1).encode()
    assert i64(guest.increment(b"n", -(2**63) + 1)) == 0


def test_increment_with_value_out_zero_writes_nothing(guest, store):
    ptr, length = guest.memory.put(b"n")
    snapshot = bytes(guest.memory.data)
    assert guest.call("increment", ptr, length, 3, 0, 0) == 0
    assert bytes(guest.memory.data) == snapshot
    assert store.get(SERVICE, b"n").value == b"3"


# -- list ------------------------------------------------------------------------------


def test_list_pages_through_every_key_in_order(guest):
    keys = [b"p/%03d" % i for i in range(250)]
    for key in reversed(keys):
        guest.set(key, key.upper())
    guest.set(b"q/other", b"-")
    pages, cursor = [], b""
    while True:
        entries, cursor = decode_list(guest.list(b"p/", cursor, limit=100))
        pages.append(entries)
        if not cursor:
            break
    assert [len(p) for p in pages] == [100, 100, 50]
    every = sum(pages, [])
    assert [k for k, _, _ in every] == keys
    assert all(v == k.upper() and version > 0 for k, v, version in every)


@pytest.mark.parametrize(("limit", "expected"), [(0, 100), (1, 1), (1000, 1000), (5000, 1000), (2**32 + 3, 3)])
def test_list_limit_defaults_to_100_and_stops_at_1000(guest, store, limit, expected):
    for i in range(1100):
        store.set(SERVICE, b"%04d" % i, b"")
    entries, cursor = decode_list(guest.list(limit=limit, cap=1 << 20))
    assert len(entries) == expected and cursor == entries[-1][0]


def test_list_of_nothing_is_an_empty_result(guest):
    result = guest.list(b"none/")
    assert result.code == 0 and decode_list(result) == ([], b"")


def test_list_cuts_a_page_of_large_values_and_goes_on(guest, store):
    value = b"v" * (1024 * 1024)
    keys = [b"big%d" % i for i in range(10)]
    for key in keys:
        store.set(SERVICE, key, value)
    seen, cursor, pages = [], b"", 0
    while True:
        result = guest.list(cursor=cursor, limit=1000, cap=0)
        assert result.code <= MAX_LIST_RESULT_BYTES + 1024
        entries, cursor = decode_list(result)
        pages += 1
        assert entries and all(v == value for _, v, _ in entries)
        seen += [k for k, _, _ in entries]
        if not cursor:
            break
    assert seen == keys and pages == 4  # 3 values of 1 MiB (and keys) fit in 4 MiB


def test_list_ignores_unknown_fields(guest):
    guest.set(b"a", b"1")
    request = b"\x22\x03xyz" + list_request(b"a") + b"\x28\x07"  # fields 4 and 5
    entries, _ = decode_list(guest.fetch("list", request))
    assert [k for k, _, _ in entries] == [b"a"]


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"\x0a\x05ab",  # prefix claims 5 bytes, has 2
        b"\x08" + encode_varint(2**40),  # field 1 as a varint of 2**40: never bytes(2**40)
        b"\x0a" + encode_varint(2**40),  # a length of 2**40
        b"\x1a\x01x",  # limit as bytes
        b"\x18\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01",  # a varint over 64 bits
        b"\x00\x01",  # field number 0
        b"\x0f",  # wire type 7
    ],
)
def test_a_malformed_list_request_is_invalid_argument(guest, request_bytes):
    result = guest.fetch("list", request_bytes)
    assert result.code == -StatusCode.INVALID_ARGUMENT and "ListRequest" in result.message


def test_an_oversized_list_request_is_refused_before_it_is_read(guest):
    result = guest.error(guest.call("list", END - 10, 10**6, 0, 0))
    assert result.code == -StatusCode.INVALID_ARGUMENT and "at most" in result.message


# -- hostile pointers and sizes ------------------------------------------------------------


@pytest.mark.parametrize(("ptr", "length"), [(-1, 3), (END - 2, 3), (END, 1), (10, -1), (2**31 - 1, 5)])
def test_bad_key_pointers_are_invalid_argument_and_touch_nothing(guest, store, ptr, length):
    val_ptr, val_len = guest.memory.put(b"v")
    out = guest.memory.alloc(8)
    calls = {
        "get": (ptr, length, out, 8),
        "set": (ptr, length, val_ptr, val_len, 0, out),
        "delete": (ptr, length),
        "compare_and_set": (ptr, length, 0, val_ptr, val_len, 0, out),
        "increment": (ptr, length, 1, 0, out),
        "list": (ptr, length, out, 8),
    }
    for name, args in calls.items():
        result = guest.error(guest.call(name, *args))
        assert result.code == -StatusCode.INVALID_ARGUMENT, name
    assert store.list(SERVICE).entries == []


@pytest.mark.parametrize(("ptr", "length"), [(-1, 3), (END - 2, 3), (10, -1)])
def test_bad_value_pointers_are_invalid_argument_and_store_nothing(guest, store, ptr, length):
    key_ptr, key_len = guest.memory.put(b"k")
    out = guest.memory.alloc(8)
    assert guest.call("set", key_ptr, key_len, ptr, length, 0, out) == -StatusCode.INVALID_ARGUMENT
    assert guest.call("compare_and_set", key_ptr, key_len, 0, ptr, length, 0, out) == -StatusCode.INVALID_ARGUMENT
    assert store.get(SERVICE, b"k") is None


def test_a_length_of_minus_one_as_engines_deliver_it(guest, store):
    """i32 arguments arrive unsigned: the guest's -1 is 4294967295."""
    key_ptr, key_len = guest.memory.put(b"k")
    val_ptr, _ = guest.memory.put(b"v")
    out = guest.memory.alloc(8)
    assert guest.call("set", key_ptr, 0xFFFFFFFF, val_ptr, 1, 0, out) == -StatusCode.INVALID_ARGUMENT
    assert guest.call("set", key_ptr, key_len, val_ptr, 0xFFFFFFFF, 0, out) == -StatusCode.RESOURCE_EXHAUSTED
    assert store.get(SERVICE, b"k") is None


@pytest.mark.parametrize("out", [-8, END - 7, END, 2**31 - 1])
def test_a_bad_out_slot_fails_before_anything_is_stored(guest, store, out):
    key_ptr, key_len = guest.memory.put(b"k")
    val_ptr, val_len = guest.memory.put(b"v")
    assert guest.call("set", key_ptr, key_len, val_ptr, val_len, 0, out) == -StatusCode.INVALID_ARGUMENT
    assert guest.call("compare_and_set", key_ptr, key_len, 0, val_ptr, val_len, 0, out) == -StatusCode.INVALID_ARGUMENT
    assert guest.call("increment", key_ptr, key_len, 1, 0, out) == -StatusCode.INVALID_ARGUMENT
    assert store.get(SERVICE, b"k") is None


def test_a_bad_get_out_pointer_is_invalid_argument_and_writes_nothing(guest):
    guest.set(b"k", b"v")
    ptr, length = guest.memory.put(b"k")
    snapshot = bytes(guest.memory.data)
    assert guest.call("get", ptr, length, END - 4, 64) == -StatusCode.INVALID_ARGUMENT
    assert bytes(guest.memory.data) == snapshot


def test_an_empty_key_is_invalid_argument(guest):
    result = guest.error(guest.call("delete", 100, 0))
    assert result.code == -StatusCode.INVALID_ARGUMENT and "1 to 1024 bytes" in result.message


def test_a_key_over_max_key_bytes_is_refused_without_reading_memory(guest, env):
    # a range far outside memory: the size check comes first, so the message is about size
    result = guest.error(guest.call("get", END + 10**6, 1025, 0, 0))
    assert result.code == -StatusCode.INVALID_ARGUMENT
    assert "1 to 1024 bytes" in result.message and "max_key_bytes" in result.message
    small = StateGuest({"max_key_bytes": 4}, env)
    assert small.set(b"four", b"v").ok
    assert small.set(b"fives", b"v").code == -StatusCode.INVALID_ARGUMENT


def test_a_value_over_max_value_bytes_is_resource_exhausted(guest, env, store):
    result = guest.error(guest.call("set", 100, 1, 200, 1024 * 1024 + 1, 0, 0))
    assert result.code == -StatusCode.RESOURCE_EXHAUSTED
    assert "1048577 bytes" in result.message and "max_value_bytes" in result.message
    assert 'host_apis."okra.state"' in result.message
    assert guest.set(b"k", b"v" * (1024 * 1024)).ok  # exactly the limit fits
    small = StateGuest({"max_value_bytes": 10}, env)
    assert small.set(b"k", b"0123456789").ok
    assert small.cas(b"k", 0, b"0123456789x").code == -StatusCode.RESOURCE_EXHAUSTED


# -- read_only ---------------------------------------------------------------------------


def test_read_only_refuses_every_write_audited_and_counted(env, store, caplog):
    caplog.set_level(logging.WARNING, logger="okra.audit")
    store.set(SERVICE, b"k", b"before")
    guest = StateGuest({"read_only": True}, env)
    results = {
        "set": guest.set(b"k", b"v"),
        "delete": guest.delete(b"k"),
        "compare_and_set": guest.cas(b"k", 0, b"v"),
        "increment": guest.increment(b"k", 1),
    }
    for name, result in results.items():
        assert result.code == -StatusCode.PERMISSION_DENIED, name
        assert f"okra.state.{name} refused" in result.message
        assert "read_only = true" in result.message and 'host_apis."okra.state"' in result.message
    assert store.get(SERVICE, b"k").value == b"before"
    assert value_of(guest.get(b"k"))[1] == b"before"  # reads still work
    assert [k for k, _, _ in decode_list(guest.list())[0]] == [b"k"]
    assert env.audit.denials(SERVICE) == {"okra.state": 4}
    assert f'okra_denials_total{{service="{SERVICE}",api="okra.state"}} 4' in env.metrics.render()
    records = [r for r in caplog.records if r.name == "okra.audit"]
    assert [r.okra_audit["function"] for r in records] == list(results)
    assert all(r.okra_audit["api"] == "okra.state" and r.okra_audit["service"] == SERVICE for r in records)


def test_read_only_from_policy_names_the_rule(env):
    api = StateAPI()
    settings = api.narrow({}, {"read_only": True, "rule": "freeze-prod"})
    guest = StateGuest(settings, env)
    result = guest.set(b"k", b"v")
    assert result.code == -StatusCode.PERMISSION_DENIED
    assert "operator policy rule 'freeze-prod'" in result.message
    assert env.audit.denials(SERVICE) == {"okra.state": 1}


# -- isolation ---------------------------------------------------------------------------


def test_services_do_not_see_each_others_state(env):
    cart = StateGuest({}, env, service="shop.v1.Cart")
    orders = StateGuest({}, env, service="shop.v1.Orders")
    cart.set(b"k", b"cart")
    assert orders.get(b"k").code == -StatusCode.NOT_FOUND
    assert decode_list(orders.list())[0] == []
    assert orders.delete(b"k").code == 0
    assert i64(orders.increment(b"k", 1)) == 1
    assert value_of(cart.get(b"k"))[1] == b"cart"


def test_each_key_of_a_keyed_service_has_its_own_state(env, store):
    alice = StateGuest({}, env, service="shop.v1.Cart", key="alice")
    bob = StateGuest({}, env, service="shop.v1.Cart", key="bob")
    whole = StateGuest({}, env, service="shop.v1.Cart", key=None)
    singleton = StateGuest({}, env, service="shop.v1.Cart", key="")
    alice.set(b"items", b"apples")
    assert bob.get(b"items").code == -StatusCode.NOT_FOUND
    assert whole.get(b"items").code == -StatusCode.NOT_FOUND
    bob.set(b"items", b"pears")
    assert value_of(alice.get(b"items"))[1] == b"apples"
    singleton.set(b"items", b"all")
    assert value_of(whole.get(b"items"))[1] == b"all"  # "" and None: the service's own
    assert [k for k, _, _ in decode_list(alice.list())[0]] == [b"items"]
    assert store.get("shop.v1.Cart#alice", b"items").value == b"apples"


def test_a_key_with_hash_signs_stays_in_its_own_namespace(env):
    one = StateGuest({}, env, key="a#b")
    two = StateGuest({}, env, key="a")
    one.set(b"x", b"1")
    two.set(b"#b", b"2")  # not the same thing as key "a#b"'s "x"
    assert value_of(one.get(b"x"))[1] == b"1"
    assert two.get(b"x").code == -StatusCode.NOT_FOUND
    assert [k for k, _, _ in decode_list(one.list())[0]] == [b"x"]
    assert namespace_of(one.ctx) == "shop.v1.Cart#a#b"


def test_the_namespace_follows_the_key_of_the_running_call(env):
    guest = StateGuest({}, env, key="alice")
    guest.set(b"k", b"alice's")
    guest.ctx.key = "bob"  # the runtime sets it per call
    assert guest.get(b"k").code == -StatusCode.NOT_FOUND


# -- store failures ----------------------------------------------------------------------


class BrokenStore:
    name = "broken"

    def __getattr__(self, name):
        def fail(*args, **kwargs):
            raise ConnectionError("redis at 10.0.0.5:6379 refused the connection")
        return fail


def test_a_failing_store_is_unavailable_and_logged_not_leaked(caplog):
    guest = StateGuest({}, make_env(BrokenStore()))
    for result in (guest.get(b"k"), guest.set(b"k", b"v"), guest.delete(b"k"),
                   guest.cas(b"k", 0, b"v"), guest.increment(b"k", 1), guest.list()):
        assert result.code == -StatusCode.UNAVAILABLE
        assert "host's log" in result.message and "10.0.0.5" not in result.message
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 6 and all("10.0.0.5" in r.getMessage() for r in errors)
    assert errors[0].name == f"okra.service.{SERVICE}"


def test_a_store_that_cannot_be_opened_is_unavailable(caplog):
    def cannot_open():
        raise OSError("disk full")

    env = HostEnvironment(
        clock=FakeClock(), metrics=Metrics(), audit=Audit(), state=cannot_open,
        secrets=None, invoke=None,
    )
    guest = StateGuest({}, env)
    assert guest.get(b"k").code == -StatusCode.UNAVAILABLE
    assert "disk full" in caplog.text


# -- settings and policy -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"readonly": True}, "unknown okra.state settings: readonly (known: read_only, max_value_bytes, max_key_bytes)"),
        ({"read_only": "yes"}, "read_only must be true or false"),
        ({"max_value_bytes": 0}, "max_value_bytes must be a whole number of bytes from 1 to 67108864"),
        ({"max_value_bytes": 2**27}, "from 1 to 67108864"),
        ({"max_value_bytes": True}, "max_value_bytes"),
        ({"max_key_bytes": "1k"}, "max_key_bytes must be a whole number of bytes from 1 to 65536"),
        ({"policy_rules": ["x"]}, "set by operator policy"),
    ],
)
def test_bad_settings_fail_the_deploy(env, config, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        StateAPI().functions(config, env)


def test_policy_lowers_limits_and_never_raises_them(env):
    api = StateAPI()
    lowered = api.narrow({"max_value_bytes": 4096}, {"max_value_bytes": 16, "rule": "tight"})
    assert lowered["max_value_bytes"] == 16
    guest = StateGuest(lowered, env)
    result = guest.set(b"k", b"x" * 17)
    assert result.code == -StatusCode.RESOURCE_EXHAUSTED
    assert "at most 16" in result.message and "operator policy rule 'tight'" in result.message
    assert api.narrow({"max_value_bytes": 8}, {"max_value_bytes": 4096, "rule": "loose"}) == {"max_value_bytes": 8}
    assert api.narrow({}, {"max_key_bytes": 8, "rule": "keys"})["max_key_bytes"] == 8
    assert api.narrow({}, {"max_key_bytes": 2048, "rule": "keys"}) == {}  # above the default


def test_policy_read_only_false_does_not_make_a_read_only_package_writable():
    assert StateAPI().narrow({"read_only": True}, {"read_only": False, "rule": "r"}) == {"read_only": True}


def test_several_policy_rules_narrow_in_turn(env):
    api = StateAPI()
    settings = api.narrow({}, {"max_value_bytes": 100, "rule": "first"})
    settings = api.narrow(settings, {"read_only": True, "rule": "second"})
    settings = api.narrow(settings, {"max_value_bytes": 200, "rule": "third"})
    assert settings["max_value_bytes"] == 100 and settings["read_only"] is True
    assert settings["policy_rules"] == {"max_value_bytes": "first", "read_only": "second"}
    StateAPI().functions(settings, env)  # what narrow returns, functions accepts


@pytest.mark.parametrize(
    ("policy", "message"),
    [
        ({"writable": False, "rule": "r"}, "unknown okra.state policy settings: writable"),
        ({"read_only": 1, "rule": "r"}, "policy rule 'r': okra.state: read_only must be true or false"),
        ({"max_value_bytes": -5, "rule": "r"}, "policy rule 'r': okra.state: max_value_bytes"),
    ],
)
def test_bad_policy_settings_are_config_errors(policy, message):
    with pytest.raises(ConfigError, match=message):
        StateAPI().narrow({}, policy)


# -- encoding and concurrency --------------------------------------------------------------


def protobuf_messages():
    """ListRequest and ListResult as the protobuf runtime builds them from the spec."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    F = descriptor_pb2.FieldDescriptorProto
    file = descriptor_pb2.FileDescriptorProto(name="okra_state_test.proto", package="okra.state.test", syntax="proto3")
    for name, fields in {
        "ListRequest": [("prefix", 1, F.TYPE_BYTES, F.LABEL_OPTIONAL, None), ("cursor", 2, F.TYPE_BYTES, F.LABEL_OPTIONAL, None),
                        ("limit", 3, F.TYPE_UINT32, F.LABEL_OPTIONAL, None)],
        "StateEntry": [("key", 1, F.TYPE_BYTES, F.LABEL_OPTIONAL, None), ("value", 2, F.TYPE_BYTES, F.LABEL_OPTIONAL, None),
                       ("version", 3, F.TYPE_INT64, F.LABEL_OPTIONAL, None)],
        "ListResult": [("entries", 1, F.TYPE_MESSAGE, F.LABEL_REPEATED, ".okra.state.test.StateEntry"),
                       ("next_cursor", 2, F.TYPE_BYTES, F.LABEL_OPTIONAL, None)],
    }.items():
        message = file.message_type.add(name=name)
        for field_name, number, kind, label, type_name in fields:
            field = message.field.add(name=field_name, number=number, type=kind, label=label)
            if type_name:
                field.type_name = type_name
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    get = lambda name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"okra.state.test.{name}"))  # noqa: E731
    return get("ListRequest"), get("ListResult")


def test_list_speaks_the_specs_protobuf_messages(guest):
    ListRequest, ListResult = protobuf_messages()
    for key in (b"a/1", b"a/2", b"a/3", b"b/1"):
        guest.set(key, key * 2)
    guest.set(b"a/4", b"")
    request = ListRequest(prefix=b"a/", limit=3).SerializeToString()
    first = ListResult.FromString(guest.fetch("list", request).data)
    assert [(e.key, e.value) for e in first.entries] == [(b"a/1", b"a/1a/1"), (b"a/2", b"a/2a/2"), (b"a/3", b"a/3a/3")]
    assert all(e.version > 0 for e in first.entries) and first.next_cursor == b"a/3"
    request = ListRequest(prefix=b"a/", cursor=first.next_cursor, limit=3).SerializeToString()
    second = ListResult.FromString(guest.fetch("list", request).data)
    assert [(e.key, e.value) for e in second.entries] == [(b"a/4", b"")] and second.next_cursor == b""
    big = ListResult.FromString(encode_list_result([(b"k", b"v", 2**62)], b""))
    assert big.entries[0].version == 2**62


def test_many_guests_of_one_actor_lose_no_increment(env, store):
    guests = [StateGuest({}, env, key="counter") for _ in range(8)]

    def count(guest):
        def run():
            for _ in range(50):
                guest.fresh()
                assert guest.increment(b"n", 1).ok
        return run

    run_threads([count(g) for g in guests])
    assert store.get(f"{SERVICE}#counter", b"n").value == b"400"


def test_a_manifest_cannot_set_the_policy_rules_narrow_writes(env):
    manifest = make_manifest(host_apis={"okra.state": {
        "read_only": True, "policy_rules": {"read_only": "security-team"},
    }})
    with pytest.raises(DeployError) as info:
        grant(manifest, registry(), RuntimeConfig(), env)
    assert str(info.value) == (
        "package 'greeter': policy_rules in [host_apis.\"okra.state\"] is set by operator "
        "policy, not by a package: remove it from okra.toml"
    )
