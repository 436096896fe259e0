# Test plan: the okra.http host API (okra_plugins.hostapi_http) against real HTTP servers:
# two threaded http.server instances on free 127.0.0.1 ports, "allowed" (in the
# package's allow-list) and "other" (not, unless a test says so). Every fetch goes through
# okra_core.hostapi.call_host_function with a real HostContext over a bounds-checked
# bytearray memory, results fetched with the real okra.abi.take when they do not fit, and
# a HostEnvironment with real Metrics, Audit and SystemClock (state, secrets and invoke
# fail the test if touched).
# - round trips: GET with headers, POST with a body, HEAD, multi-valued and non-UTF-8
#   response headers; defaults (User-Agent, Accept-Encoding: identity) that the guest
#   may override; a name host (LOCALHOST.) made canonical and fetched; a result larger
#   than out_cap stays pending for okra.abi.take.
# - redirects: followed (relative and absolute), each hop re-checked: a redirect from the
#   allowed server to the other one is denied and audited, and the other server never
#   sees a request; 303 turns POST into GET without its body, 307 keeps both;
#   credentials are dropped when a redirect leaves the origin; a loop, or one redirect
#   more than max_redirects, is RESOURCE_EXHAUSTED; max_redirects hops succeed.
# - limits: a response over max_response_bytes is RESOURCE_EXHAUSTED (declared or
#   streamed without a length), one at the limit is returned whole; max_request_bytes
#   and max_url_bytes are checked before anything is sent; max_response_bytes above
#   the runtime-wide cap (64 MiB) fails the deploy, in a manifest or a policy rule.
# - time: a slow server and a server that trickles its body are DEADLINE_EXCEEDED within
#   the timeout (one deadline for the whole exchange, not per read); the call's deadline
#   and the request's timeout_ms both bound it; a deadline already passed fails at once.
# - network: connection refused is UNAVAILABLE; many threads fetch at once; a named host
#   is resolved and reached with its name in Host; a resolver slower than the call's
#   deadline is DEADLINE_EXCEEDED at the deadline (the resolution is abandoned).
# - denials: audited (okra.audit record with url and method, Audit.denials, the
#   okra_denials_total metric) and PERMISSION_DENIED with the entry to add; an empty
#   allow-list says so; user info cannot smuggle a host; IPv4 as one number is denied.
# - hostile input: malformed HttpRequest bytes, pointers outside memory (request and
#   result), negative lengths, bad methods, headers the host owns, header injection
#   (CR/LF): INVALID_ARGUMENT and no request sent. A length of -1 as the built-in
#   engines deliver it (unsigned, 0xFFFFFFFF): req_len is RESOURCE_EXHAUSTED (over
#   max_request_bytes), out_cap INVALID_ARGUMENT (outside memory).
# - policy: allowed by the manifest but not by a policy rule -> denied naming the rule;
#   a policy's lower max_response_bytes applies. Through the runtime's own grant path
#   (okra_core.grants.grant, a Policy parsed from TOML): the granted fetch obeys the
#   rule; a rule allowing nothing a manifest entry asks for fails the deploy naming
#   both; the offline check of `okra build` opens no connection pool; a manifest
#   setting policy_allow (the key narrow writes) is refused at grant time.
# - plugin: registered through register_host_apis, listed in DEFAULT_PLUGINS, blocking.
# - asyncio: a fetch in flight on a worker thread never blocks an event loop: the server
#   answers only after the loop has run 20 more ticks.
import asyncio
import contextlib
import json
import logging
import socket
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import tomllib

import pluggy
import pytest

import okra_plugins.hostapi_http as hostapi_http
from okra_core import hookspecs
from okra_core.abi import abi_functions
from okra_core.audit import Audit
from okra_core.clock import SystemClock
from okra_core.config import RuntimeConfig
from okra_core.errors import CapabilityError, ConfigError, DeployError
from okra_core.grants import grant
from okra_core.hostapi import HostContext, HostEnvironment, call_host_function
from okra_core.metrics import Metrics
from okra_core.plugins import DEFAULT_PLUGINS, Registry, make_plugin_manager
from okra_core.policy import Policy
from okra_core.status import StatusCode
from okra_plugins.hostapi_http import HttpAPI
from okra_plugins.hostapi_http._messages import HttpRequest, decode_response, encode_request
from hostapi_basic_support import ByteMemory
from support import make_manifest

SERVICE = "shop.v1.Orders"
REQ_PTR = 0
OUT_PTR = 64 * 1024
MEMORY_SIZE = 1024 * 1024

