# Test plan: okra_uuid, the okra.uuid host API, called the way every engine calls a host
# function (okra_core.hostapi.call_host_function) on a bytearray guest memory, with the
# runtime's clock replaced by a FakeClock. Run after installing the plugin
# (`pip install -e .`, then `pytest`); OKRA's own suite runs them against a real install.
# - discovery: the installed distribution's `okra` entry point registers okra.uuid under
#   the plugin name "uuid", and the API offers v4 and v7, both non-blocking, both
#   (out_ptr, out_cap) -> i32.
# - v4: 16 bytes at out_ptr, result 16, version 4 and RFC variant; ids do not repeat.
# - v7: version 7 and RFC variant; the timestamp is the clock's millisecond; ids made in
#   one millisecond strictly increase (the counter), and so do ids across milliseconds;
#   a clock stepped backwards keeps the last millisecond and ids still increase; a
#   counter that runs out moves the timestamp one millisecond on; a clock before 1970 or
#   past 48 bits of milliseconds is OUT_OF_RANGE with nothing written.
# - v7 from many threads at once: no id repeats, each thread's ids increase.
# - v7 generators are per runtime: two runtimes' clocks do not mix, and a package
#   deployed again (functions built again) goes on after its earlier ids.
# - the convention: a buffer smaller than 16 keeps the id pending (nothing written) and
#   returns 16; a pointer outside memory is INVALID_ARGUMENT with the message pending.
# - settings: none; any key fails with a ConfigError that names it.
from __future__ import annotations

import importlib.metadata
import logging
import threading
import uuid

import pytest

import okra_uuid
from okra_core.audit import Audit
from okra_core.clock import FakeClock
from okra_core.errors import ConfigError
from okra_core.hostapi import HostContext, HostEnvironment, HostError, call_host_function
from okra_core.metrics import Metrics
from okra_core.plugins import Registry, make_plugin_manager
from okra_core.status import StatusCode

MS = 1_000_000  # nanoseconds


class ByteMemory:
    """A guest's linear memory, bounds-checked as an engine's is."""

    def __init__(self, size: int = 4096):
        self.data = bytearray(size)

    def read(self, ptr: int, length: int) -> bytes:
        self._check(ptr, length)
        return bytes(self.data[ptr : ptr + length])

    def write(self, ptr: int, data: bytes) -> None:
        self._check(ptr, len(data))
        self.data[ptr : ptr + len(data)] = data

    def _check(self, ptr: int, length: int) -> None:
        if ptr < 0 or ptr + length > len(self.data):
            raise HostError(StatusCode.INVALID_ARGUMENT, f"{ptr}..{ptr + length} is outside memory")


def environment(clock) -> HostEnvironment:
    def unused(*_, **__):
        raise AssertionError("okra.uuid must not use this")

    return HostEnvironment(clock=clock, metrics=Metrics(), audit=Audit(), state=unused,
                           secrets=unused, invoke=unused)


class Guest:
    """One instance granted okra.uuid: calls a function, returns the id it got."""

    def __init__(self, api: okra_uuid.UuidAPI, env: HostEnvironment):
        self.functions = {fn.name: fn for fn in api.functions({}, env)}
        self.ctx = HostContext("ids.v1.Ids", logging.getLogger("test"))
        self.ctx.memory = self.memory = ByteMemory()

    def call(self, name: str, out_ptr: int = 64, out_cap: int = 16) -> int:
        return call_host_function(self.functions[name], self.ctx, (out_ptr, out_cap))

    def new(self, name: str) -> uuid.UUID:
        assert self.call(name) == 16
        return uuid.UUID(bytes=self.memory.read(64, 16))


@pytest.fixture
def clock():
    return FakeClock(start_ns=1_700_000_000_123 * MS)


@pytest.fixture
def guest(clock):
    return Guest(okra_uuid.UuidAPI(), environment(clock))


def timestamp_ms(value: uuid.UUID) -> int:
    return value.int >> 80


