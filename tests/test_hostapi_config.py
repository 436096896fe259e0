# Test plan: host API okra.config (okra_plugins.hostapi_config), called through
# call_host_function on a bytearray guest memory with a real HostEnvironment.
# - registered by its plugin under "okra.config": one function get(key_ptr, key_len,
#   out_ptr, out_cap), non-blocking.
# - get returns the value's UTF-8 bytes and its length; numbers and booleans read as
#   TOML writes them ("8080", "0.25", "true"); non-ASCII names and values round-trip.
# - a value bigger than out_cap: nothing written, its length returned, the value pending
#   (okra.abi.take); an empty value is length 0.
# - a name not set: -5 NOT_FOUND, the message names it and says where to set it; the
#   lookup is exact (case, trailing bytes, invalid UTF-8 all miss).
# - a key longer than any name can be: -3 before memory is read; bad key or out
#   pointers: -3, nothing written.
# - settings: unknown keys (listing the known one), values not a table, a value of
#   another type (naming the key), empty or over-long names, values over 64 KiB, text
#   that is not valid Unicode: ConfigError. A value of exactly 64 KiB is fine.
# - deploy-time overrides arrive merged into values: the guest sees them.
# - policy narrowing: policy values pin (replace the manifest's, add missing ones),
#   others are left alone; a policy without values changes nothing; unknown policy keys
#   and bad pinned values are ConfigErrors naming the rule.
# - many threads reading at once all see their values.
import pytest

from hostapi_basic_support import Guest, Result, make_env, registry, run_threads
from okra_core.errors import ConfigError
from okra_core.status import StatusCode
from okra_plugins.hostapi_config import MAX_NAME_CHARS, MAX_VALUE_BYTES, ConfigAPI

VALUES = {
    "greeting": "hello",
    "port": 8080,
    "ratio": 0.25,
    "debug": True,
    "quiet": False,
    "empty": "",
    "ünïcode": "värde ✓",
    "big": "x" * 5000,
}


@pytest.fixture
def guest():
    return Guest(ConfigAPI(), {"values": VALUES}, make_env())


def test_registered_by_its_plugin_with_one_non_blocking_function():
    api = registry().host_api("okra.config")
    assert isinstance(api, ConfigAPI)
    (function,) = api.functions({}, make_env())
    assert api.function_names() == ("get",)
    assert (function.namespace, function.name) == ("okra.config", "get")
    assert function.params == ("i32", "i32", "i32", "i32") and function.blocking is False


@pytest.mark.parametrize(
    "name, expected",
    [
        ("greeting", "hello"),
        ("port", "8080"),
        ("ratio", "0.25"),
        ("debug", "true"),
        ("quiet", "false"),
        ("ünïcode", "värde ✓"),
    ],
)
def test_get_returns_the_value_as_utf8_text(guest, name, expected):
    result = guest.fetch("get", name.encode())
    assert result.code == len(expected.encode())
    assert result.data.decode() == expected


def test_empty_value_is_length_zero(guest):
    assert guest.fetch("get", b"empty") == Result(0, b"")


def test_value_bigger_than_out_cap_is_pending_and_nothing_is_written(guest):
    ptr, length = guest.memory.put(b"big")
    out = guest.memory.alloc(100)
    assert guest.call("get", ptr, length, out, 100) == 5000
    assert guest.memory.read(out, 100) == bytes(100)
    assert guest.ctx.pending == b"x" * 5000
    assert guest.fetch("get", b"big", cap=5000).data == b"x" * 5000


@pytest.mark.parametrize("key", [b"missing", b"Greeting", b"greeting\0", b"greeting ", b"\xff\xfe"])
def test_unset_name_is_not_found_naming_it_and_where_to_set_it(guest, key):
    result = guest.fetch("get", key)
    assert result.code == -StatusCode.NOT_FOUND
    assert repr(key.decode("utf-8", "replace")) in result.message
    assert '[host_apis."okra.config"]' in result.message and "--config" in result.message


def test_no_values_at_all_means_every_name_is_not_found():
    guest = Guest(ConfigAPI(), {}, make_env())
    assert guest.fetch("get", b"greeting").code == -StatusCode.NOT_FOUND


def test_key_longer_than_any_name_is_refused_before_reading_memory(guest):
    # The pointer is out of range too: the length check comes first, so the message says
    # what is wrong with the key rather than with the pointer.
    result = guest.error(guest.call("get", 10**9, 4 * MAX_NAME_CHARS + 1, 0, 0))
    assert result.code == -StatusCode.INVALID_ARGUMENT
    assert f"at most {MAX_NAME_CHARS} characters" in result.message


