# Test plan: host API okra.metrics (okra_plugins.hostapi_metrics), called through
# call_host_function on a bytearray guest memory with a real HostEnvironment; what the
# guest records is read back from Metrics.render() with prometheus_client's parser.
# - registered by its plugin under "okra.metrics": record(req_ptr, req_len), non-blocking.
# - a counter adds, a gauge sets, a histogram observes (buckets, sum, count), each as
#   okra_service_<name>{service="<fq service>", <labels>} with the right TYPE.
# - labels given in another order on a later record reach the same series; two services
#   recording one name get a series each under their own service label; label values
#   with quotes, backslashes, newlines and non-ASCII text render and parse back.
# - refused with -3 INVALID_ARGUMENT (and nothing recorded): bad names (case, digit
#   first, dash, empty, too long), unknown kinds, negative or non-finite counters,
#   non-finite values of any kind, bad label names (syntax, reserved service/le/__x,
#   too long, duplicated), more than 8 labels, label values over 128 characters, a name
#   reused with another kind or another label set (the message says what it is), a
#   MetricRecord that does not parse (truncated, wrong wire types, invalid UTF-8), one
#   larger than MAX_RECORD_BYTES, bad pointers.
# - max_series: counted per service across all its families; at the limit a new series
#   is -8 RESOURCE_EXHAUSTED (message names max_series; one warning logged) while known
#   series still record; another service has its own budget; a second deploy of the
#   service does not reset it; forget_service removes its series and frees the budget;
#   a refused record creates no family.
# - a hostile guest recording 100k distinct label values cannot grow the host's memory
#   past max_series: the series count stays at the limit and the interpreter's
#   allocated blocks stay flat.
# - settings: max_series must be an int in 1..MAX_MAX_SERIES; unknown keys are errors;
#   policy max_series caps the manifest's (min), bad policy settings are errors.
# - concurrency: threads recording the same and new series at once: exact totals, and
#   never more series than max_series.
import gc
import logging
import math
import struct
import sys

import pytest
from prometheus_client.parser import text_string_to_metric_families

from hostapi_basic_support import Guest, make_env, registry, run_threads
from okra_core.abi import encode_varint
from okra_core.errors import ConfigError
from okra_core.metrics import DEFAULT_BUCKETS
from okra_core.status import StatusCode
from okra_plugins.hostapi_metrics import (
    MAX_MAX_SERIES,
    MAX_RECORD_BYTES,
    MetricsAPI,
    forget_service,
    series_book,
)

SERVICE = "shop.v1.Cart"
COUNTER, GAUGE, HISTOGRAM = 1, 2, 3


def field(number: int, payload: bytes) -> bytes:
    return encode_varint(number << 3 | 2) + encode_varint(len(payload)) + payload


def metric_record(kind: int, name: str, value: float, labels: dict[str, str] | list = ()) -> bytes:
    """A MetricRecord, encoded as the Go SDK's wire code does."""
    out = b"\x08" + encode_varint(kind) + field(2, name.encode()) + b"\x19" + struct.pack("<d", value)
    pairs = labels.items() if isinstance(labels, dict) else labels
    for label, label_value in pairs:
        out += field(4, field(1, label.encode()) + field(2, label_value.encode()))
    return out


def record(guest: Guest, data: bytes) -> int:
    ptr, length = guest.memory.put(data)
    code = guest.call("record", ptr, length)
    guest.memory.reset()
    return code


def record_ok(guest: Guest, kind: int, name: str, value: float, labels=()) -> None:
    code = record(guest, metric_record(kind, name, value, labels))
    assert code == 0, guest.error(code).message


def refused(guest: Guest, data: bytes):
    code = record(guest, data)
    assert code < 0, "the record was accepted"
    return guest.error(code)


def samples(env, name: str) -> dict[tuple, float]:
    """Samples of one family from the rendered text: (sample name, labels) -> value.

    `name` is the family's name as prometheus_client's parser gives it: a counter's
    without `_total` (its samples are named with it)."""
    out = {}
    for family in text_string_to_metric_families(env.metrics.render()):
        if family.name == name:
            for sample in family.samples:
                out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def family_type(env, name: str) -> str | None:
    for family in text_string_to_metric_families(env.metrics.render()):
        if family.name == name:
            return family.type
    return None


@pytest.fixture
def env():
    return make_env()


@pytest.fixture
def guest(env):
    return Guest(MetricsAPI(), {}, env, service=SERVICE)


