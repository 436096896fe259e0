"""Host API `okra.http`: outbound HTTP(S) requests to the destinations an allow-list
names (docs/host-apis/http.md).

Every destination, the first and each redirect's, must pass the package's allow-list and
every operator policy rule's. The fetch runs synchronously on the guest's worker thread
(the function is blocking), over one connection pool per API object, under one deadline
for the whole exchange. Nothing is taken from the environment (no proxies, no CA bundle
overrides), no cookies are kept, and the body is passed through as the server sent it
(no decompression in the host: a guest that asks for gzip decodes it itself).
"""

from __future__ import annotations

import contextlib
import re
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import httpcore
import httpx

from okra_core.hostapi import HostContext, HostEnvironment, HostError, HostFunction
from okra_core.status import StatusCode
from okra_plugins.hostapi_http._allowlist import (
    DEFAULT_PORTS, Destination, UrlRejected, allows, parse_url,
)
from okra_plugins.hostapi_http._deadline import DeadlineBackend, deadline
from okra_plugins.hostapi_http._messages import (
    HttpResponse, decode_request, encode_response,
)
from okra_plugins.hostapi_http._settings import (
    POLICY_ALLOW,
    WHERE,
    Settings,
    narrow,
    parse_settings,
)

NAMESPACE = "okra.http"
METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
#: Headers a guest may not set: hop-by-hop ones (they describe one connection, which the
#: host owns) and those the host derives from the URL and the body.
FORBIDDEN_HEADERS = frozenset({
    "host", "content-length", "transfer-encoding", "connection", "keep-alive",
    "proxy-connection", "proxy-authenticate", "proxy-authorization", "te", "trailer",
    "upgrade",
})
#: Headers that carry credentials for one origin: dropped when a redirect leaves it.
CREDENTIAL_HEADERS = frozenset({"authorization", "cookie"})
#: Headers that describe a body: dropped when a redirect turns the request into a GET.
BODY_HEADERS = frozenset({"content-type", "content-encoding", "content-language"})
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
#: Sent unless the guest sets them: who is calling, and a body as the server stores it.
DEFAULT_HEADERS = (("user-agent", "okra-http"), ("accept-encoding", "identity"))
MAX_CONNECTIONS = 100

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_BAD_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


class HttpAPI:
    namespace = NAMESPACE
    description = "outbound HTTP(S) requests to the destinations an allow-list names"
    #: Written by `narrow` only: the runtime refuses it from a manifest.
    internal_settings = (POLICY_ALLOW,)

    def __init__(self, max_connections: int = MAX_CONNECTIONS):
        self._max_connections = max_connections
        self._lock = threading.Lock()
        self._transport: httpx.HTTPTransport | None = None

    def function_names(self) -> Sequence[str]:
        return ("fetch",)

    def functions(self, config: Mapping[str, Any], env: HostEnvironment) -> Sequence[HostFunction]:
        fetcher = Fetcher(self.transport, parse_settings(config), env)
        return (
            HostFunction(NAMESPACE, "fetch", ("i32", "i32", "i32", "i32"), fetcher.fetch,
                         blocking=True),
        )

    def narrow(self, requested: Mapping[str, Any], policy: Mapping[str, Any]) -> Mapping[str, Any]:
        return narrow(requested, policy)

    def transport(self) -> httpx.HTTPTransport:
        """The connection pool every package's fetches share, made on first use."""
        with self._lock:
            if self._transport is None:
                self._transport = make_transport(self._max_connections)
            return self._transport

    def close(self) -> None:
        with self._lock:
            transport, self._transport = self._transport, None
        if transport is not None:
            transport.close()


def make_transport(max_connections: int) -> httpx.HTTPTransport:
    """httpx's transport over a pool whose sockets obey each fetch's deadline
    (`_deadline`), with no proxy or TLS settings taken from the environment."""
    limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=20)
    transport = httpx.HTTPTransport(trust_env=False, limits=limits)
    default_pool = getattr(transport, "_pool", None)
    if not isinstance(default_pool, httpcore.ConnectionPool):
        raise RuntimeError(
            f"httpx {httpx.__version__} has no httpcore pool where okra.http expects one; "
            "install a supported httpx (see pyproject.toml)"
        )
    default_pool.close()
    transport._pool = httpcore.ConnectionPool(
        ssl_context=httpx.create_ssl_context(trust_env=False),
        max_connections=limits.max_connections,
        max_keepalive_connections=limits.max_keepalive_connections,
        keepalive_expiry=limits.keepalive_expiry,
        network_backend=DeadlineBackend(),
    )
    return transport