# -- discovery ------------------------------------------------------------------------


def test_the_installed_entry_point_registers_okra_uuid_as_plugin_uuid():
    (entry_point,) = [ep for ep in importlib.metadata.entry_points(group="okra") if ep.name == "uuid"]
    assert entry_point.value == "okra_uuid" and entry_point.dist.name == "okra-uuid"
    registry = Registry(make_plugin_manager(entrypoints=True))
    (provided,) = [p for p in registry.provided() if p.name == "okra.uuid"]
    assert (provided.kind, provided.plugin) == ("host_apis", "uuid")
    assert isinstance(provided.obj, okra_uuid.UuidAPI)


def test_offers_v4_and_v7_both_non_blocking_with_the_out_buffer_signature(clock):
    api = okra_uuid.UuidAPI()
    functions = api.functions({}, environment(clock))
    assert [fn.qualified_name for fn in functions] == ["okra.uuid.v4", "okra.uuid.v7"]
    assert [fn.name for fn in functions] == list(api.function_names())
    for fn in functions:
        assert (fn.params, fn.results, fn.blocking) == (("i32", "i32"), ("i32",), False)


# -- v4 ---------------------------------------------------------------------------------


def test_v4_writes_16_bytes_with_version_4_and_the_rfc_variant(guest):
    guest.memory.write(0, b"\xaa" * 200)
    value = guest.new("v4")
    assert value.version == 4 and value.variant == uuid.RFC_4122
    assert guest.memory.read(0, 64) == b"\xaa" * 64 and guest.memory.read(80, 16) == b"\xaa" * 16
    assert guest.ctx.pending is None


def test_v4_ids_do_not_repeat(guest):
    ids = {guest.new("v4") for _ in range(2000)}
    assert len(ids) == 2000
    assert all(value.version == 4 for value in ids)


# -- v7 ---------------------------------------------------------------------------------


def test_v7_has_version_7_the_rfc_variant_and_the_clocks_millisecond(guest, clock):
    value = guest.new("v7")
    assert value.version == 7 and value.variant == uuid.RFC_4122
    assert timestamp_ms(value) == clock.time_ns() // MS == 1_700_000_000_123


def test_v7_ids_within_one_millisecond_strictly_increase(guest, clock):
    ids = [guest.new("v7") for _ in range(5000)]  # the FakeClock never moves
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert {timestamp_ms(value) for value in ids} == {1_700_000_000_123}
    assert all(value.version == 7 and value.variant == uuid.RFC_4122 for value in ids)


def test_v7_ids_across_milliseconds_increase_and_carry_each_millisecond(guest, clock):
    ids = []
    for _ in range(50):
        ids += [guest.new("v7") for _ in range(3)]
        clock.advance(0.001)
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert [timestamp_ms(value) for value in ids[::3]] == [1_700_000_000_123 + i for i in range(50)]


def test_v7_keeps_increasing_when_the_clock_steps_back(guest, clock):
    before = guest.new("v7")
    clock.set(clock.time_ns() - 3_600_000 * MS)  # an NTP step, an hour back
    after = [guest.new("v7") for _ in range(10)]
    assert [before, *after] == sorted([before, *after]) and len(set(after)) == 10
    assert {timestamp_ms(value) for value in after} == {timestamp_ms(before)}
    clock.set(clock.time_ns() + 3_600_001 * MS)  # the clock passes the last id's millisecond
    later = guest.new("v7")
    assert later > after[-1] and timestamp_ms(later) == timestamp_ms(before) + 1


def test_v7_moves_the_timestamp_on_when_the_counter_runs_out(clock):
    api = okra_uuid.UuidAPI()
    env = environment(clock)
    guest = Guest(api, env)
    first = guest.new("v7")
    api.generator(env).counter = okra_uuid.COUNTER_MAX - 1
    last_of_the_millisecond = guest.new("v7")
    spilled = guest.new("v7")
    assert first < last_of_the_millisecond < spilled
    assert timestamp_ms(last_of_the_millisecond) == timestamp_ms(first)
    assert timestamp_ms(spilled) == timestamp_ms(first) + 1  # ahead of the clock, in order
    assert guest.new("v7") > spilled  # and the clock has not caught up: same millisecond