# -- real servers ----------------------------------------------------------------------


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        parts = urllib.parse.urlsplit(self.path)
        query = {k: v[0] for k, v in urllib.parse.parse_qs(parts.query).items()}
        self.server.hits.append({
            "method": self.command, "path": self.path, "headers": list(self.headers.items()),
            "body": body,
        })
        route = parts.path.strip("/").split("/")
        getattr(self, "route_" + (route[0] or "echo"))(route[1:], query, body)

    do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = do_GET

    def reply(self, status=200, body=b"", headers=(), length=True):
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        if length:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def route_echo(self, route, query, body):
        data = {"method": self.command, "path": self.path,
                "headers": [[k.lower(), v] for k, v in self.headers.items()],
                "body": body.decode("latin-1")}
        self.reply(200, json.dumps(data).encode(), [("Content-Type", "application/json")])

    def route_redirect(self, route, query, body):
        self.reply(int(query.get("code", 302)), b"moved", [("Location", query["to"])])

    def route_long(self, route, query, body):
        self.reply(302, b"", [("Location", "/" + "a" * int(query["n"]))])

    def route_loop(self, route, query, body):
        self.reply(302, b"", [("Location", "/loop")])

    def route_chain(self, route, query, body):
        n = int(route[0])
        if n == 0:
            self.reply(200, b"done")
        else:
            self.reply(301, b"", [("Location", f"/chain/{n - 1}")])

    def route_big(self, route, query, body):
        n = int(query["n"])
        with contextlib.suppress(OSError):
            if query.get("declare") == "1":
                self.send_response(200)
                self.send_header("Content-Length", str(n))
            else:  # no length: the body ends when the connection closes
                self.send_response(200)
                self.send_header("Connection", "close")
                self.close_connection = True
            self.end_headers()
            for start in range(0, n, 65536):
                self.wfile.write(b"x" * min(65536, n - start))

    def route_slow(self, route, query, body):
        self.server.stopping.wait(float(query["delay"]))
        with contextlib.suppress(OSError):
            self.reply(200, b"late")

    def route_trickle(self, route, query, body):
        n, interval = int(query["n"]), float(query["interval"])
        with contextlib.suppress(OSError):
            self.send_response(200)
            self.send_header("Content-Length", str(n))
            self.end_headers()
            for _ in range(n):
                if self.server.stopping.wait(interval):
                    return
                self.wfile.write(b"t")
                self.wfile.flush()

    def route_wait(self, route, query, body):
        released = self.server.release.wait(10)
        self.reply(200, b"released" if released else b"never released")

    def route_multi(self, route, query, body):
        self.send_response(200)
        self.send_header("Set-Cookie", "a=1")
        self.send_header("Set-Cookie", "b=2")
        self.end_headers()
        self.wfile.write(b"")

    def route_latin1(self, route, query, body):
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def send_header(self, keyword, value):
        super().send_header(keyword, value)

    def end_headers(self):
        if self.path.startswith("/latin1"):
            self._headers_buffer.append(b"X-Name: caf\xe9\r\n")
        if self.path.startswith("/multi"):
            self._headers_buffer.append(b"Content-Length: 0\r\n")
        super().end_headers()


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), Handler)
        self.hits: list[dict] = []
        self.stopping = threading.Event()
        self.release = threading.Event()
        self.thread = threading.Thread(target=self.serve_forever, args=(0.02,), daemon=True)
        self.thread.start()

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def handle_error(self, request, client_address):
        pass  # clients that hang up early are part of the tests

    def stop(self):
        self.stopping.set()
        self.release.set()
        self.shutdown()
        self.server_close()


@pytest.fixture
def allowed():
    server = Server()
    yield server
    server.stop()


@pytest.fixture
def other():
    server = Server()
    yield server
    server.stop()


# -- guest side ------------------------------------------------------------------------


def must_not_be_used(*args, **kwargs):
    pytest.fail("okra.http used a part of the environment it has no business with")


class Guest:
    """One instance of a package that imports okra.http.fetch."""

    def __init__(self, api: HttpAPI | None, config: dict, env: HostEnvironment, fn=None):
        (self.fn,) = api.functions(config, env) if fn is None else (fn,)
        self.take = abi_functions()[0]
        self.ctx = HostContext(SERVICE, logging.getLogger(f"okra.service.{SERVICE}"))
        self.ctx.memory = ByteMemory(MEMORY_SIZE)

    def call(self, request: bytes, *, out_cap: int = MEMORY_SIZE - OUT_PTR,
             req_ptr: int = REQ_PTR, req_len: int | None = None, out_ptr: int = OUT_PTR):
        """(rc, result bytes or error message) as the guest would see them."""
        self.ctx.memory.write(REQ_PTR, request)
        length = len(request) if req_len is None else req_len
        rc = call_host_function(self.fn, self.ctx, [req_ptr, length, out_ptr, out_cap])
        if rc < 0:
            return rc, self.ctx.pending.decode()
        if rc <= out_cap:
            return rc, self.ctx.memory.read(out_ptr, rc)
        assert call_host_function(self.take, self.ctx, [OUT_PTR, rc]) == rc
        return rc, self.ctx.memory.read(OUT_PTR, rc)

    def fetch(self, url: str, method: str = "GET", headers=(), body: b"" = b"", timeout_ms: int = 0, **kw):
        request = encode_request(HttpRequest(method, url, list(headers), body, timeout_ms))
        rc, result = self.call(request, **kw)
        return rc, (decode_response(result) if rc >= 0 else result)