def test_registered_by_its_plugin_as_one_non_blocking_function(env):
    api = registry().host_api("okra.metrics")
    assert isinstance(api, MetricsAPI)
    (function,) = api.functions({}, env)
    assert api.function_names() == ("record",)
    assert (function.namespace, function.name) == ("okra.metrics", "record")
    assert function.params == ("i32", "i32") and function.blocking is False


def test_counter_adds_and_renders_with_the_service_label(guest, env):
    record_ok(guest, COUNTER, "orders_total", 1, {"region": "eu"})
    record_ok(guest, COUNTER, "orders_total", 2.5, {"region": "eu"})
    record_ok(guest, COUNTER, "orders_total", 0, {"region": "us"})
    assert family_type(env, "okra_service_orders") == "counter"
    assert samples(env, "okra_service_orders") == {
        ("okra_service_orders_total", (("region", "eu"), ("service", SERVICE))): 3.5,
        ("okra_service_orders_total", (("region", "us"), ("service", SERVICE))): 0.0,
    }
    assert f'okra_service_orders_total{{service="{SERVICE}",region="eu"}} 3.5' in env.metrics.render()


def test_gauge_sets_including_negative_values(guest, env):
    record_ok(guest, GAUGE, "queue_depth", 7)
    record_ok(guest, GAUGE, "queue_depth", -2.25)
    assert family_type(env, "okra_service_queue_depth") == "gauge"
    assert samples(env, "okra_service_queue_depth") == {
        ("okra_service_queue_depth", (("service", SERVICE),)): -2.25,
    }


def test_histogram_observes_into_buckets_sum_and_count(guest, env):
    for value in (0.003, 0.2, 0.2, 7.0, 100.0):
        record_ok(guest, HISTOGRAM, "latency_seconds", value, {"method": "Add"})
    assert family_type(env, "okra_service_latency_seconds") == "histogram"
    got = samples(env, "okra_service_latency_seconds")
    base = (("method", "Add"), ("service", SERVICE))
    assert got[("okra_service_latency_seconds_count", base)] == 5
    assert got[("okra_service_latency_seconds_sum", base)] == pytest.approx(107.403)
    buckets = {
        float(dict(labels)["le"]): value
        for (name, labels), value in got.items() if name.endswith("_bucket")
    }
    assert buckets[0.005] == 1 and buckets[0.25] == 3 and buckets[5.0] == 3
    assert buckets[10.0] == 4 and buckets[math.inf] == 5
    assert set(buckets) == {*DEFAULT_BUCKETS, math.inf}


def test_labels_in_another_order_reach_the_same_series(guest, env):
    record_ok(guest, COUNTER, "hits_total", 1, [("a", "1"), ("b", "2")])
    record_ok(guest, COUNTER, "hits_total", 1, [("b", "2"), ("a", "1")])
    assert samples(env, "okra_service_hits") == {
        ("okra_service_hits_total", (("a", "1"), ("b", "2"), ("service", SERVICE))): 2.0,
    }
    assert series_book(env.metrics).count(SERVICE) == 1


def test_two_services_recording_one_name_get_a_series_each(env):
    api = MetricsAPI()
    cart, shop = Guest(api, {}, env, service=SERVICE), Guest(api, {}, env, service="shop.v1.Shop")
    record_ok(cart, COUNTER, "calls_total", 1, {"m": "x"})
    record_ok(shop, COUNTER, "calls_total", 5, {"m": "x"})
    assert samples(env, "okra_service_calls") == {
        ("okra_service_calls_total", (("m", "x"), ("service", SERVICE))): 1.0,
        ("okra_service_calls_total", (("m", "x"), ("service", "shop.v1.Shop"))): 5.0,
    }


def test_awkward_label_values_render_and_parse_back(guest, env):
    value = 'say "hi"\\n\nthere ✓ {},='
    record_ok(guest, GAUGE, "odd", 1, {"text": value})
    assert samples(env, "okra_service_odd") == {
        ("okra_service_odd", (("service", SERVICE), ("text", value))): 1.0,
    }


@pytest.mark.parametrize("name", ["Orders", "1st", "orders-total", "", "ordérs", "a:b", "x" * 129])
def test_bad_names_are_invalid_argument(guest, env, name):
    result = refused(guest, metric_record(COUNTER, name, 1))
    assert result.code == -StatusCode.INVALID_ARGUMENT
    assert "[a-z_][a-z0-9_]*" in result.message
    assert not [f for f in env.metrics.families() if f.name.startswith("okra_service_")]


