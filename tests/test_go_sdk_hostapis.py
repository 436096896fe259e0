# Guest contract of the Go SDK's host API wrappers: the SDK compiles, and each wrapper
# works against the real host functions, in a real Runtime.
#
# One Go guest (tests/fixtures/go/hostapis, built once per session) has a method per
# host API that drives the SDK's wrapper as a service would and reports what the SDK
# returned (value, or *okra.Error code and message, and errors.Is results). It also
# implements inventory.v1.Inventory, which it calls through its generated client. Each
# test deploys it into a fresh Runtime (wasmtime, a FakeClock, a sqlite state store and a
# `dir` secrets provider in temporary directories, okra.config overridden at deploy) and
# a real HTTP server on 127.0.0.1 answers okra.http. A test whose host API plugin has
# not landed is skipped by pytest.importorskip naming the module.
#
# Test plan
# - okra.state: Set/Get/Delete round trip with binary keys and values and growing
#   versions; SetString; values larger than the SDK's result buffer (fetched with
#   okra.abi.take) and a buffer grown for the next one; CompareAndSet only on the
#   expected version (0 = absent), a mismatch is Aborted with errors.Is(err,
#   ErrVersionMismatch) and names the current version; Increment counts, a non-integer
#   is FailedPrecondition with errors.Is(err, ErrNotAnInteger); from two instances at
#   once, 40 increments give 1..40 and of 20 racing CompareAndSets exactly one wins; a
#   TTL expires on the runtime's clock; a negative TTL is refused by the SDK; List pages
#   with a cursor and All walks every page in key order; Increment, Set, SetString,
#   Delete, Now and Monotonic allocate nothing.
# - okra.call: the generated client calls the dependency and decodes its answer; the
#   zero-value client works; okra.Invoke with raw bytes; metadata set with WithMetadata
#   reaches the callee (lower-cased) along with the incoming trace context; the callee's
#   error comes back with its code and message; WithTimeout, per call or given to the
#   client's constructor, bounds the callee; a timeout already passed fails at once; an
#   undeclared service is PermissionDenied saying what to add.
# - okra.time: Now and Monotonic are the runtime's (fake) clock, to the nanosecond.
# - okra.config: a value from okra.toml, one overridden at deploy, a missing one (found
#   false, ConfigOr's fallback).
# - okra.secrets: a granted secret, a rotated one seen at the next call, one larger than
#   the SDK's first buffer; an ungranted name is PermissionDenied, a granted name the
#   provider lacks is NotFound.
# - okra.http: Do with method, headers, body and a timeout; Get and Post helpers;
#   HeaderValue; a non-2xx status is a response, not an error; redirects followed by the
#   host (the final URL reported); a large response whole; a destination outside the
#   allow list is PermissionDenied; a timeout is DeadlineExceeded. net/http's Client over
#   okrahttp.Transport: the same exchange, and a denial wrapped in a *url.Error that
#   still carries the code.
# - okra.metrics: counter, gauge and histogram exported as okra_service_<name> with the
#   service label; wrong label count and negative counter increments refused by the
#   SDK, a bad name or a kind change by the host (InvalidArgument); recording
#   allocates nothing.
# - hostile host: results that do not parse (a ListResult, an HttpResponse, a state
#   value shorter than its version) are Internal errors in the guest, never a trap.
from __future__ import annotations

import asyncio
import http.server
import json
import logging
import socketserver
import threading
import time
import urllib.parse

import pytest

from okra_core import abi
from okra_core.clock import FakeClock
from okra_core.config import RuntimeConfig
from okra_core.hostapi import HostContext, HostFunction
from okra_core.plugins import get_registry
from okra_core.runtime import Runtime
from lang_go_support import build_guest, message_classes

pytestmark = pytest.mark.slow

SERVICE = "hostapis.v1.HostApis"
SERVICE_LABEL = f'service="{SERVICE}"'
CONFIG_AT_DEPLOY = {"greeting": "hi from deploy"}
BIG_SECRET = bytes(range(256)) * 400  # beyond the SDK's 256-byte first buffer