@pytest.fixture
def api():
    api = HttpAPI()
    yield api
    api.close()


@pytest.fixture
def metrics():
    return Metrics()


@pytest.fixture
def env(metrics):
    return HostEnvironment(
        clock=SystemClock(), metrics=metrics, audit=Audit(metrics),
        state=must_not_be_used, secrets=must_not_be_used, invoke=must_not_be_used,
    )


@pytest.fixture
def guest_for(api, env):
    def make(*allow: str, **settings) -> Guest:
        return Guest(api, {"allow": list(allow), **settings}, env)

    return make


def echo(response) -> dict:
    assert response.status == 200, response
    return json.loads(response.body)


def ok(result):
    rc, response = result
    assert rc >= 0, response
    return response


def error(result, code: StatusCode) -> str:
    rc, message = result
    assert rc == -code, (rc, message)
    return message


# -- round trips -----------------------------------------------------------------------


def test_get_sends_the_guests_headers_and_returns_status_headers_body_and_url(allowed, guest_for):
    guest = guest_for(allowed.origin)
    response = ok(guest.fetch(f"{allowed.origin}/echo?q=1", headers=[("X-Trace", "abc"), ("Accept", "text/plain")]))
    seen = echo(response)
    assert seen["method"] == "GET" and seen["path"] == "/echo?q=1"
    assert ["x-trace", "abc"] in seen["headers"] and ["accept", "text/plain"] in seen["headers"]
    assert ["user-agent", "okra-http"] in seen["headers"]
    assert ["accept-encoding", "identity"] in seen["headers"]
    assert ["host", allowed.origin.removeprefix("http://")] in seen["headers"]
    assert ("Content-Type", "application/json") in response.headers
    assert response.url == f"{allowed.origin}/echo?q=1"


def test_post_sends_the_body_with_its_length_and_the_guest_may_override_defaults(allowed, guest_for):
    guest = guest_for(allowed.origin)
    body = bytes(range(256)) * 10
    seen = echo(ok(guest.fetch(f"{allowed.origin}/echo", "post", [("User-Agent", "shop/1")], body)))
    assert seen["method"] == "POST" and seen["body"].encode("latin-1") == body
    assert ["content-length", str(len(body))] in seen["headers"]
    assert ["user-agent", "shop/1"] in seen["headers"]
    assert not any(name == "user-agent" and value == "okra-http" for name, value in seen["headers"])


def test_empty_method_means_get_and_head_returns_no_body(allowed, guest_for):
    guest = guest_for(allowed.origin)
    assert echo(ok(guest.fetch(f"{allowed.origin}/echo", method="")))["method"] == "GET"
    head = ok(guest.fetch(f"{allowed.origin}/echo", method="HEAD"))
    assert head.status == 200 and head.body == b"" and allowed.hits[-1]["method"] == "HEAD"


def test_repeated_and_non_utf8_response_headers_arrive_as_sent(allowed, guest_for):
    guest = guest_for(allowed.origin)
    multi = ok(guest.fetch(f"{allowed.origin}/multi"))
    assert [v for n, v in multi.headers if n == "Set-Cookie"] == ["a=1", "b=2"]
    latin = ok(guest.fetch(f"{allowed.origin}/latin1"))
    assert ("X-Name", "café") in latin.headers


def test_a_name_host_is_made_canonical_then_fetched(allowed, guest_for):
    port = allowed.server_address[1]
    guest = guest_for(f"http://localhost:{port}")
    response = ok(guest.fetch(f"http://LOCALHOST.:{port}/echo"))
    assert echo(response)["path"] == "/echo"
    assert response.url == f"http://localhost:{port}/echo"


def test_a_result_larger_than_out_cap_stays_pending_for_take(allowed, guest_for):
    guest = guest_for(allowed.origin)
    rc, response = guest.fetch(f"{allowed.origin}/big?n=5000&declare=1", out_cap=100)
    assert rc > 5000 and response.body == b"x" * 5000
    assert guest.ctx.pending is None


