# Test plan: host API okra.time (okra_plugins.hostapi_time), called through
# call_host_function on a bytearray guest memory with a real HostEnvironment.
# - registered by its plugin under "okra.time" with functions now and monotonic, both
#   non-blocking, each taking one i32 (the out slot); function_names() matches.
# - the guest sees the runtime's clock: a FakeClock's wall time and monotonic time,
#   written as 8 bytes little-endian exactly at `out`, nothing around it touched.
# - moving the fake clock moves what the guest sees; setting the wall clock back (NTP)
#   moves `now` back but never `monotonic`; a wall time before 1970 is a negative i64.
# - without a fake clock, SystemClock: now is close to time.time_ns(), monotonic does
#   not decrease over many calls.
# - a bad out pointer (negative, past the end, straddling the end) is -3
#   INVALID_ARGUMENT with the message pending, and memory is unchanged.
# - okra.time takes no settings: any key is a ConfigError naming it.
# - the functions use nothing but the clock (state/secrets/invoke fail the test).
import struct
import time

import pytest

from hostapi_basic_support import Guest, make_env, registry
from okra_core.clock import FakeClock, SystemClock
from okra_core.errors import ConfigError
from okra_core.status import StatusCode
from okra_plugins.hostapi_time import TimeAPI


@pytest.fixture
def clock():
    return FakeClock(start_ns=1_750_000_000_123_456_789)


@pytest.fixture
def guest(clock):
    return Guest(TimeAPI(), {}, make_env(clock=clock))


def read_clock(guest: Guest, name: str) -> int:
    out = guest.memory.alloc(8)
    assert guest.call(name, out) == 0
    return guest.memory.i64(out)


def test_registered_by_its_plugin_with_two_non_blocking_functions():
    api = registry().host_api("okra.time")
    assert isinstance(api, TimeAPI)
    functions = api.functions({}, make_env())
    assert [f.name for f in functions] == list(api.function_names()) == ["now", "monotonic"]
    for function in functions:
        assert function.namespace == "okra.time"
        assert function.params == ("i32",) and function.results == ("i32",)
        assert function.blocking is False


def test_guest_sees_the_fake_clock(guest, clock):
    assert read_clock(guest, "now") == 1_750_000_000_123_456_789
    assert read_clock(guest, "monotonic") == 0
    clock.advance(1.5)
    assert read_clock(guest, "now") == 1_750_000_001_623_456_789
    assert read_clock(guest, "monotonic") == 1_500_000_000


def test_result_is_eight_little_endian_bytes_exactly_at_out(guest, clock):
    out = guest.memory.alloc(16)
    guest.memory.write(out, b"\xaa" * 16)
    assert guest.call("now", out + 4) == 0
    raw = guest.memory.read(out, 16)
    assert raw[:4] == b"\xaa" * 4 and raw[12:] == b"\xaa" * 4
    assert raw[4:12] == struct.pack("<q", clock.time_ns())


def test_wall_clock_set_back_moves_now_back_but_not_monotonic(guest, clock):
    clock.advance(10)
    before_now, before_mono = read_clock(guest, "now"), read_clock(guest, "monotonic")
    clock.set(before_now - 3_600 * 10**9)
    assert read_clock(guest, "now") == before_now - 3_600 * 10**9
    assert read_clock(guest, "monotonic") == before_mono


def test_wall_time_before_the_epoch_is_a_negative_i64(guest, clock):
    clock.set(-5)
    assert read_clock(guest, "now") == -5


def test_system_clock_is_the_real_time_and_monotonic_never_decreases():
    guest = Guest(TimeAPI(), {}, make_env(clock=SystemClock()))
    before = time.time_ns()
    now = read_clock(guest, "now")
    assert before <= now <= time.time_ns()
    readings = [read_clock(guest, "monotonic") for _ in range(2000)]
    assert readings == sorted(readings) and readings[0] > 0


@pytest.mark.parametrize("name", ["now", "monotonic"])
@pytest.mark.parametrize("out", [-1, -8, 64 * 1024, 64 * 1024 - 7, 2**31 - 1])
def test_bad_out_pointer_is_invalid_argument_and_writes_nothing(guest, name, out):
    snapshot = bytes(guest.memory.data)
    result = guest.error(guest.call(name, out))
    assert result.code == -StatusCode.INVALID_ARGUMENT
    assert "outside the guest's" in result.message
    assert bytes(guest.memory.data) == snapshot


def test_last_eight_bytes_of_memory_are_a_valid_slot(guest, clock):
    assert guest.call("now", 64 * 1024 - 8) == 0
    assert guest.memory.i64(64 * 1024 - 8) == clock.time_ns()


@pytest.mark.parametrize("config", [{"precision": "ms"}, {"values": {}}])
def test_any_setting_is_a_config_error_naming_it(config):
    with pytest.raises(ConfigError, match=f"unknown okra.time settings: {next(iter(config))}"):
        TimeAPI().functions(config, make_env())