def test_longest_name_is_accepted(guest, env):
    record_ok(guest, GAUGE, "x" * 128, 1)


@pytest.mark.parametrize(
    "kind, value, fragment",
    [
        (0, 1, "unknown metric kind 0"),
        (4, 1, "unknown metric kind 4"),
        (2**40, 1, "unknown metric kind"),
        (COUNTER, -1, "counter orders only goes up"),
        (COUNTER, -0.0001, "only goes up"),
        (COUNTER, math.inf, "not a finite number"),
        (COUNTER, math.nan, "not a finite number"),
        (GAUGE, -math.inf, "not a finite number"),
        (GAUGE, math.nan, "not a finite number"),
        (HISTOGRAM, math.inf, "not a finite number"),
    ],
)
def test_bad_kinds_and_values_are_invalid_argument(guest, env, kind, value, fragment):
    result = refused(guest, metric_record(kind, "orders", value))
    assert result.code == -StatusCode.INVALID_ARGUMENT
    assert fragment in result.message
    assert env.metrics.get("okra_service_orders") is None


@pytest.mark.parametrize(
    "labels, fragment",
    [
        ([("service", "evil")], "the label 'service' is set by the host"),
        ([("le", "1")], "label name 'le' is not valid"),
        ([("__name__", "x")], "label name '__name__' is not valid"),
        ([("a-b", "x")], "label name 'a-b' is not valid"),
        ([("1a", "x")], "label name '1a' is not valid"),
        ([("", "x")], "label name '' is not valid"),
        ([("n" * 65, "x")], "is not valid"),
        ([("a", "1"), ("a", "2")], "label 'a' is given twice"),
        ([(f"l{i}", "x") for i in range(9)], "has 9 labels; at most 8"),
        ([("path", "p" * 129)], "the value of label 'path' is 129 characters; at most 128"),
    ],
)
def test_bad_labels_are_invalid_argument(guest, env, labels, fragment):
    result = refused(guest, metric_record(COUNTER, "orders", 1, labels))
    assert result.code == -StatusCode.INVALID_ARGUMENT
    assert fragment in result.message
    assert env.metrics.get("okra_service_orders") is None


def test_eight_labels_and_128_character_values_are_accepted(guest, env):
    labels = {f"l{i}": "é" * 128 for i in range(8)}
    record_ok(guest, COUNTER, "wide", 1, labels)
    (labelnames,) = [f.labelnames for f in env.metrics.families() if f.name == "okra_service_wide"]
    assert labelnames == ("service", *labels)


def test_name_reused_with_another_kind_is_invalid_argument(guest, env):
    record_ok(guest, COUNTER, "jobs", 1, {"q": "a"})
    result = refused(guest, metric_record(GAUGE, "jobs", 1, {"q": "a"}))
    assert result.code == -StatusCode.INVALID_ARGUMENT
    assert "metric jobs is a counter with labels (q); this record is a gauge with labels (q)" in result.message
    assert family_type(env, "okra_service_jobs") == "counter"


@pytest.mark.parametrize("labels", [{}, {"q": "a", "r": "b"}, {"r": "a"}])
def test_name_reused_with_another_label_set_is_invalid_argument(guest, env, labels):
    record_ok(guest, COUNTER, "jobs", 1, {"q": "a"})
    result = refused(guest, metric_record(COUNTER, "jobs", 1, labels))
    assert result.code == -StatusCode.INVALID_ARGUMENT
    assert "is a counter with labels (q)" in result.message
    assert series_book(env.metrics).count(SERVICE) == 1


def test_another_service_cannot_redefine_a_name_either(env):
    api = MetricsAPI()
    record_ok(Guest(api, {}, env, service="a.v1.A"), HISTOGRAM, "t", 1)
    other = Guest(api, {}, env, service="b.v1.B")
    assert refused(other, metric_record(COUNTER, "t", 1)).code == -StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize(
    "data, fragment",
    [
        (metric_record(COUNTER, "ok", 1)[:-3], "truncated"),
        (b"\x0a\x05ab", "truncated"),
        (b"\x0a\x02ab", "kind must be a varint"),  # kind as length-delimited
        (b"\x10\x01", "name must be length-delimited"),
        (b"\x18\x01", "value must be a double"),
        (b"\x1d\x00\x00\x80\x3f", "value must be a double"),  # fixed32
        (field(2, b"\xff\xfe"), "name is not valid UTF-8"),
        (b"\x08\x01" + field(2, b"ok") + field(4, field(1, b"\xc3")), "label name is not valid UTF-8"),
        (b"\x08\x01" + field(2, b"ok") + field(4, field(2, b"\xc3")), "label value is not valid UTF-8"),
        (b"\x08\x01" + field(2, b"ok") + b"\x20\x01", "labels must be length-delimited"),
        (b"\x08\x01" + field(2, b"ok") + field(4, b"\x0a\x09x"), "truncated"),
        (b"\x00\x01", "field number 0"),
        (b"\x0b", "unsupported wire type 3"),
        (b"\x08\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01", "varint too long"),
    ],
)
def test_malformed_records_are_invalid_argument(guest, data, fragment):
    result = refused(guest, data)
    assert result.code == -StatusCode.INVALID_ARGUMENT
    assert result.message.startswith("malformed MetricRecord: ")
    assert fragment in result.message