# -- redirects -------------------------------------------------------------------------


def redirect(server: Server, to: str, code: int = 302) -> str:
    return f"{server.origin}/redirect?" + urllib.parse.urlencode({"to": to, "code": code})


def test_redirects_are_followed_and_the_final_url_returned(allowed, guest_for):
    guest = guest_for(allowed.origin)
    response = ok(guest.fetch(redirect(allowed, "/echo?from=relative")))
    assert echo(response)["path"] == "/echo?from=relative"
    assert response.url == f"{allowed.origin}/echo?from=relative"
    response = ok(guest.fetch(redirect(allowed, f"{allowed.origin}/chain/2")))
    assert response.body == b"done" and response.url == f"{allowed.origin}/chain/0"


def test_a_redirect_to_a_destination_not_allowed_is_denied_and_never_sent(allowed, other, guest_for, caplog):
    guest = guest_for(allowed.origin)
    caplog.set_level(logging.WARNING, "okra.audit")
    message = error(guest.fetch(redirect(allowed, f"{other.origin}/echo?secret=1")), StatusCode.PERMISSION_DENIED)
    assert f"redirected to {other.origin}/echo, which is not allowed for {SERVICE}" in message
    assert f'add "{other.origin}" to allow in [host_apis."okra.http"] (okra.toml)' in message
    assert "secret" not in message
    assert other.hits == []
    (record,) = [r for r in caplog.records if r.name == "okra.audit"]
    assert record.okra_audit["url"] == f"{other.origin}/echo"
    assert record.okra_audit["redirected_from"] == f"{allowed.origin}/redirect"


def test_a_redirect_to_a_non_http_scheme_is_denied(allowed, guest_for, env):
    guest = guest_for(allowed.origin)
    message = error(guest.fetch(redirect(allowed, "file:///etc/passwd")), StatusCode.PERMISSION_DENIED)
    assert "only http and https" in message
    assert env.audit.denials(SERVICE) == {"okra.http": 1}


def test_303_turns_post_into_get_without_the_body_and_307_keeps_both(allowed, guest_for):
    guest = guest_for(allowed.origin)
    headers = [("Content-Type", "text/plain")]
    seen = echo(ok(guest.fetch(redirect(allowed, "/echo", 303), "POST", headers, b"payload")))
    assert seen["method"] == "GET" and seen["body"] == ""
    assert not any(name in ("content-type", "content-length") for name, _ in seen["headers"])
    seen = echo(ok(guest.fetch(redirect(allowed, "/echo", 307), "POST", headers, b"payload")))
    assert seen["method"] == "POST" and seen["body"] == "payload"
    assert ["content-type", "text/plain"] in seen["headers"]


def test_credentials_are_dropped_when_a_redirect_leaves_the_origin(allowed, other, guest_for):
    guest = guest_for(allowed.origin, other.origin)
    secret = [("Authorization", "Bearer s3cret"), ("Cookie", "session=1"), ("X-Other", "kept")]
    seen = echo(ok(guest.fetch(redirect(allowed, "/echo"), headers=secret)))
    assert ["authorization", "Bearer s3cret"] in seen["headers"]
    seen = echo(ok(guest.fetch(redirect(allowed, f"{other.origin}/echo"), headers=secret)))
    names = [name for name, _ in seen["headers"]]
    assert "authorization" not in names and "cookie" not in names and "x-other" in names


def test_a_redirect_loop_stops_at_max_redirects(allowed, guest_for):
    guest = guest_for(allowed.origin, max_redirects=3)
    message = error(guest.fetch(f"{allowed.origin}/loop"), StatusCode.RESOURCE_EXHAUSTED)
    assert "max_redirects = 3" in message
    assert len(allowed.hits) == 4
    assert ok(guest.fetch(f"{allowed.origin}/chain/3")).body == b"done"
    error(guest.fetch(f"{allowed.origin}/chain/4"), StatusCode.RESOURCE_EXHAUSTED)
    no_redirects = guest_for(allowed.origin, max_redirects=0)
    error(no_redirects.fetch(f"{allowed.origin}/chain/1"), StatusCode.RESOURCE_EXHAUSTED)


def test_a_redirect_to_an_unusable_location_is_unavailable(allowed, guest_for):
    guest = guest_for(allowed.origin, max_url_bytes=300)
    message = error(guest.fetch(redirect(allowed, "http://[::1/x")), StatusCode.UNAVAILABLE)
    assert "redirected to a URL okra.http cannot follow" in message
    message = error(guest.fetch(f"{allowed.origin}/long?n=400"), StatusCode.UNAVAILABLE)
    assert "longer than max_url_bytes (300)" in message


