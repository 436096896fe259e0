# Test plan: okra.http allow-list entries and URL destinations
# (okra_plugins.hostapi_http._allowlist, _settings). Fetching itself: test_hostapi_http.py.
# Examples:
# - valid entries parse to one canonical form: scheme and host lower-cased, trailing dot
#   dropped, IDNA names as punycode, IPv6 compressed, the default port implied, "*" port.
# - malformed entries are ConfigErrors that show a correct example: no scheme, other
#   schemes, paths/queries/fragments, user info, bare "*", "*.com" (fewer than two labels
#   after "*."), wildcards anywhere but the whole first label, wildcard IPs, bad ports,
#   unbracketed IPv6, non-canonical IPv4, invalid IDNA, non-string entries, a string
#   where a list is expected.
# - URLs: user info never moves the host (http://allowed.com@evil.com is evil.com);
#   IPv4 in decimal/hex/octal/short forms and percent-encoded hosts are denied, never
#   guessed at; other schemes are denials; relative or unparsable URLs are invalid;
#   non-ASCII paths are percent-encoded; query and user info stay out of messages.
# - settings: unknown keys list the known ones; limits validated (sizes accept "4MiB");
#   policy narrowing lowers limits only, adds the rule's list, fails the deploy when a
#   manifest entry overlaps nothing the rule allows, refuses unknown policy keys.
# Properties (hypothesis):
# - a wildcard entry matches every subdomain at any depth, never the apex, a sibling
#   ("evilexample.com") or a domain that merely contains it ("example.com.evil.net").
# - matching ignores case; an entry without a port matches the scheme's default port
#   written or not, and no other; ":*" matches every port; a URL never matches an entry
#   of the other scheme.
# - user info never changes the host that is checked.
# - str(entry) parses back to the same entry.
# - an IPv4 address written as one number or in hex is always denied.
# - `overlaps` agrees with `matches`: a destination matched by two entries means they
#   overlap; entries that overlap nothing share no destination.
# - random text never crashes either parser: it parses, or raises ConfigError (entries)
#   or UrlRejected (URLs).
import dataclasses

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from okra_core.errors import ConfigError
from okra_plugins.hostapi_http._allowlist import (
    Entry, UrlRejected, allows, parse_allow_list, parse_entry, parse_url,
)
from okra_plugins.hostapi_http._settings import (
    MANIFEST_KEYS, POLICY_ALLOW, Settings, narrow, parse_settings,
)


def matches(entry: str, url: str) -> bool:
    return parse_entry(entry).matches(parse_url(url))