def needs(module: str) -> None:
    """Skip the test until the host API plugin `module` exists."""
    pytest.importorskip(module, reason=f"{module} (the host side of this API) has not landed yet")


# -- fixtures ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    return build_guest("hostapis", tmp_path_factory.mktemp("go"))


@pytest.fixture(scope="module")
def messages(package):
    return message_classes(package.descriptor_set)


@pytest.fixture(scope="module")
def engine_cache(tmp_path_factory):
    """Compiled once (the module is 11 MB with net/http), then loaded from this cache."""
    return tmp_path_factory.mktemp("engine-cache")


@pytest.fixture(scope="module")
def secrets_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("secrets")
    (directory / "API_TOKEN").write_bytes(b"s3cret-token")
    (directory / "BIG_KEY").write_bytes(BIG_SECRET)
    return directory


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture(params=["wasmtime", "wasm3"])
async def runtime(request, package, engine_cache, secrets_dir, clock, tmp_path):
    config = RuntimeConfig(
        engine=request.param,
        engine_options={"cache_dir": str(engine_cache / request.param)},
        data_dir=str(tmp_path / "data"),
        secrets_provider="dir",
        secrets_options={"path": str(secrets_dir)},
    )
    runtime = Runtime(config, clock=clock)
    await runtime.start()
    await runtime.deploy(package, config=CONFIG_AT_DEPLOY)
    yield runtime
    await runtime.close(grace=0)


async def call(runtime, messages, rpc: str, /, *, incoming=(), timeout=10.0, **fields):
    """Call HostApis/<rpc> with an <rpc>Request of `fields` (and `incoming` request
    metadata); the decoded reply."""
    request = messages(f"hostapis.v1.{rpc}Request")(**fields)
    out = await runtime.invoke(
        SERVICE, rpc, request.SerializeToString(), metadata=incoming, timeout=timeout
    )
    return messages(f"hostapis.v1.{rpc}Reply").FromString(out)


def ok(reply):
    assert (reply.code, reply.error) == (0, ""), f"failed: code {reply.code}: {reply.error}"
    return reply


# -- okra.state --------------------------------------------------------------------------


async def state(runtime, messages, op, key=b"k", **fields):
    return await call(runtime, messages, "State", op=op, key=key, **fields)


async def test_state_set_get_delete_round_trip(runtime, messages):
    needs("okra_plugins.hostapi_state")
    key, value = b"bin\x00\xffkey", bytes(range(256))
    assert not ok(await state(runtime, messages, "get", key)).found
    first = ok(await state(runtime, messages, "set", key, value=value)).version
    got = ok(await state(runtime, messages, "get", key))
    assert (got.found, got.value, got.version) == (True, value, first)
    second = ok(await state(runtime, messages, "set_string", key, value=b"text")).version
    assert second > first
    got = ok(await state(runtime, messages, "get", key))
    assert (got.value, got.version) == (b"text", second)
    assert ok(await state(runtime, messages, "delete", key)).existed
    assert not ok(await state(runtime, messages, "get", key)).found
    assert not ok(await state(runtime, messages, "delete", key)).existed


async def test_state_values_beyond_the_result_buffer_come_whole(runtime, messages):
    needs("okra_plugins.hostapi_state")
    for size in (10_000, 10_000, 300_000, 300_000, 5):  # grown buffer reused; too big to keep
        value = bytes(i % 251 for i in range(size))
        ok(await state(runtime, messages, "set", b"big", value=value))
        assert ok(await state(runtime, messages, "get", b"big")).value == value


async def test_compare_and_set_writes_only_over_the_expected_version(runtime, messages):
    needs("okra_plugins.hostapi_state")
    created = ok(await state(runtime, messages, "cas", expected=0, value=b"one")).version
    clash = await state(runtime, messages, "cas", expected=0, value=b"again")
    assert (clash.code, clash.version_mismatch, clash.not_an_integer) == (10, True, False)
    assert str(created) in clash.error  # says the current version
    updated = ok(await state(runtime, messages, "cas", expected=created, value=b"two")).version
    assert updated > created
    stale = await state(runtime, messages, "cas", expected=created, value=b"lost")
    assert (stale.code, stale.version_mismatch) == (10, True)
    assert ok(await state(runtime, messages, "get")).value == b"two"