# -- limits ----------------------------------------------------------------------------


@pytest.mark.parametrize("declare", ["1", "0"])
def test_a_response_over_max_response_bytes_is_resource_exhausted_not_truncated(allowed, guest_for, declare):
    guest = guest_for(allowed.origin, max_response_bytes=100_000)
    message = error(guest.fetch(f"{allowed.origin}/big?n=5000000&declare={declare}"), StatusCode.RESOURCE_EXHAUSTED)
    assert "max_response_bytes (100000)" in message and "none of it is returned" in message
    assert guest.ctx.pending == message.encode()
    assert ok(guest.fetch(f"{allowed.origin}/big?n=100000&declare={declare}")).body == b"x" * 100_000


def test_request_and_url_limits_are_checked_before_anything_is_sent(allowed, guest_for):
    guest = guest_for(allowed.origin, max_request_bytes=1000, max_url_bytes=100)
    message = error(guest.fetch(f"{allowed.origin}/echo", "POST", body=b"x" * 1000), StatusCode.RESOURCE_EXHAUSTED)
    assert "max_request_bytes (1000)" in message
    message = error(guest.fetch(f"{allowed.origin}/echo?" + "q" * 100), StatusCode.INVALID_ARGUMENT)
    assert "max_url_bytes (100)" in message
    assert allowed.hits == []


# -- time ------------------------------------------------------------------------------


def timed(fn):
    start = time.monotonic()
    result = fn()
    return result, time.monotonic() - start


def test_a_slow_server_is_deadline_exceeded_within_the_request_timeout(allowed, guest_for):
    guest = guest_for(allowed.origin)
    result, elapsed = timed(lambda: guest.fetch(f"{allowed.origin}/slow?delay=5", timeout_ms=300))
    message = error(result, StatusCode.DEADLINE_EXCEEDED)
    assert "within 0.3 s (the request's timeout_ms)" in message
    assert 0.25 < elapsed < 1.5


def test_one_deadline_bounds_the_whole_exchange_not_each_read(allowed, guest_for):
    guest = guest_for(allowed.origin, timeout_seconds=0.6)
    # A byte every 0.2 s: no single read waits long, the whole body would take 4 s.
    result, elapsed = timed(lambda: guest.fetch(f"{allowed.origin}/trickle?n=20&interval=0.2"))
    message = error(result, StatusCode.DEADLINE_EXCEEDED)
    assert "timeout_seconds" in message
    assert 0.5 < elapsed < 1.5


def test_the_calls_deadline_bounds_the_fetch_and_a_passed_one_fails_at_once(allowed, guest_for):
    guest = guest_for(allowed.origin)
    guest.ctx.deadline = time.monotonic() + 0.3
    result, elapsed = timed(lambda: guest.fetch(f"{allowed.origin}/slow?delay=5", timeout_ms=5000))
    assert "the call's deadline" in error(result, StatusCode.DEADLINE_EXCEEDED)
    assert elapsed < 1.5
    guest.ctx.deadline = time.monotonic() - 1
    error(guest.fetch(f"{allowed.origin}/echo"), StatusCode.DEADLINE_EXCEEDED)
    # The slow request was sent (a busy server thread may log it late); the second never.
    waited = time.monotonic() + 10
    while not allowed.hits and time.monotonic() < waited:
        time.sleep(0.01)
    assert [hit["path"] for hit in allowed.hits] == ["/slow?delay=5"]


# -- network ---------------------------------------------------------------------------


def named_host(monkeypatch, name: str, delay: float = 0.0) -> None:
    """Make `name` resolve to 127.0.0.1, after `delay` seconds, as a slow DNS would."""
    real = socket.getaddrinfo

    def getaddrinfo(host, *args, **kwargs):
        if host == name:
            time.sleep(delay)
            return real("127.0.0.1", *args, **kwargs)
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


def test_a_named_host_is_resolved_then_reached_with_its_name(allowed, guest_for, monkeypatch):
    named_host(monkeypatch, "service.test")
    origin = allowed.origin.replace("127.0.0.1", "service.test")
    response = echo(ok(guest_for(origin).fetch(f"{origin}/echo")))
    assert ["host", origin.removeprefix("http://")] in response["headers"]


def test_name_resolution_is_bounded_by_the_calls_deadline(allowed, guest_for, monkeypatch):
    named_host(monkeypatch, "slow-dns.test", delay=3)
    origin = allowed.origin.replace("127.0.0.1", "slow-dns.test")
    guest = guest_for(origin)
    guest.ctx.deadline = time.monotonic() + 0.3
    result, elapsed = timed(lambda: guest.fetch(f"{origin}/echo", timeout_ms=10_000))
    error(result, StatusCode.DEADLINE_EXCEEDED)
    assert elapsed < 1.5




