# The metadata rule every transport applies before a guest sees request headers
# (okra_core.metadata.is_forwarded / filter_metadata).
#
# Test plan
# - application headers pass, lower-cased, in order, repeated keys kept;
# - reserved prefixes (grpc-, connect-, pseudo-headers), connection/framing headers and
#   binary (-bin) headers never pass, even when "allowed";
# - secret-looking names (exact list and by word) are dropped unless allowed;
# - values that are not text are dropped;
# - allow lists from user input are normalised;
# - header names: lower-case ASCII letters, digits and - _ . only.

import pytest

from okra_core.metadata import filter_metadata, is_forwarded, is_header_name, normalize_allow


@pytest.mark.parametrize("key", ["user-agent", "x-request-id", "x-tenant", "traceparent", "accept-language", "X-Locale"])
def test_application_headers_are_forwarded(key):
    assert is_forwarded(key)


@pytest.mark.parametrize(
    "key",
    ["grpc-timeout", "grpc-encoding", "connect-timeout-ms", ":authority", ":path", "te", "connection",
     "content-type", "content-length", "host", "accept-encoding", "trace-bin", "X-Thing-Bin"],
)
def test_protocol_and_binary_headers_never_pass_even_if_allowed(key):
    assert not is_forwarded(key)
    assert not is_forwarded(key, allow={key.lower()})


@pytest.mark.parametrize(
    "key",
    ["authorization", "Authorization", "proxy-authorization", "cookie", "set-cookie", "x-api-key", "api-key",
     "x-auth-token", "x-amz-security-token", "x-client-secret", "x-session-id", "x-db-password", "x-apikey",
     "x-goog-credentials"],
)
def test_secret_looking_headers_are_dropped_unless_allowed(key):
    assert not is_forwarded(key)
    assert is_forwarded(key, allow={key.lower()})


def test_filter_keeps_order_and_repeats_and_lowercases_keys():
    pairs = [("X-B", "1"), ("authorization", "secret"), ("x-a", "2"), ("x-b", "3"), ("blob-bin", b"\x00")]
    assert filter_metadata(pairs) == [("x-b", "1"), ("x-a", "2"), ("x-b", "3")]


def test_values_that_are_not_text_are_dropped():
    assert filter_metadata([("x-a", b"bytes"), ("x-b", None), ("x-c", "ok")]) == [("x-c", "ok")]


def test_allow_lists_from_user_input_are_normalised():
    allow = normalize_allow([" Authorization ", "", "X-API-Key"])
    assert allow == {"authorization", "x-api-key"}
    assert filter_metadata([("authorization", "t"), ("cookie", "c")], allow) == [("authorization", "t")]


@pytest.mark.parametrize("key", ["x-request-id", "a", "trace_id.v2", "0"])
def test_header_names_of_letters_digits_and_dash_underscore_dot_are_accepted(key):
    assert is_header_name(key)


@pytest.mark.parametrize("key", ["", "X-Upper", "bad key", "x-é", ":path", "x,y", "x\x01"])
def test_other_header_names_are_refused(key):
    assert not is_header_name(key)
