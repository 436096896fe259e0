# Metrics: the registry, its Prometheus text, the runtime's own call metrics, and the
# /metrics endpoint on the HTTP port.
#
# Test plan
# Registry (okra_core.metrics):
# - counters only go up; gauges set; histograms count into cumulative buckets with
#   _sum and _count; +Inf bucket equals the count.
# - a family's kind and label names are fixed: asking again with the same returns it,
#   with another kind or labels is a MetricError naming both.
# - wrong number of label values, invalid metric or label names ("le", "__x") refused.
# - max_series bounds the label combinations (hostile cardinality), existing ones
#   keep working.
# - label values and help text are escaped (quotes, backslashes, newlines).
# - concurrent increments from threads lose nothing.
# - remove_matching forgets the children of one label value.
# Runtime:
# - every unary call is counted by service, method and status code, and timed.
# - undeploying a service removes its call metrics and its okra.metrics series.
# HTTP:
# - GET /metrics on a real server (Server + connect transport) returns the text
#   format with the runtime's metrics; other paths are still routed to services.
import asyncio
import threading
import urllib.request

import pytest
import wasmtime

from okra_core.config import RuntimeConfig
from okra_core.manifest import PoolConfig
from okra_core.metrics import MetricError, Metrics
from okra_core.package import Package
from okra_core.runtime import Runtime
from okra_core.serve import Listener, Server
from okra_core.status import RpcError
from support import FIXTURES_DIR, compile_protos, make_manifest


def test_counters_gauges_and_histograms_render_in_prometheus_text():
    metrics = Metrics()
    calls = metrics.counter("app_calls_total", "Calls", ("method",))
    calls.labels("Get").inc()
    calls.labels("Get").inc(2)
    metrics.gauge("app_temperature", "Degrees").labels().set(-3.5)
    latency = metrics.histogram("app_seconds", "Latency", buckets=(0.1, 1.0))
    for value in (0.05, 0.1, 0.5, 7):
        latency.labels().observe(value)
    text = metrics.render()
    assert "# HELP app_calls_total Calls\n# TYPE app_calls_total counter\n" in text
    assert 'app_calls_total{method="Get"} 3\n' in text
    assert "app_temperature -3.5\n" in text
    assert 'app_seconds_bucket{le="0.1"} 2\n' in text
    assert 'app_seconds_bucket{le="1"} 3\n' in text
    assert 'app_seconds_bucket{le="+Inf"} 4\n' in text
    assert "app_seconds_count 4\n" in text
    assert "app_seconds_sum 7.65\n" in text


def test_counters_only_go_up_and_kinds_keep_their_operations():
    metrics = Metrics()
    counter = metrics.counter("c_total", "c").labels()
    with pytest.raises(MetricError, match="only goes up"):
        counter.inc(-1)
    with pytest.raises(MetricError, match="not a gauge"):
        counter.set(3)
    with pytest.raises(MetricError, match="not a histogram"):
        counter.observe(3)
    with pytest.raises(MetricError, match="observe it"):
        metrics.histogram("h", "h").labels().inc()


def test_a_family_keeps_its_kind_and_labels():
    metrics = Metrics()
    first = metrics.counter("x_total", "x", ("a",))
    assert metrics.counter("x_total", "x", ("a",)) is first
    with pytest.raises(MetricError, match=r"already a counter with labels \(a\); it cannot also be a gauge"):
        metrics.gauge("x_total", "x", ("a",))
    with pytest.raises(MetricError, match="cannot also be a counter with labels"):
        metrics.counter("x_total", "x", ("a", "b"))


@pytest.mark.parametrize(
    "make, fragment",
    [
        (lambda m: m.counter("9bad", "x"), "not a valid metric name"),
        (lambda m: m.counter("ok", "x", ("le",)), "not a valid label name"),
        (lambda m: m.counter("ok", "x", ("__reserved",)), "not a valid label name"),
        (lambda m: m.counter("ok", "x", ("a",)).labels(), "got 0 values"),
    ],
)
def test_invalid_names_and_label_counts_are_refused(make, fragment):
    with pytest.raises(MetricError, match=fragment):
        make(Metrics())


def test_max_series_bounds_label_combinations():
    family = Metrics().counter("guest_total", "g", ("user",), max_series=3)
    for user in ("a", "b", "c"):
        family.labels(user).inc()
    with pytest.raises(MetricError, match="already has 3 label combinations"):
        family.labels("d")
    family.labels("a").inc()  # existing series keep working
    assert family.series() == 3


