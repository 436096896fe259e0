"""okra.http allow-lists: which destinations a service may fetch.

An entry is `scheme://host[:port]`. Entries and URLs are both reduced to one canonical
form before they are compared (lower-case ASCII host, punycode for international names,
no trailing dot, IPv4 as four decimal numbers, IPv6 compressed, an explicit port), and
the URL actually fetched is rebuilt from that same form: the host that was checked is the
host that is connected to. A URL host that has no canonical form (`2130706433`,
`0x7f.1`, `127.1`, a percent-encoded name) is refused rather than guessed at, because
resolvers and browsers disagree on what such hosts mean.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import urllib.parse
from collections.abc import Iterable

import idna

from okra_core.errors import ConfigError

#: Schemes okra.http fetches, and their default ports.
DEFAULT_PORTS = {"http": 80, "https": 443}

EXAMPLES = '"https://api.example.com", "https://*.example.com", "http://10.0.0.5:8080"'

_IPV4 = re.compile(
    r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
    r"(?:\.(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])){3}"
)
_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")
# A last label like these makes a URL parser read the whole host as an IPv4 address in
# some non-canonical form (WHATWG URL "ends in a number").
_NUMERIC_LABEL = re.compile(r"[0-9]+|0x[0-9a-f]*")
_PORT = re.compile(r"[0-9]{1,5}")
# Bytes that never belong in an entry or a URL as written: spaces, controls, backslash
# (which some URL parsers read as "/", so it could move where the host ends).
_FORBIDDEN = re.compile(r"[\x00-\x20\x7f\\]")


class BadHost(ValueError):
    """A host with no canonical form; the message says why."""


class UrlRejected(ValueError):
    """A URL okra.http will not fetch whatever the allow-lists say.

    `denied` is True when the URL names a destination (a scheme, a host) that no entry
    could allow, which is a denial (PERMISSION_DENIED, audited); False when the URL is
    simply malformed (INVALID_ARGUMENT).
    """

    def __init__(self, message: str, *, denied: bool):
        super().__init__(message)
        self.message = message
        self.denied = denied


def canonical_host(text: str) -> tuple[str, str]:
    """(kind, host) for a host written without brackets: kind "ipv4" or "dns".

    Raises BadHost for anything else, including IPv4 in forms other than four decimal
    numbers (those are what resolvers disagree on).
    """
    if text.endswith("."):
        text = text[:-1]
    if not text:
        raise BadHost("the host is empty")
    if not text.isascii():
        try:
            text = idna.encode(text, uts46=True).decode("ascii")
        except (idna.IDNAError, UnicodeError, ValueError) as exc:
            raise BadHost(f"{text!r} is not a valid internationalised domain name ({exc})") from None
    text = text.lower()
    if _IPV4.fullmatch(text):
        return "ipv4", text
    labels = text.split(".")
    if len(text) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        raise BadHost(
            f"{text!r} is not a DNS name (labels of letters, digits and '-', up to 63 "
            "characters each) or an IP address"
        )
    if _NUMERIC_LABEL.fullmatch(labels[-1]):
        raise BadHost(
            f"{text!r} is an IP address in a non-canonical form: write IPv4 as four "
            "decimal numbers (e.g. 127.0.0.1) and IPv6 in brackets"
        )
    return "dns", text


def canonical_ipv6(text: str) -> str:
    """The compressed form of an IPv6 address written inside brackets."""
    if "%" in text:
        raise BadHost(f"[{text}] has a zone index (%...), which okra.http does not accept")
    try:
        return ipaddress.IPv6Address(text).compressed
    except ValueError:
        raise BadHost(f"[{text}] is not an IPv6 address") from None


def split_host_port(authority: str) -> tuple[str, str, str | None]:
    """(kind, host, port text or None) of `host[:port]` / `[v6][:port]`.

    Raises BadHost for the host, ValueError for the layout around it.
    """
    if authority.startswith("["):
        close = authority.find("]")
        if close < 0:
            raise ValueError("'[' without a closing ']'")
        host = canonical_ipv6(authority[1:close])
        rest = authority[close + 1 :]
        if rest and not rest.startswith(":"):
            raise ValueError(f"unexpected {rest!r} after the IPv6 address")
        return "ipv6", host, rest[1:] if rest else None
    if authority.count(":") > 1:
        raise ValueError("an IPv6 address must be written in brackets, e.g. https://[2001:db8::1]")
    host, colon, port = authority.partition(":")
    if "[" in host or "]" in host:
        raise ValueError("brackets only surround a whole IPv6 address")
    return (*canonical_host(host), port if colon else None)


def host_for_url(kind: str, host: str) -> str:
    return f"[{host}]" if kind == "ipv6" else host


def origin(scheme: str, kind: str, host: str, port: int) -> str:
    """`scheme://host[:port]`, the port left out when it is the scheme's default: the
    allow-list entry that admits exactly this destination."""
    text = f"{scheme}://{host_for_url(kind, host)}"
    return text if port == DEFAULT_PORTS[scheme] else f"{text}:{port}"


@dataclasses.dataclass(frozen=True)
class Entry:
    """One allow-list entry, canonical."""

    scheme: str
    #: "dns", "ipv4" or "ipv6".
    kind: str
    #: The host; for a wildcard entry, the domain below which every name matches.
    host: str
    wildcard: bool
    #: The port, or None for any port ("*").
    port: int | None

    def __str__(self) -> str:
        host = host_for_url(self.kind, self.host)
        text = f"{self.scheme}://{'*.' if self.wildcard else ''}{host}"
        if self.port is None:
            return text + ":*"
        return text if self.port == DEFAULT_PORTS[self.scheme] else f"{text}:{self.port}"

    def matches(self, dest: Destination) -> bool:
        if dest.scheme != self.scheme or (self.port is not None and dest.port != self.port):
            return False
        if self.wildcard:
            return dest.kind == "dns" and dest.host.endswith("." + self.host)
        return dest.kind == self.kind and dest.host == self.host

    def overlaps(self, other: Entry) -> bool:
        """Whether some destination matches both entries."""
        if self.scheme != other.scheme:
            return False
        if self.port is not None and other.port is not None and self.port != other.port:
            return False
        if self.kind != other.kind:
            return False
        if self.wildcard and other.wildcard:
            return _within(self.host, other.host) or _within(other.host, self.host)
        if self.wildcard:
            return other.host.endswith("." + self.host)
        if other.wildcard:
            return self.host.endswith("." + other.host)
        return self.host == other.host


def _within(name: str, domain: str) -> bool:
    return name == domain or name.endswith("." + domain)


def parse_entry(text: object) -> Entry:
    """Parse one entry; ConfigError (with a correct example) if it is malformed."""
    if not isinstance(text, str):
        raise _bad_entry(text, "an entry is a string")
    try:
        return _parse_entry(text)
    except (BadHost, ValueError) as exc:
        raise _bad_entry(text, str(exc)) from None


def _parse_entry(text: str) -> Entry:
    if text == "*":
        raise ValueError('"*" would allow every host: name the hosts, or a domain as "*.example.com"')
    if _FORBIDDEN.search(text):
        raise ValueError("it contains a space, a control character or a backslash")
    scheme, sep, authority = text.partition("://")
    if not sep:
        raise ValueError("it has no scheme: start it with http:// or https://")
    scheme = scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise ValueError(f"the scheme {scheme!r} is not http or https")
    for char, what in (("/", "a path"), ("?", "a query"), ("#", "a fragment")):
        if char in authority:
            raise ValueError(f"it has {what}: an entry names a scheme, a host and a port only")
    if "@" in authority:
        raise ValueError("it has user info (user@): an entry names a scheme, a host and a port only")
    wildcard = authority.startswith("*.")
    if wildcard:
        authority = authority[2:]
    if authority == "*" or authority.startswith("*:"):
        raise ValueError('"*" alone would allow every host: name the hosts, or a domain as "*.example.com"')
    if not authority.startswith("[") and "*" in authority.partition(":")[0]:
        raise ValueError('a wildcard can only be the whole first label, as in "*.example.com"')
    kind, host, port_text = split_host_port(authority)
    if port_text is None:
        port: int | None = DEFAULT_PORTS[scheme]
    elif port_text == "*":
        port = None
    elif _PORT.fullmatch(port_text) and 0 < int(port_text) < 65536:
        port = int(port_text)
    else:
        raise ValueError(f"the port {port_text!r} is not a number from 1 to 65535 or \"*\"")
    if wildcard:
        if kind != "dns":
            raise ValueError("a wildcard stands for DNS names, not IP addresses")
        if host.count(".") < 1:
            raise ValueError(
                f'"*.{host}" would allow a whole top-level domain: name at least two labels '
                'after "*.", as in "*.example.com"'
            )
    return Entry(scheme, kind, host, wildcard, port)


def _bad_entry(text: object, reason: str) -> ConfigError:
    return ConfigError(
        f"okra.http: allow-list entry {text!r} is not valid: {reason}. Write "
        f"scheme://host[:port], e.g. {EXAMPLES}"
    )


def parse_allow_list(value: object, where: str) -> tuple[Entry, ...]:
    """Entries from a settings value (a list of strings); ConfigError naming `where`."""
    if isinstance(value, str) or not isinstance(value, (list, tuple)):
        raise ConfigError(
            f"{where}: allow must be a list of entries, e.g. allow = [{EXAMPLES}]; got {value!r}"
        )
    entries = []
    for item in value:
        try:
            entries.append(parse_entry(item))
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None
    return tuple(entries)


def allows(entries: Iterable[Entry], dest: Destination) -> bool:
    return any(entry.matches(dest) for entry in entries)


@dataclasses.dataclass(frozen=True)
class Destination:
    """A URL okra.http may fetch, canonical: what is checked is what is fetched."""

    scheme: str
    kind: str
    host: str
    port: int
    #: Path and query, ASCII, percent-encoded ("/" at least); never the fragment.
    target: str
    #: Whether the URL carried user info (`user:password@`); it is never sent.
    userinfo: bool = False

    @property
    def origin(self) -> str:
        return origin(self.scheme, self.kind, self.host, self.port)

    @property
    def url(self) -> str:
        return self.origin + self.target

    def display(self, limit: int = 200) -> str:
        """The URL for messages and audit records: no user info, no query (either may
        hold a credential), the path cut to `limit` characters."""
        path = self.target.partition("?")[0]
        if len(path) > limit:
            path = path[:limit] + "..."
        return self.origin + path


def parse_url(url: str) -> Destination:
    """Parse an absolute http(s) URL; UrlRejected if okra.http will not fetch it."""
    if _FORBIDDEN.search(url):
        raise UrlRejected(
            "the URL contains a space, a control character or a backslash: "
            "percent-encode them", denied=False,
        )
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError as exc:
        raise UrlRejected(f"the URL does not parse: {exc}", denied=False) from None
    scheme = parts.scheme.lower()
    if not scheme or not url[len(parts.scheme) + 1 :].startswith("//"):
        raise UrlRejected(
            "not an absolute URL: write http://host/path or https://host/path", denied=False
        )
    if scheme not in DEFAULT_PORTS:
        raise UrlRejected(f"okra.http fetches only http and https URLs, not {scheme}:", denied=True)
    userinfo, at, authority = parts.netloc.rpartition("@")
    if not authority:
        raise UrlRejected("the URL has no host", denied=False)
    try:
        kind, host, port_text = split_host_port(authority)
    except BadHost as exc:
        raise UrlRejected(f"the host is not allowed: {exc}", denied=True) from None
    except ValueError as exc:
        raise UrlRejected(f"the URL does not parse: {exc}", denied=False) from None
    if not port_text:
        port = DEFAULT_PORTS[scheme]
    elif _PORT.fullmatch(port_text) and 0 < int(port_text) < 65536:
        port = int(port_text)
    else:
        raise UrlRejected(f"the port {port_text!r} is not a number from 1 to 65535", denied=False)
    target = _ascii(parts.path or "/")
    if parts.query:
        target += "?" + _ascii(parts.query)
    return Destination(scheme, kind, host, port, target, userinfo=bool(at))


def _ascii(text: str) -> str:
    """Percent-encode what is not ASCII (as UTF-8); leave the rest exactly as written."""
    if text.isascii():
        return text
    return "".join(c if c.isascii() else urllib.parse.quote(c, safe="") for c in text)