class Fetcher:
    """`okra.http.fetch` for one package: its settings, the shared pool (made at the
    first fetch, so building the functions, as `okra build` does, opens nothing)."""

    def __init__(
        self, transport: Callable[[], httpx.BaseTransport], settings: Settings, env: HostEnvironment
    ):
        self.transport = transport
        self.settings = settings
        self.env = env

    def fetch(self, ctx: HostContext, req_ptr: int, req_len: int, out_ptr: int, out_cap: int) -> int:
        settings = self.settings
        if req_len < 0 or out_cap < 0:
            raise HostError(StatusCode.INVALID_ARGUMENT, "okra.http.fetch: a length is negative")
        if req_len > settings.max_request_bytes:
            raise HostError(
                StatusCode.RESOURCE_EXHAUSTED,
                f"okra.http: the request is {req_len} bytes, more than max_request_bytes "
                f"({settings.max_request_bytes}) in {WHERE}",
            )
        memory = ctx.memory
        assert memory is not None
        if out_cap:
            # Probe the result buffer before any request goes out, so a bad pointer
            # fails the call before it has effects.
            memory.read(out_ptr, 1)
            memory.read(out_ptr + out_cap - 1, 1)
        try:
            request = decode_request(memory.read(req_ptr, req_len))
        except ValueError as exc:
            raise HostError(StatusCode.INVALID_ARGUMENT, f"okra.http: malformed HttpRequest: {exc}") from None
        method = (request.method or "GET").upper()
        if method not in METHODS:
            raise HostError(
                StatusCode.INVALID_ARGUMENT,
                f"okra.http: method {request.method!r} is not one of {', '.join(METHODS)}",
            )
        if len(request.url.encode()) > settings.max_url_bytes:
            raise HostError(
                StatusCode.INVALID_ARGUMENT,
                f"okra.http: the URL is {len(request.url.encode())} bytes, more than "
                f"max_url_bytes ({settings.max_url_bytes}) in {WHERE}",
            )
        headers = check_headers(request.headers)
        seconds, limit = self._budget(ctx, request.timeout_ms)
        exchange = Exchange(self, ctx, method, headers, request.body, seconds, limit)
        response = exchange.run(request.url)
        return ctx.return_data(encode_response(response), out_ptr, out_cap)

    def _budget(self, ctx: HostContext, timeout_ms: int) -> tuple[float, str]:
        """How long the whole exchange may take, and which limit says so."""
        candidates = [(self.settings.timeout_seconds, f"timeout_seconds in {WHERE}")]
        if timeout_ms:
            candidates.append((timeout_ms / 1000, "the request's timeout_ms"))
        remaining = ctx.remaining()
        if remaining is not None:
            candidates.append((remaining, "the call's deadline"))
        seconds, limit = min(candidates, key=lambda c: c[0])
        if seconds <= 0:
            raise HostError(StatusCode.DEADLINE_EXCEEDED, "okra.http: the call's deadline has passed")
        return seconds, limit

    def denial(self, dest: Destination) -> tuple[str | None, str] | None:
        """(policy rule or None, what to do) if `dest` is not allowed, else None."""
        if not allows(self.settings.allow, dest):
            if not self.settings.allow:
                return None, (
                    f"the allow list in {WHERE} (okra.toml) is empty, so nothing is allowed; "
                    f'add "{dest.origin}" to it'
                )
            return None, f'add "{dest.origin}" to allow in {WHERE} (okra.toml)'
        for rule in self.settings.policy:
            if not allows(rule.entries, dest):
                return rule.rule, (
                    f'ask the operator to add "{dest.origin}" to the allow list of policy '
                    f"rule {rule.rule!r}"
                )
        return None