@pytest.mark.parametrize("key_ptr, key_len", [(-1, 4), (64 * 1024 - 2, 4), (0, -1)])
def test_bad_key_pointer_is_invalid_argument(guest, key_ptr, key_len):
    out = guest.memory.alloc(16)
    result = guest.error(guest.call("get", key_ptr, key_len, out, 16))
    assert result.code == -StatusCode.INVALID_ARGUMENT
    assert "outside the guest's" in result.message


def test_bad_out_pointer_is_invalid_argument_and_writes_nothing(guest):
    ptr, length = guest.memory.put(b"greeting")
    snapshot = bytes(guest.memory.data)
    result = guest.error(guest.call("get", ptr, length, 64 * 1024 - 2, 16))
    assert result.code == -StatusCode.INVALID_ARGUMENT
    assert bytes(guest.memory.data) == snapshot


def test_deploy_time_overrides_merged_into_values_are_what_the_guest_reads():
    # The runtime merges `--config port=9090` into values before building the functions.
    guest = Guest(ConfigAPI(), {"values": {**VALUES, "port": "9090"}}, make_env())
    assert guest.fetch("get", b"port").data == b"9090"


def test_value_of_exactly_the_limit_is_accepted():
    value = "é" * (MAX_VALUE_BYTES // 2)
    guest = Guest(ConfigAPI(), {"values": {"v": value}}, make_env(), memory_size=2 * MAX_VALUE_BYTES)
    assert guest.fetch("get", b"v", cap=MAX_VALUE_BYTES).data == value.encode()


@pytest.mark.parametrize(
    "config, fragment",
    [
        ({"value": {}}, "unknown okra.config settings: value (known: values)"),
        ({"overrides": {}}, "unknown okra.config settings: overrides"),
        ({"values": ["a", "b"]}, "must be a table of name = value, got list"),
        ({"values": {"hosts": ["a", "b"]}}, "'hosts' is a list"),
        ({"values": {"db": {"host": "x"}}}, "'db' is a dict"),
        ({"values": {"when": None}}, "'when' is a NoneType"),
        ({"values": {"": "x"}}, "'' is not a valid name"),
        ({"values": {"n" * (MAX_NAME_CHARS + 1): "x"}}, "is not a valid name"),
        ({"values": {"blob": "x" * (MAX_VALUE_BYTES + 1)}}, f"'blob' is longer than {MAX_VALUE_BYTES} bytes"),
        ({"values": {"blob": "é" * (MAX_VALUE_BYTES // 2 + 1)}}, "'blob' is longer than"),
        ({"values": {"bad": "\ud800"}}, "'bad' (or its value) is not valid Unicode"),
    ],
)
def test_invalid_settings_are_config_errors_that_say_what_is_wrong(config, fragment):
    with pytest.raises(ConfigError) as exc:
        ConfigAPI().functions(config, make_env())
    assert fragment in str(exc.value)


def test_name_of_exactly_the_limit_is_accepted():
    name = "n" * MAX_NAME_CHARS
    guest = Guest(ConfigAPI(), {"values": {name: "ok"}}, make_env())
    assert guest.fetch("get", name.encode()).data == b"ok"


def test_policy_pins_values_over_the_manifest_and_adds_missing_ones():
    api = ConfigAPI()
    requested = {"values": {"region": "us", "port": 8080, "greeting": "hi"}}
    narrowed = api.narrow(requested, {"rule": "eu-only", "values": {"region": "eu", "tier": 2}})
    assert narrowed == {"values": {"region": "eu", "port": "8080", "greeting": "hi", "tier": "2"}}
    guest = Guest(api, narrowed, make_env())
    assert guest.fetch("get", b"region").data == b"eu"
    assert guest.fetch("get", b"tier").data == b"2"
    assert guest.fetch("get", b"greeting").data == b"hi"


def test_policy_without_values_changes_nothing():
    requested = {"values": {"region": "us"}}
    assert ConfigAPI().narrow(requested, {"rule": "r"}) == requested


def test_policy_with_unknown_keys_or_bad_values_is_a_config_error_naming_the_rule():
    api = ConfigAPI()
    with pytest.raises(ConfigError, match="unknown okra.config policy settings: names"):
        api.narrow({}, {"names": ["X"], "rule": "r"})
    with pytest.raises(ConfigError, match="pin-it: okra.config values: 'x' is a list"):
        api.narrow({}, {"values": {"x": [1]}, "rule": "pin-it"})


def test_many_threads_read_at_once():
    values = {f"k{i}": f"v{i}" for i in range(50)}
    api, env = ConfigAPI(), make_env()
    errors = []

    def reader(i: int) -> None:
        guest = Guest(api, {"values": values}, env)
        for _ in range(500):
            guest.memory.reset()
            result = guest.fetch("get", f"k{i}".encode())
            if result.data != f"v{i}".encode():
                errors.append(result)

    run_threads([lambda i=i: reader(i) for i in range(8)])
    assert errors == []