def test_connection_refused_is_unavailable(guest_for):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    guest = guest_for(f"http://127.0.0.1:{port}")
    message = error(guest.fetch(f"http://127.0.0.1:{port}/"), StatusCode.UNAVAILABLE)
    assert "cannot connect" in message


def test_many_threads_fetch_at_once_over_the_shared_pool(allowed, api, env):
    guests = [Guest(api, {"allow": [allowed.origin]}, env) for _ in range(8)]
    results = [None] * len(guests)

    def run(i):
        results[i] = [echo(ok(guests[i].fetch(f"{allowed.origin}/echo?g={i}&n={n}")))["path"] for n in range(5)]

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(guests))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert results == [[f"/echo?g={i}&n={n}" for n in range(5)] for i in range(len(guests))]


# -- denials ---------------------------------------------------------------------------


def test_a_denial_is_audited_counted_and_names_the_entry_to_add(other, guest_for, env, metrics, caplog):
    guest = guest_for("https://api.example.com")
    caplog.set_level(logging.WARNING, "okra.audit")
    message = error(guest.fetch(f"{other.origin}/orders?token=1", "post"), StatusCode.PERMISSION_DENIED)
    assert message == (
        f"okra.http: POST {other.origin}/orders is not allowed for {SERVICE}: "
        f'add "{other.origin}" to allow in [host_apis."okra.http"] (okra.toml)'
    )
    assert other.hits == []
    (record,) = [r for r in caplog.records if r.name == "okra.audit"]
    assert record.okra_audit == {
        "event": "denied", "service": SERVICE, "api": "okra.http",
        "reason": message.removeprefix("okra.http: "),
        "url": f"{other.origin}/orders", "method": "POST",
    }
    assert env.audit.denials(SERVICE) == {"okra.http": 1}
    assert f'okra_denials_total{{service="{SERVICE}",api="okra.http"}} 1' in metrics.render()


def test_an_empty_allow_list_allows_nothing_and_says_so(allowed, api, env):
    guest = Guest(api, {}, env)
    message = error(guest.fetch(f"{allowed.origin}/echo"), StatusCode.PERMISSION_DENIED)
    assert "allow list in [host_apis.\"okra.http\"] (okra.toml) is empty" in message
    assert f'add "{allowed.origin}"' in message and allowed.hits == []


def test_user_info_cannot_smuggle_a_host_and_is_never_sent(allowed, other, guest_for):
    guest = guest_for(allowed.origin)
    host = allowed.origin.removeprefix("http://")
    message = error(guest.fetch(f"http://{host}@{other.origin.removeprefix('http://')}/echo"), StatusCode.PERMISSION_DENIED)
    assert f'add "{other.origin}"' in message and other.hits == []
    message = error(guest.fetch(f"http://user:pw@{host}/echo"), StatusCode.INVALID_ARGUMENT)
    assert "Authorization header" in message and "pw" not in message
    assert allowed.hits == []


def test_ipv4_written_as_one_number_is_denied_even_when_it_means_an_allowed_address(allowed, guest_for, env):
    guest = guest_for(allowed.origin)
    port = allowed.server_address[1]
    for host in ("2130706433", "0x7f.1", "127.1"):
        message = error(guest.fetch(f"http://{host}:{port}/echo"), StatusCode.PERMISSION_DENIED)
        assert "non-canonical" in message
    assert allowed.hits == [] and env.audit.denials(SERVICE) == {"okra.http": 3}


# -- hostile input ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"\xff\xff\xff",                      # truncated varint
        b"\x12\x10http://",                   # field longer than the message
        b"\x10\x05",                          # url as a varint
        b"\x12\x02\xc3\x28",                  # url not UTF-8
        b"\x28\x80\x80\x80\x80\x10",          # timeout_ms over uint32
        b"\x2a\x00",                          # timeout_ms length-delimited
        b"\x1a\x03\x08\x01\x00",              # a Header whose name is a varint
        b"\x1b",                              # a group
    ],
)
def test_malformed_http_requests_are_invalid_argument(allowed, guest_for, request_bytes):
    guest = guest_for(allowed.origin)
    rc, message = guest.call(request_bytes)
    assert rc == -StatusCode.INVALID_ARGUMENT and "malformed HttpRequest" in message
    assert allowed.hits == []