def test_empty_record_is_an_unknown_kind(guest):
    assert "unknown metric kind 0" in refused(guest, b"").message


def test_unknown_fields_are_skipped(guest, env):
    record_ok_data = metric_record(GAUGE, "g", 3) + field(9, b"future") + b"\x50\x07"
    assert record(guest, record_ok_data) == 0
    assert samples(env, "okra_service_g") == {("okra_service_g", (("service", SERVICE),)): 3.0}


def test_oversized_record_is_refused_before_memory_is_read(guest):
    result = guest.error(guest.call("record", 10**9, MAX_RECORD_BYTES + 1))
    assert result.code == -StatusCode.INVALID_ARGUMENT
    assert f"at most {MAX_RECORD_BYTES} bytes" in result.message


@pytest.mark.parametrize("ptr, length", [(-1, 10), (64 * 1024 - 5, 10), (0, -1)])
def test_bad_pointers_are_invalid_argument(guest, ptr, length):
    result = guest.error(guest.call("record", ptr, length))
    assert result.code == -StatusCode.INVALID_ARGUMENT
    assert "outside the guest's" in result.message


def test_max_series_counts_every_family_of_the_service(env, caplog):
    guest = Guest(MetricsAPI(), {"max_series": 3}, env, service=SERVICE)
    record_ok(guest, COUNTER, "a", 1, {"k": "1"})
    record_ok(guest, COUNTER, "a", 1, {"k": "2"})
    record_ok(guest, GAUGE, "b", 1)
    with caplog.at_level(logging.WARNING):
        for labels in ({"k": "3"}, {"k": "4"}):
            result = refused(guest, metric_record(COUNTER, "a", 1, labels))
            assert result.code == -StatusCode.RESOURCE_EXHAUSTED
            assert "already has 3 metric series (max_series)" in result.message
        # A new family would be a new series too, and is not even created.
        assert refused(guest, metric_record(GAUGE, "c", 1)).code == -StatusCode.RESOURCE_EXHAUSTED
    assert env.metrics.get("okra_service_c") is None
    warnings = [r for r in caplog.records if "reached max_series" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].name == f"okra.service.{SERVICE}"
    # Known series still record.
    record_ok(guest, COUNTER, "a", 5, {"k": "1"})
    record_ok(guest, GAUGE, "b", 9)
    assert samples(env, "okra_service_a")[("okra_service_a_total", (("k", "1"), ("service", SERVICE)))] == 6


def test_each_service_has_its_own_budget(env):
    api = MetricsAPI()
    first = Guest(api, {"max_series": 1}, env, service="a.v1.A")
    second = Guest(api, {"max_series": 1}, env, service="b.v1.B")
    record_ok(first, COUNTER, "n", 1, {"k": "x"})
    assert refused(first, metric_record(COUNTER, "n", 1, {"k": "y"})).code == -StatusCode.RESOURCE_EXHAUSTED
    record_ok(second, COUNTER, "n", 1, {"k": "y"})


def test_redeploying_a_service_does_not_reset_its_budget(env):
    old = Guest(MetricsAPI(), {"max_series": 2}, env, service=SERVICE)
    record_ok(old, COUNTER, "n", 1, {"k": "1"})
    record_ok(old, COUNTER, "n", 1, {"k": "2"})
    new = Guest(MetricsAPI(), {"max_series": 2}, env, service=SERVICE)
    assert refused(new, metric_record(COUNTER, "n", 1, {"k": "3"})).code == -StatusCode.RESOURCE_EXHAUSTED
    record_ok(new, COUNTER, "n", 1, {"k": "1"})


