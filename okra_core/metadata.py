"""Which request headers a guest gets to see.

Transports (gRPC, Connect...) receive headers that belong to the protocol, to the
connection or to the caller's credentials. A guest needs the application's own headers
(request ids, locale, tenant...), not those: passing protocol headers would tie guests to
one transport, and passing credentials would hand secrets to code that should never
hold them. Every transport applies the same rule, `is_forwarded`, so a guest sees the
same metadata whichever protocol the call came in on.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Collection, Iterable

#: Headers of the connection or of the HTTP/gRPC/Connect framing, never forwarded.
PROTOCOL_HEADERS = frozenset(
    {
        # HTTP/1.1 hop-by-hop (RFC 9110 section 7.6.1) and their HTTP/2 leftovers
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "upgrade",
        "te",
        "trailer",
        "host",
        # message framing, set by the transport, meaningless to a guest
        "content-type",
        "content-length",
        "content-encoding",
        "accept-encoding",
        "accept",
    }
)

#: Header names that carry credentials, never forwarded unless allowed.
SECRET_HEADERS = frozenset(
    {
        "authorization",
        "proxy-authorization",
        "proxy-authenticate",
        "www-authenticate",
        "cookie",
        "set-cookie",
        "x-api-key",
        "api-key",
    }
)

#: Words that make any other header name look like a credential (e.g. x-auth-token,
#: x-amz-security-token, x-session-id, x-client-secret), never forwarded unless allowed.
SECRET_WORDS = (
    "auth",
    "cookie",
    "token",
    "secret",
    "password",
    "passwd",
    "apikey",
    "api-key",
    "credential",
    "session",
)

#: Prefixes reserved by the protocols: gRPC's own headers, Connect's, HTTP/2 pseudo-headers.
RESERVED_PREFIXES = ("grpc-", "connect-", ":")


def is_forwarded(key: str, allow: Collection[str] = ()) -> bool:
    """Whether the request header `key` reaches the guest as metadata.

    The rule, applied to the lower-cased name, in order:

    1. Reserved names are dropped: anything starting with ``grpc-`` (``grpc-timeout``,
       ``grpc-encoding``...), ``connect-`` (``connect-timeout-ms``...) or ``:``
       (HTTP/2 pseudo-headers). The transport already acted on them.
    2. Connection and framing headers are dropped (`PROTOCOL_HEADERS`: ``connection``,
       ``te``, ``host``, ``content-type``, ``accept-encoding``...).
    3. Binary headers (names ending in ``-bin``) are dropped: guest metadata values are
       text.
    4. Names listed in `allow` are forwarded, even if they look secret. This is how an
       operator passes e.g. ``authorization`` to a guest that verifies tokens itself.
    5. Secret-looking names are dropped: `SECRET_HEADERS` (``authorization``,
       ``cookie``, ``x-api-key``...) and any name containing one of `SECRET_WORDS`
       (``auth``, ``token``, ``secret``, ``session``...).
    6. Everything else is forwarded (``user-agent``, ``x-request-id``, ``x-tenant``...).

    Rules 1-3 cannot be overridden; `allow` only lifts rule 5.
    """
    key = key.lower()
    if key in allow:
        return not _is_transport_header(key)
    return _verdict(key)


@functools.lru_cache(maxsize=4096)
def _verdict(key: str) -> bool:
    if _is_transport_header(key):
        return False
    if key in SECRET_HEADERS or any(word in key for word in SECRET_WORDS):
        return False
    return True


def _is_transport_header(key: str) -> bool:
    return key.startswith(RESERVED_PREFIXES) or key in PROTOCOL_HEADERS or key.endswith("-bin")


def filter_metadata(
    pairs: Iterable[tuple[str, str | bytes]], allow: Collection[str] = ()
) -> list[tuple[str, str]]:
    """The `(key, value)` pairs of `pairs` that `is_forwarded` lets through, keys
    lower-cased, in their original order (repeated keys stay repeated). Values that are
    not text are dropped."""
    forwarded = []
    for key, value in pairs:
        if type(value) is str and is_forwarded(key, allow):
            forwarded.append((key.lower(), value))
    return forwarded


#: A header name as gRPC writes it (the gRPC over HTTP/2 spec, "Header-Name"): lower-case
#: ASCII letters, digits and - _ . -- also a valid HTTP field name, so both transports
#: accept it.
_HEADER_NAME = re.compile(r"[0-9a-z_.-]+")


def is_header_name(key: str) -> bool:
    """Whether `key` (already lower-cased) is a header name every transport accepts."""
    return key.isascii() and _HEADER_NAME.fullmatch(key) is not None


def normalize_allow(names: Iterable[str]) -> frozenset[str]:
    """An `allow` collection from user input (flags, config): lower-cased, stripped."""
    return frozenset(name.strip().lower() for name in names if name.strip())