def test_label_values_and_help_are_escaped():
    metrics = Metrics()
    metrics.counter("e_total", 'line\\one\nline two', ("v",)).labels('say "hi"\n\\').inc()
    text = metrics.render()
    assert "# HELP e_total line\\\\one\\nline two\n" in text
    assert 'e_total{v="say \\"hi\\"\\n\\\\"} 1\n' in text


def test_concurrent_increments_lose_nothing():
    child = Metrics().counter("n_total", "n").labels()

    def work():
        for _ in range(10_000):
            child.inc()

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert child.value == 40_000


def test_remove_matching_forgets_one_label_value():
    family = Metrics().counter("r_total", "r", ("service", "code"))
    family.labels("a", "OK").inc()
    family.labels("b", "OK").inc()
    family.remove_matching("service", "a")
    assert 'service="a"' not in "".join(family.lines())
    assert family.series() == 1


# -- the runtime's own metrics ---------------------------------------------------------

PROTO = """
syntax = "proto3";
package m.v1;
message Blob { bytes data = 1; string note = 2; }
service Echo { rpc Echo(Blob) returns (Blob); rpc Fail(Blob) returns (Blob); }
"""


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    descriptors = compile_protos(tmp_path_factory.mktemp("protos"), {"m/v1/m.proto": PROTO})
    wasm = wasmtime.wat2wasm((FIXTURES_DIR / "echo.wat").read_text())
    manifest = make_manifest(name="m", services=("m.v1.Echo",), host_apis={}, pool=PoolConfig(1, 2))
    return Package.from_parts(manifest=manifest, wasm=wasm, descriptor_set=descriptors)


async def test_unary_calls_are_counted_by_code_and_timed(tmp_path, package):
    runtime = Runtime(RuntimeConfig(engine_options={"cache_dir": str(tmp_path)}))
    await runtime.start()
    try:
        await runtime.deploy(package)
        for _ in range(3):
            await runtime.invoke("m.v1.Echo", "Echo", b"")
        with pytest.raises(RpcError):
            await runtime.invoke("m.v1.Echo", "Fail", b"")
        text = runtime.metrics.render()
        assert 'okra_calls_total{service="m.v1.Echo",method="Echo",code="OK"} 3' in text
        assert 'okra_calls_total{service="m.v1.Echo",method="Fail",code="FAILED_PRECONDITION"} 1' in text
        assert 'okra_call_seconds_count{service="m.v1.Echo"} 4' in text
    finally:
        await runtime.close()


async def test_metrics_are_served_on_the_http_port(tmp_path, package):
    server = Server(
        [package], [Listener("connect", "127.0.0.1", 0)],
        config=RuntimeConfig(engine_options={"cache_dir": str(tmp_path)}),
    )
    async with server:
        [(_, host, port)] = server.addresses
        await server.runtime.invoke("m.v1.Echo", "Echo", b"")

        def fetch(path):
            with urllib.request.urlopen(f"http://{host}:{port}{path}", timeout=5) as response:
                return response.headers["content-type"], response.read().decode()

        content_type, body = await asyncio.to_thread(fetch, "/metrics")
        assert content_type.startswith("text/plain; version=0.0.4")
        assert "# TYPE okra_calls_total counter" in body
        assert 'okra_calls_total{service="m.v1.Echo",method="Echo",code="OK"} 1' in body


async def test_an_undeployed_service_takes_its_metrics_with_it(tmp_path, package):
    from dataclasses import replace

    from hostapi_basic_support import Guest
    from okra_plugins.hostapi_metrics import MetricsAPI
    from test_hostapi_metrics import record_ok

    manifest = replace(package.manifest, host_apis={"okra.metrics": {}})
    with_metrics = Package.from_parts(manifest=manifest, wasm=package.wasm, descriptor_set=package.descriptor_set)
    runtime = Runtime(RuntimeConfig(engine_options={"cache_dir": str(tmp_path)}))
    await runtime.start()
    try:
        await runtime.deploy(with_metrics)
        await runtime.invoke("m.v1.Echo", "Echo", b"")
        guest = Guest(MetricsAPI(), {}, runtime.host_environment, service="m.v1.Echo")
        record_ok(guest, 1, "jobs_total", 2.0)
        assert 'okra_service_jobs_total{service="m.v1.Echo"} 2' in runtime.metrics.render()
        await runtime.undeploy("m")
        text = runtime.metrics.render()
        assert 'service="m.v1.Echo"' not in text
        # Its series budget is free again: a new deploy records from scratch.
        await runtime.deploy(with_metrics)
        record_ok(guest, 1, "jobs_total", 1.0)
        assert 'okra_service_jobs_total{service="m.v1.Echo"} 1' in runtime.metrics.render()
    finally:
        await runtime.close()