@pytest.mark.parametrize(
    ("args", "says"),
    [
        ({"req_ptr": MEMORY_SIZE - 4}, "is outside the guest"),
        ({"req_ptr": -8}, "is outside the guest"),
        ({"out_ptr": MEMORY_SIZE}, "is outside the guest"),
        ({"out_ptr": MEMORY_SIZE - 10, "out_cap": 100}, "is outside the guest"),
        ({"out_cap": -1}, "negative"),
        ({"req_len": -1}, "negative"),
    ],
)
def test_bad_guest_pointers_fail_before_anything_is_sent(allowed, guest_for, args, says):
    guest = guest_for(allowed.origin)
    request = encode_request(HttpRequest("GET", f"{allowed.origin}/echo"))
    rc, message = guest.call(request, **args)
    assert rc == -StatusCode.INVALID_ARGUMENT and says in message
    assert allowed.hits == []


def test_a_length_of_minus_one_as_engines_deliver_it(allowed, guest_for):
    """i32 arguments arrive unsigned: the guest's -1 is 4294967295."""
    guest = guest_for(allowed.origin)
    request = encode_request(HttpRequest("GET", f"{allowed.origin}/echo"))
    rc, message = guest.call(request, req_len=0xFFFFFFFF)
    assert rc == -StatusCode.RESOURCE_EXHAUSTED and "max_request_bytes" in message
    rc, message = guest.call(request, out_cap=0xFFFFFFFF)
    assert rc == -StatusCode.INVALID_ARGUMENT and "is outside the guest" in message
    assert allowed.hits == []


@pytest.mark.parametrize(
    ("method", "headers", "says"),
    [
        ("TRACE", [], "not one of"),
        ("CONNECT", [], "not one of"),
        ("GET", [("Host", "evil.com")], "set by okra.http itself"),
        ("GET", [("Transfer-Encoding", "chunked")], "set by okra.http itself"),
        ("GET", [("connection", "upgrade")], "set by okra.http itself"),
        ("POST", [("Content-Length", "1")], "set by okra.http itself"),
        ("GET", [("X-A", "1\r\nHost: evil.com")], "line break"),
        ("GET", [("X-A\r\nHost", "evil.com")], "not a valid header name"),
        ("GET", [("", "x")], "not a valid header name"),
    ],
)
def test_bad_methods_and_headers_are_invalid_argument(allowed, guest_for, method, headers, says):
    guest = guest_for(allowed.origin)
    assert says in error(guest.fetch(f"{allowed.origin}/echo", method, headers), StatusCode.INVALID_ARGUMENT)
    assert allowed.hits == []


@pytest.mark.parametrize("url", ["", "/echo", "http://[::1/", "http://127.0.0.1:99999/"])
def test_malformed_urls_are_invalid_argument(allowed, guest_for, env, url):
    guest = guest_for(allowed.origin)
    error(guest.fetch(url), StatusCode.INVALID_ARGUMENT)
    assert env.audit.denials() == {}


# -- settings and policy ---------------------------------------------------------------


def test_settings_are_checked_when_the_functions_are_built(api, env):
    with pytest.raises(ConfigError, match=r"unknown okra.http settings.*known: allow, timeout_seconds"):
        api.functions({"allow": [], "alow": []}, env)
    with pytest.raises(ConfigError, match="scheme://host"):
        api.functions({"allow": ["https://api.example.com/v1"]}, env)


def test_max_response_bytes_is_capped_at_64_mib(api, env):
    api.functions({"allow": [], "max_response_bytes": "64MiB"}, env)
    with pytest.raises(ConfigError, match=r"max_response_bytes '65MiB' is not a size between 1 byte and 64 MiB.*at most 64 MiB"):
        api.functions({"allow": [], "max_response_bytes": "65MiB"}, env)
    with pytest.raises(ConfigError, match="at most 64 MiB"):
        api.narrow({}, {"rule": "r", "max_response_bytes": "1GiB"})


def test_a_policy_rule_denies_what_the_manifest_allows_naming_the_rule(allowed, other, api, env):
    requested = {"allow": ["http://127.0.0.1:*"]}
    settings = api.narrow(requested, {"rule": "egress", "allow": [allowed.origin], "max_response_bytes": 1000})
    guest = Guest(api, settings, env)
    assert ok(guest.fetch(f"{allowed.origin}/echo")).status == 200
    message = error(guest.fetch(f"{other.origin}/echo"), StatusCode.PERMISSION_DENIED)
    assert f"{other.origin}/echo is not allowed for {SERVICE} by policy rule 'egress'" in message
    assert f'add "{other.origin}" to the allow list of policy rule \'egress\'' in message
    assert other.hits == []
    assert env.audit.denials(SERVICE) == {"okra.http": 1}
    error(guest.fetch(f"{allowed.origin}/big?n=2000&declare=1"), StatusCode.RESOURCE_EXHAUSTED)
    # A redirect is checked against the policy too.
    message = error(guest.fetch(redirect(allowed, f"{other.origin}/echo")), StatusCode.PERMISSION_DENIED)
    assert "policy rule 'egress'" in message and other.hits == []