@pytest.mark.parametrize("wall_ns", [-5 * MS, (okra_uuid.TIMESTAMP_MAX + 1) * MS])
def test_v7_with_a_clock_outside_48_bits_of_milliseconds_is_out_of_range(wall_ns):
    guest = Guest(okra_uuid.UuidAPI(), environment(FakeClock(start_ns=wall_ns)))
    assert guest.call("v7") == -StatusCode.OUT_OF_RANGE
    assert b"outside what a UUIDv7 timestamp holds" in guest.ctx.pending
    assert guest.memory.read(64, 16) == bytes(16)


def test_v7_at_the_last_representable_millisecond_still_works():
    guest = Guest(okra_uuid.UuidAPI(), environment(FakeClock(start_ns=okra_uuid.TIMESTAMP_MAX * MS)))
    assert timestamp_ms(guest.new("v7")) == okra_uuid.TIMESTAMP_MAX


def test_v7_from_many_threads_never_repeats_and_each_threads_ids_increase(clock):
    api = okra_uuid.UuidAPI()
    env = environment(clock)
    results: list[list[uuid.UUID]] = []
    start = threading.Barrier(4)

    def work():
        guest = Guest(api, env)  # one instance per thread, as the engine has
        start.wait()
        ids = []
        for i in range(3000):
            ids.append(guest.new("v7"))
            if i % 500 == 0:
                clock.advance(0.001)
        results.append(ids)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 4
    for ids in results:
        assert ids == sorted(ids)
    assert len({value for ids in results for value in ids}) == 4 * 3000


def test_v7_generators_are_per_runtime_and_outlive_a_redeploy():
    api = okra_uuid.UuidAPI()
    early, late = FakeClock(start_ns=1_000_000_000_000 * MS), FakeClock(start_ns=2_000_000_000_000 * MS)
    late_env = environment(late)
    on_late = Guest(api, late_env)
    on_early = Guest(api, environment(early))
    assert timestamp_ms(on_late.new("v7")) == 2_000_000_000_000
    assert timestamp_ms(on_early.new("v7")) == 1_000_000_000_000  # not held back by the other
    before = [on_late.new("v7") for _ in range(100)]
    redeployed = Guest(api, late_env)  # the same runtime builds the functions again
    assert all(redeployed.new("v7") > before[-1] for _ in range(100))


# -- the calling convention -------------------------------------------------------------


@pytest.mark.parametrize("name", ["v4", "v7"])
def test_a_buffer_too_small_keeps_the_id_pending(guest, name):
    assert guest.call(name, out_ptr=64, out_cap=15) == 16
    assert guest.memory.read(64, 16) == bytes(16)  # nothing written
    pending = uuid.UUID(bytes=guest.ctx.pending)
    assert pending.version == int(name[1])


@pytest.mark.parametrize("name", ["v4", "v7"])
@pytest.mark.parametrize("out_ptr", [4096 - 15, 1 << 31, -1])
def test_a_pointer_outside_memory_is_invalid_argument(guest, name, out_ptr):
    assert guest.call(name, out_ptr=out_ptr, out_cap=16) == -StatusCode.INVALID_ARGUMENT
    assert b"outside memory" in guest.ctx.pending
    assert guest.memory.data == bytes(4096)


# -- settings ---------------------------------------------------------------------------


@pytest.mark.parametrize("settings", [{"format": "text"}, {"seed": 1, "clock": "x"}])
def test_any_setting_is_refused_by_name(clock, settings):
    with pytest.raises(ConfigError) as info:
        okra_uuid.UuidAPI().functions(settings, environment(clock))
    message = str(info.value)
    assert all(key in message for key in settings) and "okra.uuid has no settings" in message