def test_forget_service_removes_its_series_and_frees_its_budget(env):
    api = MetricsAPI()
    guest = Guest(api, {"max_series": 1}, env, service=SERVICE)
    other = Guest(api, {}, env, service="other.v1.O")
    record_ok(guest, COUNTER, "n", 1, {"k": "1"})
    record_ok(other, COUNTER, "n", 1, {"k": "1"})
    forget_service(env.metrics, SERVICE)
    assert samples(env, "okra_service_n") == {
        ("okra_service_n_total", (("k", "1"), ("service", "other.v1.O"))): 1.0,
    }
    record_ok(guest, COUNTER, "n", 1, {"k": "2"})
    assert series_book(env.metrics).count(SERVICE) == 1


def test_hostile_guest_with_100k_label_values_cannot_grow_memory_past_max_series(env):
    max_series = 1000
    guest = Guest(MetricsAPI(), {"max_series": max_series}, env, service=SERVICE)

    def hostile(i: int) -> int:
        return record(guest, metric_record(COUNTER, "requests", 1, {"user": f"user-{i:06d}-" + "x" * 100}))

    assert {hostile(i) for i in range(max_series)} == {0}
    family = env.metrics.get("okra_service_requests")
    assert family.series() == max_series
    # Warm up the refusal path (its one warning, caches), then count the interpreter's
    # allocated blocks across 99k more distinct values: each kept series would cost
    # several blocks (its label string, tuples, a child), so keeping any of them shows.
    assert hostile(max_series) == -StatusCode.RESOURCE_EXHAUSTED
    gc.collect()
    before = sys.getallocatedblocks()
    codes = {hostile(i) for i in range(max_series + 1, 100_000)}
    gc.collect()
    grown = sys.getallocatedblocks() - before
    assert codes == {-StatusCode.RESOURCE_EXHAUSTED}
    assert family.series() == max_series
    assert series_book(env.metrics).count(SERVICE) == max_series
    assert grown < 1000, f"{grown} more memory blocks after 99k refused records"
    assert len(env.metrics.render().splitlines()) < max_series + 50


def test_concurrent_records_are_exact_and_never_exceed_max_series(env):
    api = MetricsAPI()
    max_series = 50

    def worker(n: int) -> None:
        guest = Guest(api, {"max_series": max_series}, env, service=SERVICE)
        for i in range(400):
            code = record(guest, metric_record(COUNTER, "shared", 1))
            assert code == 0
            code = record(guest, metric_record(COUNTER, "spread", 1, {"k": f"{n}-{i}"}))
            assert code in (0, -StatusCode.RESOURCE_EXHAUSTED)
            guest.ctx.pending = None

    run_threads([lambda n=n: worker(n) for n in range(6)])
    got = samples(env, "okra_service_shared")
    assert got == {("okra_service_shared_total", (("service", SERVICE),)): 6 * 400.0}
    assert env.metrics.get("okra_service_spread").series() == max_series - 1
    assert series_book(env.metrics).count(SERVICE) == max_series


@pytest.mark.parametrize(
    "config, fragment",
    [
        ({"max_series": 0}, "max_series must be an integer from 1 to"),
        ({"max_series": -5}, "max_series must be an integer"),
        ({"max_series": MAX_MAX_SERIES + 1}, f"from 1 to {MAX_MAX_SERIES}"),
        ({"max_series": "100"}, "max_series must be an integer"),
        ({"max_series": 10.0}, "max_series must be an integer"),
        ({"max_series": True}, "max_series must be an integer"),
        ({"series": 5}, "unknown okra.metrics settings: series (known: max_series)"),
    ],
)
def test_invalid_settings_are_config_errors(env, config, fragment):
    with pytest.raises(ConfigError) as exc:
        MetricsAPI().functions(config, env)
    assert fragment in str(exc.value)


def test_policy_max_series_caps_the_manifests():
    api = MetricsAPI()
    assert api.narrow({}, {"rule": "r", "max_series": 100}) == {"max_series": 100}
    assert api.narrow({"max_series": 50}, {"rule": "r", "max_series": 100}) == {"max_series": 50}
    assert api.narrow({"max_series": 5000}, {"rule": "r", "max_series": 100}) == {"max_series": 100}
    assert api.narrow({"max_series": 5000}, {"rule": "r"}) == {"max_series": 5000}
    with pytest.raises(ConfigError, match="unknown okra.metrics policy settings: names"):
        api.narrow({}, {"rule": "r", "names": []})
    with pytest.raises(ConfigError, match="policy rule 'tight': okra.metrics: max_series must be"):
        api.narrow({}, {"rule": "tight", "max_series": 0})