@pytest.fixture
def plugins():
    registry = Registry(make_plugin_manager(entrypoints=False))
    yield registry
    registry.host_api("okra.http").close()


def with_policy(text: str) -> RuntimeConfig:
    return RuntimeConfig(policy=Policy.parse(tomllib.loads(text), source="policy.toml"))


def test_through_the_grant_path_the_granted_fetch_obeys_the_policy_rule(allowed, other, plugins, env):
    config = with_policy(f'''
[[rule]]
name = "egress"
services = ["greeter.v1.*"]
[rule.host_apis."okra.http"]
allow = ["{allowed.origin}"]
timeout_seconds = 2
''')
    manifest = make_manifest(host_apis={"okra.http": {"allow": ["http://127.0.0.1:*"], "timeout_seconds": 30}})
    grants = grant(manifest, plugins, config, env)
    assert grants.settings["okra.http"]["timeout_seconds"] == 2
    guest = Guest(None, {}, env, fn=grants.functions["okra.http.fetch"])
    assert ok(guest.fetch(f"{allowed.origin}/echo")).status == 200
    message = error(guest.fetch(f"{other.origin}/echo"), StatusCode.PERMISSION_DENIED)
    assert "by policy rule 'egress'" in message and other.hits == []


def test_through_the_grant_path_a_rule_allowing_nothing_an_entry_needs_fails_the_deploy(plugins, env):
    config = with_policy('''
[[rule]]
name = "egress"
[rule.host_apis."okra.http"]
allow = ["https://*.example.com"]
''')
    manifest = make_manifest(host_apis={"okra.http": {"allow": ["https://api.stripe.com"]}})
    with pytest.raises(CapabilityError) as info:
        grant(manifest, plugins, config, env)
    assert "'egress'" in str(info.value) and '"https://api.stripe.com"' in str(info.value)


def test_a_manifest_cannot_set_the_policy_allow_list_narrow_writes(plugins, env):
    manifest = make_manifest(host_apis={"okra.http": {
        "allow": ["https://*"], "policy_allow": [{"rule": "security-team", "allow": ["https://*"]}],
    }})
    with pytest.raises(DeployError, match=(
        r'policy_allow in \[host_apis."okra.http"\] is set by operator policy, not by a package'
    )):
        grant(manifest, plugins, RuntimeConfig(), env)


def test_the_offline_build_check_opens_no_connection_pool(plugins):
    manifest = make_manifest(host_apis={"okra.http": {"allow": ["https://api.example.com"]}})
    grants = grant(manifest, plugins, RuntimeConfig())
    assert set(grants.functions) == {"okra.http.fetch"}
    assert plugins.host_api("okra.http")._transport is None
    with pytest.raises(DeployError, match="max_redirects"):
        grant(make_manifest(host_apis={"okra.http": {"max_redirects": -1}}), plugins, RuntimeConfig())


# -- plugin ----------------------------------------------------------------------------


def test_registered_through_the_hook_and_listed_as_a_default_plugin(env):
    assert "okra_plugins.hostapi_http" in DEFAULT_PLUGINS
    pm = pluggy.PluginManager("okra")
    pm.add_hookspecs(hookspecs)
    pm.register(hostapi_http, name="okra_plugins.hostapi_http")
    api = Registry(pm).host_api("okra.http")
    assert isinstance(api, HttpAPI) and list(api.function_names()) == ["fetch"]
    (fn,) = api.functions({"allow": []}, env)
    assert (fn.qualified_name, fn.params, fn.blocking) == ("okra.http.fetch", ("i32",) * 4, True)
    api.close()


# -- asyncio ---------------------------------------------------------------------------


async def test_a_fetch_in_flight_on_a_worker_thread_never_blocks_the_event_loop(allowed, guest_for):
    guest = guest_for(allowed.origin)
    loop = asyncio.get_running_loop()
    # The server answers only once the loop has ticked 20 times after the fetch started:
    # the fetch can finish only if the loop keeps running while it is in flight.
    future = loop.run_in_executor(None, lambda: guest.fetch(f"{allowed.origin}/wait"))
    while not allowed.hits:
        await asyncio.sleep(0.005)
    gaps = []
    last = time.monotonic()
    for _ in range(20):
        await asyncio.sleep(0.01)
        now = time.monotonic()
        gaps.append(now - last)
        last = now
    assert not future.done()
    allowed.release.set()
    response = ok(await asyncio.wait_for(future, 10))
    assert response.body == b"released"
    assert max(gaps) < 0.2