async def test_increment_counts_and_refuses_a_value_that_is_not_an_integer(runtime, messages):
    needs("okra_plugins.hostapi_state")
    assert ok(await state(runtime, messages, "increment", b"n", delta=5)).number == 5
    assert ok(await state(runtime, messages, "increment", b"n", delta=-7)).number == -2
    assert ok(await state(runtime, messages, "get", b"n")).value == b"-2"
    ok(await state(runtime, messages, "set", b"text", value=b"abc"))
    refused = await state(runtime, messages, "increment", b"text", delta=1)
    assert (refused.code, refused.not_an_integer, refused.version_mismatch) == (9, True, False)


async def test_concurrent_increments_and_compare_and_sets_from_two_instances(runtime, messages):
    needs("okra_plugins.hostapi_state")
    counts = await asyncio.gather(*(state(runtime, messages, "increment", b"c", delta=1) for _ in range(40)))
    assert sorted(ok(r).number for r in counts) == list(range(1, 41))
    base = ok(await state(runtime, messages, "set", b"doc", value=b"v0")).version
    racers = await asyncio.gather(
        *(state(runtime, messages, "cas", b"doc", expected=base, value=b"v%d" % i) for i in range(20))
    )
    winners = [r for r in racers if r.code == 0]
    assert len(winners) == 1
    assert all(r.version_mismatch for r in racers if r.code != 0)
    assert ok(await state(runtime, messages, "get", b"doc")).version == winners[0].version


async def test_a_ttl_expires_on_the_runtimes_clock(runtime, messages, clock):
    needs("okra_plugins.hostapi_state")
    ok(await state(runtime, messages, "set", b"session", value=b"x", ttl_ms=1000))
    ok(await state(runtime, messages, "increment", b"hits", delta=1, ttl_ms=1000))
    ok(await state(runtime, messages, "set", b"forever", value=b"y"))
    clock.advance(0.5)
    assert ok(await state(runtime, messages, "get", b"session")).found
    clock.advance(1.0)
    assert not ok(await state(runtime, messages, "get", b"session")).found
    assert not ok(await state(runtime, messages, "get", b"hits")).found
    assert ok(await state(runtime, messages, "get", b"forever")).found


async def test_a_negative_ttl_is_refused_by_the_sdk(runtime, messages):
    needs("okra_plugins.hostapi_state")
    refused = await state(runtime, messages, "set", value=b"x", ttl_ms=-5)
    assert refused.code == 3 and "negative" in refused.error
    assert not ok(await state(runtime, messages, "get")).found


async def test_list_pages_with_a_cursor_and_all_walks_every_page(runtime, messages):
    needs("okra_plugins.hostapi_state")
    keys = [f"p/{i:03d}".encode() for i in range(250)]
    for key in reversed(keys):
        ok(await state(runtime, messages, "set", key, value=key.upper()))
    ok(await state(runtime, messages, "set", b"q/other", value=b"-"))

    pages, cursor = [], ""
    while True:
        page = ok(await state(runtime, messages, "list", prefix="p/", cursor=cursor, limit=100))
        pages.append([e.key for e in page.entries])
        if not page.next_cursor:
            break
        cursor = page.next_cursor
    assert [len(p) for p in pages] == [100, 100, 50]
    assert sum(pages, []) == keys

    every = ok(await state(runtime, messages, "all", prefix="p/")).entries
    assert [e.key for e in every] == keys
    assert all(e.value == e.key.upper() and e.version > 0 for e in every)
    assert ok(await state(runtime, messages, "all", prefix="none/")).entries == []


async def test_state_and_time_hot_paths_allocate_nothing_in_the_guest(runtime, messages):
    """Increment, SetString, Set with a TTL, Delete, Now and Monotonic."""
    needs("okra_plugins.hostapi_state")
    reply = ok(await state(runtime, messages, "allocs", b"hot", repeat=100))
    assert reply.mallocs == 0