# -- entries ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("https://api.example.com", "https://api.example.com"),
        ("HTTPS://API.Example.COM.", "https://api.example.com"),
        ("https://api.example.com:443", "https://api.example.com"),
        ("http://api.example.com:443", "http://api.example.com:443"),
        ("https://*.example.com", "https://*.example.com"),
        ("https://*.example.com:*", "https://*.example.com:*"),
        ("http://10.0.0.5:8080", "http://10.0.0.5:8080"),
        ("https://[2001:DB8:0:0::1]:8443", "https://[2001:db8::1]:8443"),
        ("https://bücher.example", "https://xn--bcher-kva.example"),
        ("https://*.bücher.example", "https://*.xn--bcher-kva.example"),
        ("http://localhost:8080", "http://localhost:8080"),
        ("https://_dmarc.example.com", "https://_dmarc.example.com"),
    ],
)
def test_valid_entries_parse_to_one_canonical_form(text, canonical):
    assert str(parse_entry(text)) == canonical


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("api.example.com", "no scheme"),
        ("ftp://example.com", "not http or https"),
        ("https://example.com/", "path"),
        ("https://example.com/v1", "path"),
        ("https://example.com?x=1", "query"),
        ("https://example.com#top", "fragment"),
        ("https://user@example.com", "user info"),
        ("https://user:pw@example.com", "user info"),
        ("*", "every host"),
        ("https://*", "every host"),
        ("https://*:443", "every host"),
        ("https://*.com", "whole top-level domain"),
        ("https://*.com.", "whole top-level domain"),
        ("https://api.*.com", "whole first label"),
        ("https://*example.com", "whole first label"),
        ("https://*.*.example.com", "whole first label"),
        ("https://a*.example.com", "whole first label"),
        ("https://*.10.0.0.5", "not IP addresses"),
        ("https://example.com:0", "port"),
        ("https://example.com:65536", "port"),
        ("https://example.com:+80", "port"),
        ("https://example.com:", "port"),
        ("https://example.com:*x", "port"),
        ("https://2001:db8::1", "brackets"),
        ("https://[2001:db8::1", "closing"),
        ("https://[fe80::1%eth0]", "zone"),
        ("https://[example.com]", "not an IPv6 address"),
        ("http://2130706433", "non-canonical"),
        ("http://0x7f.1", "non-canonical"),
        ("http://127.1", "non-canonical"),
        ("http://0177.0.0.1", "non-canonical"),
        ("https://", "empty"),
        ("https://exa mple.com", "space"),
        ("https://ex%61mple.com", "not a DNS name"),
        ("https://-bad-.example.com", "not a DNS name"),
        ("https://" + "a" * 64 + ".com", "not a DNS name"),
        ("https://xn--\u00e9.example", "internationalised"),
        ("https://a\\b.example.com", "backslash"),
    ],
)
def test_malformed_entries_fail_with_a_correct_example(text, says):
    with pytest.raises(ConfigError) as info:
        parse_entry(text)
    message = str(info.value)
    assert says in message
    assert repr(text) in message
    assert '"https://api.example.com"' in message and "scheme://host[:port]" in message


def test_an_entry_must_be_a_string_and_allow_a_list():
    with pytest.raises(ConfigError, match="an entry is a string"):
        parse_entry(443)
    with pytest.raises(ConfigError, match="allow must be a list"):
        parse_allow_list("https://api.example.com", "here")
    with pytest.raises(ConfigError, match=r"^here: .*'https://a.com/x'"):
        parse_allow_list(["https://ok.com", "https://a.com/x"], "here")


# -- URLs ------------------------------------------------------------------------------


def test_user_info_never_moves_the_host():
    dest = parse_url("http://allowed.com@evil.com/x")
    assert (dest.host, dest.userinfo) == ("evil.com", True)
    assert not matches("http://allowed.com", "http://allowed.com@evil.com/x")
    assert not matches("http://allowed.com", "http://allowed.com:80@evil.com/")
    assert parse_url("http://a@b@evil.com/").host == "evil.com"
    assert parse_url("http://evil.com#@allowed.com/").host == "evil.com"
    assert parse_url("http://evil.com?@allowed.com/").host == "evil.com"
    with pytest.raises(UrlRejected, match="backslash"):
        parse_url("http://allowed.com\\@evil.com/")


@pytest.mark.parametrize(
    "url",
    [
        "http://2130706433/", "http://0x7f000001/", "http://0x7f.1/", "http://127.1/",
        "http://0177.0.0.1/", "http://127.0.0.01/", "http://127.0.0.1.5/",
        "http://%31%32%37.0.0.1/", "http://ex%61mple.com/", "http://[fe80::1%25eth0]/",
    ],
)
def test_hosts_without_a_canonical_form_are_denied(url):
    with pytest.raises(UrlRejected) as info:
        parse_url(url)
    assert info.value.denied


@pytest.mark.parametrize("url", ["file:///etc/passwd", "gopher://example.com/", "ftp://x.com/"])
def test_other_schemes_are_denied(url):
    with pytest.raises(UrlRejected, match="only http and https") as info:
        parse_url(url)
    assert info.value.denied


@pytest.mark.parametrize(
    "url",
    [
        "", "/relative", "example.com/x", "//example.com/x", "http:example.com",
        "http:/example.com", "http:///x", "http://[::1/", "http://example.com:99999/",
        "http://example.com:8o/", "http://exa mple.com/", "http://example.com/\r\nX: y",
        "http://example.com/\x00",
    ],
)
def test_malformed_urls_are_invalid_not_denied(url):
    with pytest.raises(UrlRejected) as info:
        parse_url(url)
    assert not info.value.denied