class Exchange:
    """One fetch: the request, each redirect followed, the final response."""

    def __init__(
        self, fetcher: Fetcher, ctx: HostContext, method: str, headers: list[tuple[str, str]],
        body: bytes, seconds: float, limit: str,
    ):
        self.fetcher = fetcher
        self.settings = fetcher.settings
        self.ctx = ctx
        self.method = method
        self.headers = headers
        self.body = body
        self.seconds = seconds
        self.limit = limit
        self.at = time.monotonic() + seconds
        self.first_url = ""

    def run(self, url: str) -> HttpResponse:
        self.first_url = url
        dest = self.check(url, None)
        if dest.userinfo:
            raise HostError(
                StatusCode.INVALID_ARGUMENT,
                f"okra.http: {self.method} {dest.display()}: the URL has user info "
                "(user:password@), which okra.http does not send: put credentials in an "
                "Authorization header",
            )
        redirects = 0
        with deadline(self.at):
            while True:
                try:
                    response = self.send(dest)
                except httpx.HTTPError as exc:
                    raise self.failure(exc, dest) from None
                with contextlib.closing(response):
                    location = response.headers.get("location")
                    if response.status_code not in REDIRECT_STATUSES or not location:
                        try:
                            body = self.read_body(response, dest)
                        except httpx.HTTPError as exc:
                            raise self.failure(exc, dest) from None
                        return HttpResponse(
                            response.status_code, decode_headers(response.headers.raw), body,
                            dest.url,
                        )
                if redirects >= self.settings.max_redirects:
                    raise HostError(
                        StatusCode.RESOURCE_EXHAUSTED,
                        f"okra.http: {self.method} {self.display(self.first_url)}: stopped at "
                        f"{dest.display()}, which redirects again after "
                        f"{redirects} redirect{'' if redirects == 1 else 's'} "
                        f"(max_redirects = {self.settings.max_redirects} in {WHERE})",
                    )
                redirects += 1
                dest = self.follow(dest, response.status_code, location)

    def check(self, url: str, came_from: Destination | None) -> Destination:
        """The destination of `url` if it may be fetched; otherwise the denial (audited)
        or the error."""
        try:
            dest = parse_url(url)
        except UrlRejected as exc:
            if exc.denied:
                raise self.deny(self.display(url), exc.message, None, came_from) from None
            if came_from is not None:
                raise HostError(
                    StatusCode.UNAVAILABLE,
                    f"okra.http: {came_from.display()} redirected to a URL okra.http cannot "
                    f"follow ({self.display(url)}): {exc.message}",
                ) from None
            raise HostError(
                StatusCode.INVALID_ARGUMENT, f"okra.http: {self.display(url)}: {exc.message}"
            ) from None
        denial = self.fetcher.denial(dest)
        if denial is not None:
            rule, advice = denial
            raise self.deny(dest.display(), advice, rule, came_from)
        return dest

    def deny(self, shown: str, advice: str, rule: str | None, came_from: Destination | None) -> HostError:
        ctx = self.ctx
        if came_from is None:
            what = f"{self.method} {shown} is"
        else:
            what = f"{self.method} {came_from.display()} redirected to {shown}, which is"
        by = f" by policy rule {rule!r}" if rule is not None else ""
        message = f"okra.http: {what} not allowed for {ctx.service}{by}: {advice}"
        fields: dict[str, Any] = {"url": shown, "method": self.method}
        if rule is not None:
            fields["rule"] = rule
        if came_from is not None:
            fields["redirected_from"] = came_from.display()
        self.fetcher.env.audit.denied(ctx.service, NAMESPACE, message.partition(": ")[2], **fields)
        return HostError(StatusCode.PERMISSION_DENIED, message)

    def follow(self, dest: Destination, status: int, location: str) -> Destination:
        if len(location.encode()) > self.settings.max_url_bytes:
            raise HostError(
                StatusCode.UNAVAILABLE,
                f"okra.http: {dest.display()} redirected to a URL longer than max_url_bytes "
                f"({self.settings.max_url_bytes}) in {WHERE}",
            )
        try:
            target = urllib.parse.urljoin(dest.url, location)
        except ValueError:
            target = location
        following = self.check(target, dest)
        if status == 303 and self.method != "HEAD" or status in (301, 302) and self.method == "POST":
            self.method = "GET"
            self.body = b""
            self.headers = [(n, v) for n, v in self.headers if n.lower() not in BODY_HEADERS]
        if following.origin != dest.origin:
            self.headers = [(n, v) for n, v in self.headers if n.lower() not in CREDENTIAL_HEADERS]
        return following

    def send(self, dest: Destination) -> httpx.Response:
        url = httpx.URL(
            scheme=dest.scheme, host=dest.host, port=dest.port, raw_path=dest.target.encode("ascii")
        )
        # What is fetched must be exactly what was checked.
        if url.raw_host.decode("ascii") != dest.host or (url.port or DEFAULT_PORTS[dest.scheme]) != dest.port:
            raise RuntimeError(f"httpx rewrote {dest.url} as {url}")
        left = self.at - time.monotonic()
        if left <= 0:
            raise httpx.ConnectTimeout("the fetch's deadline has passed")
        names = {name.lower() for name, _ in self.headers}
        headers = [(n, v) for n, v in DEFAULT_HEADERS if n not in names] + self.headers
        request = httpx.Request(
            self.method, url,
            headers=[(n.encode(), v.encode()) for n, v in headers],
            content=self.body,
            extensions={"timeout": {"connect": left, "read": left, "write": left, "pool": left}},
        )
        return self.fetcher.transport().handle_request(request)

    def read_body(self, response: httpx.Response, dest: Destination) -> bytes:
        limit = self.settings.max_response_bytes
        declared = response.headers.get("content-length", "").strip()
        if declared.isdigit() and int(declared) > limit:
            raise self.too_big(dest, f"declares {declared} bytes")
        body = bytearray()
        for chunk in response.iter_raw():
            body += chunk
            if len(body) > limit:
                raise self.too_big(dest, f"is more than {limit} bytes")
        return bytes(body)

    def too_big(self, dest: Destination, how: str) -> HostError:
        return HostError(
            StatusCode.RESOURCE_EXHAUSTED,
            f"okra.http: {self.method} {dest.display()}: the response body {how}, more than "
            f"max_response_bytes ({self.settings.max_response_bytes}) in {WHERE}; none of it "
            "is returned",
        )

    def failure(self, exc: httpx.HTTPError, dest: Destination) -> HostError:
        where = f"okra.http: {self.method} {dest.display()}"
        if isinstance(exc, httpx.TimeoutException):
            return HostError(
                StatusCode.DEADLINE_EXCEEDED,
                f"{where}: no complete answer within {self.seconds:.3g} s ({self.limit})",
            )
        if isinstance(exc, httpx.LocalProtocolError):
            return HostError(StatusCode.INVALID_ARGUMENT, f"{where}: the request is not valid HTTP: {exc}")
        if isinstance(exc, httpx.ConnectError):
            return HostError(StatusCode.UNAVAILABLE, f"{where}: cannot connect: {exc}")
        if isinstance(exc, httpx.RemoteProtocolError):
            return HostError(StatusCode.UNAVAILABLE, f"{where}: the server broke the HTTP protocol: {exc}")
        return HostError(StatusCode.UNAVAILABLE, f"{where}: {type(exc).__name__}: {exc}")

    @staticmethod
    def display(url: str, limit: int = 200) -> str:
        """A URL as given, for messages: without user info or query, cut to `limit`."""
        try:
            parts = urllib.parse.urlsplit(url)
            shown = urllib.parse.urlunsplit(
                (parts.scheme, parts.netloc.rpartition("@")[2], parts.path, "", "")
            )
        except ValueError:
            shown = url
        return shown if len(shown) <= limit else shown[:limit] + "..."


def check_headers(headers: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    """The guest's headers, checked: valid names, no line breaks or controls in values,
    none of the headers the host owns."""
    out = []
    for name, value in headers:
        if not _TOKEN.fullmatch(name):
            raise HostError(
                StatusCode.INVALID_ARGUMENT, f"okra.http: {name!r} is not a valid header name"
            )
        if name.lower() in FORBIDDEN_HEADERS:
            raise HostError(
                StatusCode.INVALID_ARGUMENT,
                f"okra.http: the {name} header is set by okra.http itself (from the URL, the "
                "body or the connection): remove it",
            )
        value = value.strip(" \t")
        if _BAD_VALUE.search(value):
            raise HostError(
                StatusCode.INVALID_ARGUMENT,
                f"okra.http: the value of header {name} contains a line break or a control character",
            )
        out.append((name, value))
    return out


def decode_headers(raw: Sequence[tuple[bytes, bytes]]) -> list[tuple[str, str]]:
    return [(_decode(name), _decode(value)) for name, value in raw]


def _decode(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")