# -- okra.call ---------------------------------------------------------------------------


def reserve(messages, **fields):
    return messages("inventory.v1.ReserveRequest")(**fields)


async def test_the_generated_client_calls_the_dependency(runtime, messages):
    reply = ok(await call(runtime, messages, "Call", mode="client", request=reserve(messages, sku="ada", count=3)))
    assert (reply.response.sku, reply.response.left) == ("ada", 7)
    zero = ok(await call(runtime, messages, "Call", mode="zero_client", request=reserve(messages, sku="bo")))
    assert zero.response.left == 10


async def test_invoke_calls_with_raw_bytes(runtime, messages):
    reply = ok(await call(runtime, messages, "Call", mode="raw", service="inventory.v1.Inventory",
                          method="Reserve", request=reserve(messages, sku="raw", count=1)))
    assert (reply.response.sku, reply.response.left) == ("raw", 9)


async def test_metadata_and_the_trace_context_reach_the_callee(runtime, messages):
    traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    reply = ok(await call(runtime, messages, "Call", mode="client", request=reserve(messages, sku="m"),
                          metadata=["X-Order=42", "x-tenant=acme"], incoming=[("traceparent", traceparent)]))
    received = set(reply.response.metadata)
    assert {"x-order=42", "x-tenant=acme", f"traceparent={traceparent}"} <= received


async def test_the_callees_error_comes_back_with_its_code_and_message(runtime, messages):
    reply = await call(runtime, messages, "Call", mode="client", request=reserve(messages, sku="ada", fail_code=5))
    assert (reply.code, reply.error) == (5, "inventory refuses ada")
    assert not reply.HasField("response")


@pytest.mark.parametrize("option", ["timeout_ms", "client_timeout_ms"])
async def test_a_timeout_bounds_the_callee(runtime, messages, option):
    started = time.monotonic()
    reply = await call(runtime, messages, "Call", mode="client",
                       request=reserve(messages, sku="slow", sleep_ms=1000), **{option: 200})
    assert reply.code == 4, reply.error  # DEADLINE_EXCEEDED
    assert time.monotonic() - started < 0.9


async def test_a_timeout_already_passed_fails_without_calling(runtime, messages):
    reply = await call(runtime, messages, "Call", mode="client", request=reserve(messages, sku="x"), timeout_ms=-1)
    assert reply.code == 4 and "already passed" in reply.error


async def test_an_undeclared_service_is_denied_saying_what_to_add(runtime, messages):
    reply = await call(runtime, messages, "Call", mode="raw", service=SERVICE, method="Time",
                       request=reserve(messages))
    assert reply.code == 7
    assert f'add "{SERVICE}" there' in reply.error


async def test_a_client_call_allocates_only_its_messages(runtime, messages):
    reply = ok(await call(runtime, messages, "Call", mode="allocs", request=reserve(messages, sku="a"), repeat=20))
    # the response struct, the copy Unmarshal decodes from, and what the callee's
    # answer needs; the request is encoded into a reused buffer
    assert reply.mallocs / 20 <= 4


# -- okra.time, okra.config, okra.secrets ------------------------------------------------


async def test_now_and_monotonic_are_the_runtimes_clock(runtime, messages, clock):
    needs("okra_plugins.hostapi_time")
    first = await call(runtime, messages, "Time")
    assert first.unix_nanos == clock.time_ns() == 1_700_000_000 * 10**9
    assert first.rfc3339 == "2023-11-14T22:13:20Z"
    clock.advance(1.5)
    second = await call(runtime, messages, "Time")
    assert second.monotonic_nanos - first.monotonic_nanos == 1_500_000_000
    clock.set(86_400 * 10**9 + 7)
    third = await call(runtime, messages, "Time")
    assert (third.unix_nanos, third.rfc3339) == (86_400 * 10**9 + 7, "1970-01-02T00:00:00.000000007Z")
    assert third.monotonic_nanos == second.monotonic_nanos  # setting the wall clock moves only it