def test_urls_are_made_canonical_and_what_is_shown_hides_query_and_user_info():
    dest = parse_url("HTTP://User:Secret@EXAMPLE.com.:80/a b/ü?token=s3cret#frag".replace(" ", "%20"))
    assert (dest.scheme, dest.host, dest.port) == ("http", "example.com", 80)
    assert dest.url == "http://example.com/a%20b/%C3%BC?token=s3cret"
    assert dest.display() == "http://example.com/a%20b/%C3%BC"
    assert parse_url("https://[::FFFF:127.0.0.1]:8443").url == "https://[::ffff:7f00:1]:8443/"
    assert parse_url("https://bücher.example/").host == "xn--bcher-kva.example"
    assert parse_url("http://example.com:/").port == 80
    assert len(parse_url("http://e.com/" + "a" * 1000).display()) < 250


def test_matching_examples():
    assert matches("https://api.example.com", "https://API.example.com./v1?x=1")
    assert not matches("https://api.example.com", "http://api.example.com/")
    assert not matches("https://api.example.com", "https://api.example.com:8443/")
    assert matches("https://api.example.com:*", "https://api.example.com:8443/")
    assert matches("https://*.example.com", "https://a.b.c.example.com/")
    assert not matches("https://*.example.com", "https://example.com/")
    assert not matches("https://*.example.com", "https://evilexample.com/")
    assert matches("http://10.0.0.5:8080", "http://10.0.0.5:8080/")
    assert not matches("http://10.0.0.5", "http://10.0.0.5:8080/")
    assert matches("https://[2001:db8::1]", "https://[2001:db8:0::0:1]/")
    assert not matches("http://[::ffff:127.0.0.1]", "http://127.0.0.1/")
    assert matches("https://xn--bcher-kva.example", "https://BÜCHER.example/")
    assert not allows((), parse_url("https://api.example.com/"))


# -- settings and policy ---------------------------------------------------------------


def test_settings_defaults_and_validation():
    assert parse_settings({}) == Settings()
    assert parse_settings({"allow": ["https://a.com"], "max_response_bytes": "1MiB"}).max_response_bytes == 1024**2
    with pytest.raises(ConfigError) as info:
        parse_settings({"allow": [], "allowed": []})
    assert "allowed" in str(info.value) and all(key in str(info.value) for key in MANIFEST_KEYS)
    for bad in (
        {"timeout_seconds": 61}, {"timeout_seconds": 0}, {"timeout_seconds": True},
        {"timeout_seconds": float("nan")}, {"max_redirects": -1}, {"max_redirects": 21},
        {"max_redirects": 2.0}, {"max_response_bytes": 0}, {"max_url_bytes": "big"},
        {POLICY_ALLOW: [{"rule": "x"}]}, {POLICY_ALLOW: "x"},
    ):
        with pytest.raises(ConfigError):
            parse_settings(bad)


def test_policy_lowers_limits_and_never_raises_them():
    requested = {"allow": ["https://a.com"], "timeout_seconds": 30, "max_redirects": 2}
    narrowed = narrow(requested, {"rule": "r", "timeout_seconds": 5, "max_redirects": 10,
                                  "max_response_bytes": "64KiB"})
    settings = parse_settings(narrowed)
    assert (settings.timeout_seconds, settings.max_redirects) == (5, 2)
    assert settings.max_response_bytes == 64 * 1024
    assert settings.max_request_bytes == Settings().max_request_bytes
    assert requested == {"allow": ["https://a.com"], "timeout_seconds": 30, "max_redirects": 2}


def test_policy_allow_list_is_added_with_the_rule_name_for_each_rule():
    requested = {"allow": ["https://*.example.com"], "functions": ["fetch"]}
    once = narrow(requested, {"rule": "egress", "allow": ["https://api.example.com"]})
    twice = narrow(once, {"rule": "audit", "allow": ["https://*.example.com:443"]})
    assert twice["functions"] == ["fetch"]
    assert twice[POLICY_ALLOW] == [
        {"rule": "egress", "allow": ["https://api.example.com"]},
        {"rule": "audit", "allow": ["https://*.example.com"]},
    ]
    settings = parse_settings(twice)
    assert [rule.rule for rule in settings.policy] == ["egress", "audit"]
    assert narrow(requested, {"rule": "limits-only", "timeout_seconds": 1}).get(POLICY_ALLOW) is None


def test_policy_that_allows_nothing_an_entry_asks_for_fails_the_deploy_naming_the_rule():
    requested = {"allow": ["https://api.example.com", "https://api.stripe.com"]}
    with pytest.raises(ConfigError) as info:
        narrow(requested, {"rule": "egress", "allow": ["https://*.example.com"]})
    message = str(info.value)
    assert "'egress'" in message and '"https://api.stripe.com"' in message
    assert "https://api.example.com\"" not in message.partition("asks for")[0]
    with pytest.raises(ConfigError, match="allows nothing"):
        narrow(requested, {"rule": "none", "allow": []})


def test_policy_refuses_unknown_keys_and_bad_values():
    with pytest.raises(ConfigError) as info:
        narrow({}, {"rule": "r", "max_url_bytes": 10})
    assert "max_url_bytes" in str(info.value) and "known: allow" in str(info.value)
    with pytest.raises(ConfigError, match="policy rule 'r'"):
        narrow({}, {"rule": "r", "allow": ["https://*"]})
    with pytest.raises(ConfigError, match="timeout_seconds"):
        narrow({}, {"rule": "r", "timeout_seconds": -1})


# -- properties ------------------------------------------------------------------------

label = st.text("abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=12).filter(
    lambda s: not s.isdigit() and not s.startswith("0x")
)
inner = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True)
domain = st.lists(label, min_size=2, max_size=4).map(".".join)
subdomain = st.lists(inner, min_size=1, max_size=4).map(".".join)
scheme = st.sampled_from(["http", "https"])
port = st.integers(1, 65535)


def flip_case(data, text: str) -> str:
    return "".join(c.upper() if data.draw(st.booleans()) else c for c in text)


@given(scheme, subdomain, domain)
def test_wildcard_matches_every_subdomain_at_any_depth(s, sub, dom):
    assert matches(f"{s}://*.{dom}", f"{s}://{sub}.{dom}/path")


@given(scheme, domain, inner)
@example("https", "example.com", "evil")
def test_wildcard_never_matches_the_apex_or_a_sibling(s, dom, prefix):
    entry = f"{s}://*.{dom}"
    assert not matches(entry, f"{s}://{dom}/")
    assert not matches(entry, f"{s}://{prefix}{dom}/")
    assert not matches(entry, f"{s}://{dom}.{prefix}.net/")
    assert not matches(entry, f"{s}://{prefix}-{dom}/")


@given(st.data(), scheme, domain, st.booleans())
def test_matching_ignores_case(data, s, dom, wildcard):
    host = f"www.{dom}"
    entry = f"{flip_case(data, s)}://{'*.' + dom if wildcard else host}"
    assert matches(flip_case(data, entry), f"{flip_case(data, s)}://{flip_case(data, host)}/X")


@given(scheme, domain, port)
def test_default_port_explicit_port_and_any_port(s, dom, p):
    default = {"http": 80, "https": 443}[s]
    assert matches(f"{s}://{dom}", f"{s}://{dom}:{default}/")
    assert matches(f"{s}://{dom}:{default}", f"{s}://{dom}/")
    assert matches(f"{s}://{dom}", f"{s}://{dom}:{p}/") == (p == default)
    assert matches(f"{s}://{dom}:{p}", f"{s}://{dom}:{p}/")
    assert matches(f"{s}://{dom}:*", f"{s}://{dom}:{p}/")
    assert parse_entry(f"{s}://{dom}:{default}") == parse_entry(f"{s}://{dom}")