async def test_config_values_from_okra_toml_and_from_the_deploy(runtime, messages):
    needs("okra_plugins.hostapi_config")
    retries = ok(await call(runtime, messages, "Config", name="retries", fallback="9"))
    assert (retries.value, retries.found, retries.value_or) == ("3", True, "3")
    greeting = ok(await call(runtime, messages, "Config", name="greeting"))
    assert (greeting.value, greeting.found) == ("hi from deploy", True)
    missing = ok(await call(runtime, messages, "Config", name="colour", fallback="blue"))
    assert (missing.value, missing.found, missing.value_or) == ("", False, "blue")


async def test_a_granted_secret_is_read_fresh_at_every_call(runtime, messages, secrets_dir):
    needs("okra_plugins.hostapi_secrets")
    reply = ok(await call(runtime, messages, "Secret", name="API_TOKEN"))
    assert (reply.value, reply.text) == (b"s3cret-token", "s3cret-token")
    big = ok(await call(runtime, messages, "Secret", name="BIG_KEY"))
    assert (big.value, big.text) == (BIG_SECRET, "")  # binary: no SecretString
    (secrets_dir / "API_TOKEN").write_bytes(b"rotated")
    try:
        assert ok(await call(runtime, messages, "Secret", name="API_TOKEN")).value == b"rotated"
    finally:
        (secrets_dir / "API_TOKEN").write_bytes(b"s3cret-token")


async def test_an_ungranted_secret_is_denied_and_a_missing_one_not_found(runtime, messages):
    needs("okra_plugins.hostapi_secrets")
    denied = await call(runtime, messages, "Secret", name="OTHER")
    assert denied.code == 7 and denied.value == b""
    missing = await call(runtime, messages, "Secret", name="MISSING")
    assert missing.code == 5


# -- okra.http ---------------------------------------------------------------------------


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        self.answer()

    def do_POST(self):
        self.answer()

    def do_PUT(self):
        self.answer()

    def answer(self):
        url = urllib.parse.urlsplit(self.path)
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if url.path == "/redirect":
            return self.send(302, b"", [("Location", "/echo?from=redirect")])
        if url.path.startswith("/status/"):
            return self.send(int(url.path.rsplit("/", 1)[1]), b"teapot", [("Content-Type", "text/plain")])
        if url.path == "/big":
            return self.send(200, b"x" * int(urllib.parse.parse_qs(url.query)["n"][0]), [])
        if url.path == "/slow":
            time.sleep(2)
            return self.send(200, b"late", [])
        echo = {
            "method": self.command, "path": self.path, "body": body.decode("latin-1"),
            "headers": {k.lower(): v for k, v in self.headers.items()},
        }
        self.send(200, json.dumps(echo).encode(), [("Content-Type", "application/json"), ("X-Echo", "1"), ("X-Echo", "2")])

    def send(self, status, body, headers):
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True


@pytest.fixture(scope="module")
def web():
    server = Server(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(5)


async def fetch(runtime, messages, mode, url, **fields):
    return await call(runtime, messages, "Http", mode=mode, url=url, **fields)


async def test_http_do_sends_method_headers_body_and_reads_the_response(runtime, messages, web):
    needs("okra_plugins.hostapi_http")
    reply = ok(await fetch(runtime, messages, "do", f"{web}/echo?q=1", method="PUT",
                           headers=["X-Test=yes", "Accept=application/json"], body=b"payload\x00", timeout_ms=3000))
    assert (reply.status, reply.url, reply.content_type) == (200, f"{web}/echo?q=1", "application/json")
    echo = json.loads(reply.body)
    assert (echo["method"], echo["path"], echo["body"]) == ("PUT", "/echo?q=1", "payload\x00")
    assert echo["headers"]["x-test"] == "yes"
    assert [h.lower() for h in reply.headers if h.lower().startswith("x-echo=")] == ["x-echo=1", "x-echo=2"]


async def test_http_get_and_post_helpers(runtime, messages, web):
    needs("okra_plugins.hostapi_http")
    got = json.loads(ok(await fetch(runtime, messages, "get", f"{web}/echo")).body)
    assert (got["method"], got["body"]) == ("GET", "")
    posted = json.loads(ok(await fetch(runtime, messages, "post", f"{web}/echo", body=b"{}",
                                       content_type="application/json")).body)
    assert (posted["method"], posted["body"], posted["headers"]["content-type"]) == ("POST", "{}", "application/json")


async def test_http_statuses_redirects_and_large_bodies(runtime, messages, web):
    needs("okra_plugins.hostapi_http")
    teapot = ok(await fetch(runtime, messages, "get", f"{web}/status/418"))
    assert (teapot.status, teapot.body, teapot.content_type) == (418, b"teapot", "text/plain")
    redirected = ok(await fetch(runtime, messages, "get", f"{web}/redirect"))
    assert redirected.url == f"{web}/echo?from=redirect"
    assert json.loads(redirected.body)["path"] == "/echo?from=redirect"
    big = ok(await fetch(runtime, messages, "get", f"{web}/big?n=300000"))
    assert big.body == b"x" * 300_000


async def test_http_denies_a_destination_outside_the_allow_list(runtime, messages, web):
    needs("okra_plugins.hostapi_http")
    elsewhere = web.replace("127.0.0.1", "localhost")
    denied = await fetch(runtime, messages, "get", f"{elsewhere}/echo")
    assert denied.code == 7 and "localhost" in denied.error


async def test_http_timeout_is_deadline_exceeded(runtime, messages, web):
    needs("okra_plugins.hostapi_http")
    started = time.monotonic()
    reply = await fetch(runtime, messages, "do", f"{web}/slow", timeout_ms=200)
    assert reply.code == 4, reply.error
    assert time.monotonic() - started < 1.8


async def test_net_http_client_over_okrahttp(runtime, messages, web):
    needs("okra_plugins.hostapi_http")
    reply = ok(await fetch(runtime, messages, "net_http", f"{web}/echo", method="POST",
                           headers=["X-Test=net"], body=b"via net/http", timeout_ms=3000))
    assert (reply.status, reply.content_type) == (200, "application/json")
    echo = json.loads(reply.body)
    assert (echo["method"], echo["body"], echo["headers"]["x-test"]) == ("POST", "via net/http", "net")
    assert {"X-Echo=1", "X-Echo=2"} <= set(reply.headers)  # canonicalised by net/http
    teapot = ok(await fetch(runtime, messages, "net_http", f"{web}/status/418", method="GET"))
    assert (teapot.status, teapot.body) == (418, b"teapot")
    denied = await fetch(runtime, messages, "net_http", web.replace("127.0.0.1", "localhost"), method="GET")
    assert (denied.code, denied.url_error) == (7, True)
    # A Host other than the URL's would reach another virtual host: refused in the guest.
    other_host = await fetch(runtime, messages, "net_http", f"{web}/echo", method="GET",
                             headers=["Host=internal.example"])
    assert (other_host.code, other_host.url_error) == (3, True)
    assert "does not allow overriding Host" in other_host.error


# -- okra.metrics ------------------------------------------------------------------------


def samples(runtime, family: str) -> dict[tuple, float]:
    from prometheus_client.parser import text_string_to_metric_families

    out = {}
    for f in text_string_to_metric_families(runtime.metrics.render()):
        if f.name == family:
            for s in f.samples:
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


async def metric(runtime, messages, kind, name, value=0.0, labels=(), values=(), **fields):
    return await call(runtime, messages, "Metric", kind=kind, name=name, value=value,
                      label_names=list(labels), label_values=list(values), **fields)


async def test_metrics_are_exported_with_the_service_label(runtime, messages):
    needs("okra_plugins.hostapi_metrics")
    ok(await metric(runtime, messages, "counter", "orders_total", 2.5, ["status"], ["paid"]))
    ok(await metric(runtime, messages, "inc", "orders_total", 0, ["status"], ["paid"]))
    ok(await metric(runtime, messages, "gauge", "queue_depth", 7))
    ok(await metric(runtime, messages, "histogram", "latency_seconds", 0.3, ["route"], ["/buy"]))
    labels = (("service", SERVICE), ("status", "paid"))
    assert samples(runtime, "okra_service_orders")[("okra_service_orders_total", labels)] == 3.5
    assert samples(runtime, "okra_service_queue_depth")[("okra_service_queue_depth", (("service", SERVICE),))] == 7
    histogram = samples(runtime, "okra_service_latency_seconds")
    route = (("route", "/buy"), ("service", SERVICE))
    assert histogram[("okra_service_latency_seconds_count", route)] == 1
    assert histogram[("okra_service_latency_seconds_sum", route)] == pytest.approx(0.3)


async def test_metric_mistakes_are_invalid_argument(runtime, messages):
    needs("okra_plugins.hostapi_metrics")
    wrong_count = await metric(runtime, messages, "counter", "a_total", 1, ["x", "y"], ["1"])
    assert wrong_count.code == 3 and "2 labels" in wrong_count.error  # the SDK's check
    negative = await metric(runtime, messages, "counter", "a_total", -1)
    assert negative.code == 3 and "only goes up" in negative.error  # the SDK's check
    assert (await metric(runtime, messages, "gauge", "Bad-Name", 1)).code == 3  # the host's
    ok(await metric(runtime, messages, "gauge", "kind_fixed", 1))
    assert (await metric(runtime, messages, "counter", "kind_fixed", 1)).code == 3


async def test_recording_a_metric_allocates_nothing_in_the_guest(runtime, messages):
    needs("okra_plugins.hostapi_metrics")
    reply = ok(await metric(runtime, messages, "counter", "hot_total", 1, ["route"], ["/x"], repeat=100))
    assert reply.mallocs == 0


# -- a hostile host ----------------------------------------------------------------------


def test_results_that_do_not_parse_are_internal_errors_not_traps(package, messages, engine_cache):
    """The SDK's decoders checked against a host that answers garbage (a fake host: the
    real ones never do), so a broken host API fails calls instead of trapping guests."""
    garbage = {
        ("okra.state", "list"): b"\x0a\xff\xff\xff\x0f",  # an entry longer than the result
        ("okra.state", "get"): b"\x01\x02\x03",  # shorter than a version
        ("okra.http", "fetch"): b"\x12\x05\x0a\x09abc",  # a header whose name overruns it
    }
    engine = get_registry().engine("wasmtime", cache_dir=str(engine_cache))
    module = engine.compile(package.wasm)
    context = HostContext(SERVICE, logging.getLogger(f"okra.service.{SERVICE}"))

    def host(spec):
        data = garbage.get((spec.module, spec.name))

        def impl(ctx, *args):
            if data is None:
                ctx.pending = b"not in this test"
                return -12
            return ctx.return_data(data, args[-2], args[-1])

        return HostFunction(spec.module, spec.name, spec.params, impl)

    functions = [
        host(spec) for spec in module.imports
        if spec.kind == "func" and spec.module.startswith("okra.") and spec.module != "okra.abi"
    ]
    instance = module.instantiate([*functions, *abi.abi_functions()], lambda fd, data: None, context)
    try:
        def invoke(method, **fields):
            request = messages(f"hostapis.v1.{method}Request")(**fields).SerializeToString()
            output, code, message = abi.decode_response(
                instance.handle(abi.encode_request(abi.request_prefix(SERVICE, method), request))
            )
            assert code == 0, message
            return messages(f"hostapis.v1.{method}Reply").FromString(output)

        listed = invoke("State", op="list", prefix="p")
        assert listed.code == 13 and "cannot parse okra.state.ListResult" in listed.error
        got = invoke("State", op="get", key=b"k")
        assert got.code == 13 and "fewer than a version" in got.error
        fetched = invoke("Http", mode="get", url="http://127.0.0.1/")
        assert fetched.code == 13 and "cannot parse okra.http.Header" in fetched.error
        # and the instance still serves
        assert invoke("State", op="delete", key=b"k").code == 12
    finally:
        instance.close()