@given(scheme, st.one_of(domain, st.just("10.1.2.3"), st.just("[::1]")), st.one_of(st.none(), port))
def test_a_url_never_matches_an_entry_of_the_other_scheme(s, host, p):
    other = "https" if s == "http" else "http"
    suffix = f":{p}" if p else ""
    assert not matches(f"{other}://{host}:*", f"{s}://{host}{suffix}/")
    assert matches(f"{s}://{host}:*", f"{s}://{host}{suffix}/")


userinfo = st.text(
    st.characters(codec="ascii", exclude_characters="/?#\\", min_codepoint=0x21, max_codepoint=0x7E),
    min_size=0, max_size=30,
)


@given(userinfo, domain, domain)
@example("allowed.com", "allowed.com", "evil.com")
@example("allowed.com:80@x", "allowed.com", "evil.com")
def test_user_info_never_changes_the_host(info, allowed, host):
    try:
        dest = parse_url(f"http://{info}{allowed}@{host}/")
    except UrlRejected:
        return
    assert dest.host == host and dest.userinfo
    assert parse_entry(f"http://{host}").matches(dest)
    assert parse_entry(f"http://{allowed}").matches(dest) == (allowed == host)


@given(scheme, st.one_of(domain, subdomain.map(lambda s: f"*.{s}.example")), st.one_of(st.none(), port, st.just("*")))
def test_canonical_form_parses_back_to_the_same_entry(s, host, p):
    text = f"{s}://{host}" + (f":{p}" if p else "")
    entry = parse_entry(text)
    assert parse_entry(str(entry)) == entry


@given(st.integers(0, 2**32 - 1))
def test_ipv4_as_one_number_or_hex_is_always_denied(n):
    for host in (str(n), hex(n), f"{n >> 24}.{n & 0xFFFFFF}"):
        with pytest.raises(UrlRejected) as info:
            parse_url(f"http://{host}/")
        assert info.value.denied
    dotted = ".".join(str(n >> shift & 255) for shift in (24, 16, 8, 0))
    assert matches(f"http://{dotted}", f"http://{dotted}/")


hosts = st.sampled_from(["a.example.com", "b.a.example.com", "example.com", "other.org"])
entry_hosts = st.sampled_from(
    ["a.example.com", "example.com", "*.example.com", "*.a.example.com", "other.org", "*.other.org"]
)
entries = st.builds(
    lambda s, h, p: parse_entry(f"{s}://{h}" + (f":{p}" if p else "")),
    scheme, entry_hosts, st.sampled_from([None, 80, 443, 8080, "*"]),
)


@given(entries, entries)
def test_overlaps_agrees_with_matches(a, b):
    shared = [
        url
        for s in ("http", "https") for h in ("a.example.com", "b.a.example.com", "c.b.a.example.com",
                                              "example.com", "x.example.com", "other.org", "y.other.org")
        for p in (80, 443, 8080)
        for url in [f"{s}://{h}:{p}/"]
        if a.matches(parse_url(url)) and b.matches(parse_url(url))
    ]
    assert a.overlaps(b) == b.overlaps(a)
    assert a.overlaps(b) == bool(shared)


@given(st.text(max_size=60))
@example("https://*.")
@example("http://[")
@example("https://\u3002")
@example("https://xn--")
def test_random_entries_parse_or_raise_config_error(text):
    try:
        entry = parse_entry(text)
    except ConfigError:
        return
    assert isinstance(entry, Entry)
    assert parse_entry(str(entry)) == entry


@given(st.one_of(st.text(max_size=60), st.text(max_size=40).map(lambda t: "http://" + t)))
@example("http://[::1]:99999999999999999999/")
@example("http://\uff21\uff20evil.com/")
@example("http://xn--ls8h.la/")
def test_random_urls_parse_or_are_rejected(text):
    try:
        dest = parse_url(text)
    except UrlRejected as exc:
        assert exc.message
        return
    assert dest.scheme in ("http", "https") and dest.host and dest.target.startswith("/")
    assert dest.url.isascii()
    assert parse_url(dest.url) == dataclasses.replace(dest, userinfo=False)
