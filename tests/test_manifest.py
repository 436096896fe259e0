# Test plan: okra_core.manifest
# - A valid manifest survives to_json -> from_json unchanged; to_json is byte-identical for
#   equal manifests whatever the order of their dictionaries; optional keys get defaults.
# - "format": missing, not an integer, newer (says to upgrade), unknown older value. A newer
#   format is reported as such even when it carries keys format 1 does not know.
# - Unknown top-level keys are rejected with a "did you mean" hint; "x-" keys point to
#   "extensions"; "extensions" takes any JSON and round-trips.
# - Every required key, when missing, is named.
# - Field rules, each with its message: name, version (semver, with a hint for "v1.0.0"),
#   abi_version, services (empty, duplicated, malformed), host_apis (namespace, okra.abi,
#   config type, "functions" narrowing), pool (bounds, min <= max, unknown keys, defaults),
#   language, digests (members, format).
# - JSON-level defects: syntax errors with line and column, duplicated keys, NaN, a
#   non-object document, bytes that are not UTF-8.
# - Format 2 (docs/actors.md): "actor" (kind, key from metadata or field, max_activations,
#   idle_seconds), "limits" and "pool.queue" round-trip; each rule has its message (keyed
#   without key, key on a regular service, both key sources, bad values, unknown keys);
#   format 1 with them says to declare format 2; a manifest without them is written as
#   format 1 (older readers still load it), one with them as format 2.
# - Constructing a Manifest directly validates the same way and copies its dictionaries.
# - Every error is a PackageError with a one-line message starting with "manifest:".

from __future__ import annotations

import hashlib
import dataclasses
import json

import pytest

from okra_core.errors import PackageError
from okra_core.manifest import ActorConfig, KeySource, Limits, Manifest, PoolConfig, sha256_digest

DIGEST_A = "sha256:" + "a" * 64
DIGEST_B = "sha256:" + "b" * 64


def base() -> dict:
    return {
        "format": 1,
        "name": "greeter",
        "version": "0.1.0",
        "abi_version": 1,
        "services": ["greeter.v1.Greeter"],
        "host_apis": {"okra.log": {}},
        "pool": {"min": 1, "max": 4},
        "language": "go",
        "digests": {"service.wasm": DIGEST_A, "service.pb.bin": DIGEST_B},
    }


def load(data) -> Manifest:
    return Manifest.from_json(json.dumps(data))


def rejected(data, *fragments: str) -> str:
    with pytest.raises(PackageError) as info:
        load(data) if not isinstance(data, (str, bytes)) else Manifest.from_json(data)
    message = str(info.value)
    assert message.startswith("manifest: ")
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message
    return message


def with_(**changes) -> dict:
    data = base()
    for key, value in changes.items():
        if value is _DELETE:
            del data[key]
        else:
            data[key] = value
    return data


_DELETE = object()


# -- round trip and defaults --------------------------------------------------------------


def test_valid_manifest_round_trips_through_json():
    manifest = load(base())
    assert manifest.name == "greeter"
    assert manifest.services == ("greeter.v1.Greeter",)
    assert manifest.pool == PoolConfig(1, 4)
    assert manifest.digests == {"service.wasm": DIGEST_A, "service.pb.bin": DIGEST_B}
    assert Manifest.from_json(manifest.to_json()) == manifest


def test_to_json_is_identical_for_equal_manifests_built_in_different_orders():
    one = Manifest(
        name="a", version="1.0.0", abi_version=1, services=("x.S",),
        host_apis={"okra.log": {"level": "info", "functions": ["write"]}, "okra.kv": {}},
        digests={"service.wasm": DIGEST_A, "service.pb.bin": DIGEST_B},
        extensions={"b": 1, "a": {"z": 1, "y": 2}},
    )
    two = Manifest(
        name="a", version="1.0.0", abi_version=1, services=("x.S",),
        host_apis={"okra.kv": {}, "okra.log": {"functions": ["write"], "level": "info"}},
        digests={"service.pb.bin": DIGEST_B, "service.wasm": DIGEST_A},
        extensions={"a": {"y": 2, "z": 1}, "b": 1},
    )
    assert one.to_json() == two.to_json()
    assert one.to_json().endswith("}\n")
    assert list(json.loads(one.to_json())) == [
        "format", "name", "version", "abi_version", "services", "host_apis", "pool",
        "digests", "extensions",
    ]


def test_optional_keys_get_defaults():
    data = with_(host_apis=_DELETE, pool=_DELETE, language=_DELETE, digests=_DELETE)
    manifest = load(data)
    assert manifest.host_apis == {}
    assert manifest.pool == PoolConfig(min=1, max=4)
    assert manifest.language is None
    assert manifest.digests == {}
    assert manifest.extensions == {}
    assert "language" not in json.loads(manifest.to_json())


def test_bytes_are_accepted_as_utf8():
    data = with_(extensions={"note": "grüße"})
    manifest = Manifest.from_json(json.dumps(data, ensure_ascii=False).encode("utf-8"))
    assert manifest.extensions == {"note": "grüße"}


def test_with_digests_records_sha256_of_both_members():
    manifest = load(with_(digests=_DELETE)).with_digests(b"wasm", b"pb")
    assert manifest.digests == {
        "service.wasm": "sha256:" + hashlib.sha256(b"wasm").hexdigest(),
        "service.pb.bin": "sha256:" + hashlib.sha256(b"pb").hexdigest(),
    }
    assert sha256_digest(b"") == "sha256:" + hashlib.sha256(b"").hexdigest()


# -- format -------------------------------------------------------------------------------


def test_missing_format_says_what_to_add():
    rejected(with_(format=_DELETE), 'missing "format"', '"format": 1')


@pytest.mark.parametrize("value", ["1", 1.0, True, None])
def test_format_must_be_an_integer(value):
    rejected(with_(format=value), '"format" must be an integer')


def test_newer_format_asks_to_upgrade_even_with_unknown_keys():
    data = with_(format=5)
    data["quota"] = {"cpu": 1}
    rejected(data, "format 5 is newer", "upgrade okra")


def test_unknown_older_format_is_rejected():
    rejected(with_(format=0), "format 0 is not a manifest format")


# -- unknown keys and extensions ----------------------------------------------------------


def test_typo_in_top_level_key_is_rejected_with_suggestion():
    data = with_(host_apis=_DELETE)
    data["host_api"] = {"okra.log": {}}
    rejected(data, 'unknown key "host_api"', 'did you mean "host_apis"?')


def test_x_prefixed_key_points_to_extensions():
    data = base()
    data["x-vendor"] = 1
    rejected(data, 'unknown key "x-vendor"', '"extensions"')


def test_extensions_accept_any_json_and_round_trip():
    ext = {"com.example.ci": {"build": 12, "tags": ["a", None, True, 1.5]}}
    manifest = load(with_(extensions=ext))
    assert manifest.extensions == ext
    assert Manifest.from_json(manifest.to_json()).extensions == ext


def test_extensions_must_be_an_object():
    rejected(with_(extensions=[1]), '"extensions" must be an object')


@pytest.mark.parametrize("key", ["name", "version", "abi_version", "services"])
def test_missing_required_key_is_named(key):
    rejected(with_(**{key: _DELETE}), f'missing "{key}"')


# -- name, version, abi_version, language -------------------------------------------------


@pytest.mark.parametrize("name", ["g", "greeter-v2_x", "a" * 64])
def test_valid_names(name):
    assert load(with_(name=name)).name == name


@pytest.mark.parametrize("name", ["", "Greeter", "2greeter", "-g", "gr eeter", "grüß", "a" * 65, 7, "g\n"])
def test_invalid_names_are_rejected(name):
    rejected(with_(name=name), '"name" must be 1 to 64 characters')


@pytest.mark.parametrize(
    "version", ["0.1.0", "1.0.0-alpha.1", "1.0.0+build.5", "10.20.30-rc.1+sha.abc", "1.0.0-0A.is.legal"]
)
def test_valid_versions(version):
    assert load(with_(version=version)).version == version


@pytest.mark.parametrize("version", ["1.0", "1", "01.0.0", "1.0.0-", "1.0.0+", "1.0.0.0", "latest", "1.0.0-01", "١.0.0"])
def test_non_semver_versions_are_rejected(version):
    rejected(with_(version=version), "is not a semantic version", "MAJOR.MINOR.PATCH")


def test_leading_v_in_version_gets_a_specific_hint():
    rejected(with_(version="v1.0.0"), 'drop the leading "v"')


def test_version_must_be_a_string():
    rejected(with_(version=1), '"version" must be a string')


@pytest.mark.parametrize("value", [0, -1, "1", True, 1.0, None])
def test_abi_version_must_be_a_positive_integer(value):
    rejected(with_(abi_version=value), '"abi_version" must be an integer >= 1')


@pytest.mark.parametrize("value", ["", "Go", 3, "go lang"])
def test_invalid_language_is_rejected(value):
    rejected(with_(language=value), '"language" must be a lower-case name')


def test_null_language_means_none():
    assert load(with_(language=None)).language is None


# -- services -----------------------------------------------------------------------------


def test_services_keep_their_order():
    services = ["b.v1.B", "a.v1.A", "Root"]
    assert load(with_(services=services)).services == tuple(services)


def test_empty_services_are_rejected():
    rejected(with_(services=[]), '"services" is empty')


def test_duplicated_service_is_rejected():
    rejected(with_(services=["a.A", "b.B", "a.A"]), '"services" lists a.A twice')


@pytest.mark.parametrize("service", ["greeter.v1.", ".greeter.Greeter", "greeter/Greeter", "", 3, "1a.B"])
def test_malformed_service_name_is_rejected(service):
    rejected(with_(services=["ok.Ok", service]), '"services"[1] must be a fully qualified')


def test_services_must_be_a_list():
    rejected(with_(services="greeter.v1.Greeter"), '"services" must be a list')


# -- host_apis ----------------------------------------------------------------------------


def test_host_api_config_and_functions_round_trip():
    apis = {"okra.log": {"functions": ["write", "enabled"], "level": "info"}, "okra.kv.v2": {}}
    manifest = load(with_(host_apis=apis))
    assert manifest.host_apis == apis
    assert Manifest.from_json(manifest.to_json()).host_apis == apis


@pytest.mark.parametrize("namespace", ["log", "okra", "okra.", "okra.Log", "wasi_snapshot_preview1", "env"])
def test_host_api_namespace_must_be_okra_dot_name(namespace):
    rejected(with_(host_apis={namespace: {}}), "is not a host API namespace", '"okra.<api>"')


def test_okra_abi_cannot_be_requested():
    rejected(with_(host_apis={"okra.abi": {}}), "okra.abi, which every module gets")


@pytest.mark.parametrize("config", [[], None, "write", True])
def test_host_api_config_must_be_an_object(config):
    rejected(with_(host_apis={"okra.log": config}), "\"host_apis\"['okra.log'] must be an object")


def test_host_apis_must_be_an_object():
    rejected(with_(host_apis=["okra.log"]), '"host_apis" must be an object')


@pytest.mark.parametrize(
    ("functions", "fragment"),
    [
        ("write", "must be a list of function names"),
        ({"write": 1}, "must be a list of function names"),
        ([], "is empty"),
        (["write", "write"], "lists write twice"),
        (["write", 3], "holds 3, which is not a function name"),
        (["wr-ite"], "holds 'wr-ite'"),
    ],
)
def test_host_api_functions_narrowing_is_checked(functions, fragment):
    rejected(with_(host_apis={"okra.log": {"functions": functions}}), fragment)


# -- pool ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("pool", "expected"), [
    ({"min": 0, "max": 1}, PoolConfig(0, 1)),
    ({"min": 1024, "max": 1024}, PoolConfig(1024, 1024)),
    ({"max": 8}, PoolConfig(1, 8)),
    ({"min": 2}, PoolConfig(2, 4)),
    ({}, PoolConfig(1, 4)),
])
def test_valid_pools(pool, expected):
    assert load(with_(pool=pool)).pool == expected


@pytest.mark.parametrize(
    ("pool", "fragment"),
    [
        ({"min": 5, "max": 4}, '"pool.min" (5) is larger than "pool.max" (4)'),
        ({"min": 0, "max": 0}, '"pool.max" must be an integer from 1 to 1024, got 0'),
        ({"min": 1, "max": 1025}, "got 1025"),
        ({"min": -1, "max": 4}, '"pool.min" must be an integer >= 0, got -1'),
        ({"min": True, "max": 4}, '"pool.min" must be an integer'),
        ({"min": 1, "max": 4.0}, '"pool.max" must be an integer'),
        ({"min": 1, "max": 4, "idle": 3}, 'unknown key "pool.idle"'),
        ([1, 4], '"pool" must be an object'),
    ],
)
def test_invalid_pools_are_rejected(pool, fragment):
    rejected(with_(pool=pool), fragment)


def test_pool_config_validates_when_constructed():
    with pytest.raises(PackageError, match=r'"pool.min" \(3\) is larger'):
        PoolConfig(min=3, max=2)


# -- digests ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("digests", "fragment"),
    [
        ({"service.wasm": "sha256:" + "A" * 64}, "64 lower-case hex digits"),
        ({"service.wasm": "md5:" + "a" * 32}, "64 lower-case hex digits"),
        ({"service.wasm": "sha256:" + "a" * 63}, "64 lower-case hex digits"),
        ({"okra.service.json": DIGEST_A}, "has an entry for 'okra.service.json'"),
        ({"service.wasm": None}, "got None"),
        ("sha256:", '"digests" must be an object'),
    ],
)
def test_invalid_digests_are_rejected(digests, fragment):
    rejected(with_(digests=digests), fragment)


# -- JSON ---------------------------------------------------------------------------------


def test_invalid_json_reports_line_and_column():
    text = json.dumps(base(), indent=2).replace('"version"', "version", 1)
    message = rejected(text, "invalid JSON at line 4 column 3")
    assert "property name" in message


def test_duplicated_key_is_rejected():
    text = '{"format": 1, "name": "a", "name": "b"}'
    rejected(text, 'key "name" appears twice')


def test_nan_is_rejected():
    text = json.dumps(base()).replace('"max": 4', '"max": NaN')
    rejected(text, "NaN is not a JSON number")


@pytest.mark.parametrize(("text", "kind"), [("[]", "a list"), ('"x"', "a string"), ("null", "null")])
def test_document_must_be_an_object(text, kind):
    rejected(text, f"must be a JSON object, got {kind}")


def test_bytes_that_are_not_utf8_are_rejected():
    rejected(b'{"name": "\xff"}', "not UTF-8 text (byte 10)")


def test_empty_document_is_invalid_json():
    rejected(b"", "invalid JSON at line 1 column 1")


# -- direct construction ------------------------------------------------------------------


def test_constructor_validates_like_from_json():
    with pytest.raises(PackageError, match="^manifest: \"name\" must be"):
        Manifest(name="Bad Name", version="1.0.0", abi_version=1, services=("a.B",))
    with pytest.raises(PackageError, match="format 5 is newer"):
        Manifest(name="a", version="1.0.0", abi_version=1, services=("a.B",), format=5)


def test_constructor_copies_dictionaries_and_lists():
    host_apis = {"okra.log": {"functions": ["write"]}}
    services = ["a.B"]
    manifest = Manifest(name="a", version="1.0.0", abi_version=1, services=services, host_apis=host_apis)
    host_apis["okra.log"]["functions"].append("enabled")
    services.append("c.D")
    assert manifest.host_apis == {"okra.log": {"functions": ["write"]}}
    assert manifest.services == ("a.B",)


def test_constructor_rejects_non_json_config():
    with pytest.raises(PackageError, match="must hold only JSON values"):
        Manifest(name="a", version="1.0.0", abi_version=1, services=("a.B",),
                 host_apis={"okra.log": {"level": object()}})


# -- format 2: actor, limits, pool.queue ---------------------------------------------------


def format2(**changes) -> dict:
    return with_(format=2, **changes)


def test_actor_limits_and_queue_round_trip_as_format_2():
    data = format2(
        actor={"kind": "keyed", "key": {"field": "user_id"}, "max_activations": 10, "idle_seconds": 2.5},
        limits={"memory_bytes": 1 << 24, "timeout_seconds": 3, "request_bytes": 100, "response_bytes": 200},
        pool={"min": 0, "max": 2, "queue": 5},
    )
    manifest = load(data)
    assert manifest.actor == ActorConfig("keyed", KeySource(field="user_id"), 10, 2.5)
    assert manifest.limits == Limits(1 << 24, 3, 100, 200)
    assert manifest.pool == PoolConfig(0, 2, 5)
    assert manifest.format == 2
    again = Manifest.from_json(manifest.to_json())
    assert again == manifest
    assert json.loads(manifest.to_json())["actor"]["key"] == {"field": "user_id"}


def test_metadata_key_and_singleton_round_trip():
    keyed = load(format2(actor={"kind": "keyed", "key": {"metadata": "x-user"}}))
    assert keyed.actor.key == KeySource(metadata="x-user")
    singleton = load(format2(actor={"kind": "singleton", "idle_seconds": 60}))
    assert Manifest.from_json(singleton.to_json()).actor == ActorConfig("singleton", idle_seconds=60)


def test_manifest_without_new_keys_is_written_as_format_1():
    manifest = Manifest(name="a", version="1.0.0", abi_version=1, services=("a.B",))
    assert manifest.format == 1
    assert json.loads(manifest.to_json())["format"] == 1
    singleton = Manifest(
        name="a", version="1.0.0", abi_version=1, services=("a.B",), actor=ActorConfig("singleton")
    )
    assert json.loads(singleton.to_json())["format"] == 2


@pytest.mark.parametrize(
    "changes, fragment",
    [
        ({"actor": {"kind": "singleton"}}, 'format 1 has no "actor": declare "format": 2'),
        ({"limits": {"memory_bytes": 10}}, 'format 1 has no "limits"'),
        ({"pool": {"min": 1, "max": 2, "queue": 3}}, 'format 1 has no "pool.queue"'),
        ({"engine": "wasm3"}, 'format 1 has no "engine": declare "format": 4'),
    ],
)
def test_format_1_with_format_2_keys_says_which_format_to_declare(changes, fragment):
    rejected(with_(**changes), fragment)


def test_engine_preference_round_trips_and_needs_format_4():
    manifest = load(with_(format=4, engine="wasm3"))
    assert manifest.engine == "wasm3"
    assert Manifest.from_json(manifest.to_json()) == manifest
    written = Manifest(name="a", version="1.0.0", abi_version=1, services=("a.B",), engine="wasm3")
    assert json.loads(written.to_json())["format"] == 4
    assert "engine" not in json.loads(dataclasses.replace(written, engine=None, format=None).to_json())


@pytest.mark.parametrize("engine", ["", "Wasm3", 3, "wasm 3", "x" * 65])
def test_engine_must_be_an_engine_name(engine):
    rejected(with_(format=4, engine=engine), '"engine" must be an engine name')


@pytest.mark.parametrize(
    "actor, fragments",
    [
        ({"kind": "keyed"}, ['"actor.key" is missing', '{"field": "user_id"}']),
        ({"kind": "stateful"}, ['"actor.kind" must be one of regular, singleton, keyed']),
        ({"kind": "singleton", "key": {"field": "a"}}, ['"actor.key" applies only to keyed']),
        ({"max_activations": 3}, ['"actor.max_activations" applies only to keyed']),
        ({"kind": "keyed", "key": {"field": "a", "metadata": "b"}}, ['"actor.key" must be']),
        ({"kind": "keyed", "key": {}}, ['"actor.key" must be']),
        ({"kind": "keyed", "key": "user_id"}, ['"actor.key" must be']),
        ({"kind": "keyed", "key": {"metadata": "X-User"}}, ['"actor.key.metadata" must be a lower-case']),
        ({"kind": "keyed", "key": {"metadata": "token-bin"}}, ["not a -bin key"]),
        ({"kind": "keyed", "key": {"field": "a.b"}}, ['"actor.key.field" must be a protobuf field name']),
        ({"kind": "keyed", "key": {"field": "a"}, "max_activations": 0}, ['"actor.max_activations" must be']),
        ({"idle_seconds": 0}, ['"actor.idle_seconds" must be a number of seconds > 0']),
        ({"idle_seconds": True}, ['"actor.idle_seconds" must be']),
        ({"idle_seconds": "5"}, ['"actor.idle_seconds" must be']),
        ({"passivate": 5}, ['unknown key "actor.passivate"']),
    ],
)
def test_actor_rules(actor, fragments):
    rejected(format2(actor=actor), *fragments)


@pytest.mark.parametrize(
    "limits, fragment",
    [
        ({"memory_bytes": 0}, '"limits.memory_bytes" must be a positive integer'),
        ({"memory_bytes": 1.5}, '"limits.memory_bytes" must be a positive integer'),
        ({"request_bytes": -1}, '"limits.request_bytes" must be a positive integer'),
        ({"timeout_seconds": -1}, '"limits.timeout_seconds" must be a number of seconds > 0'),
        ({"memory": 5}, 'unknown key "limits.memory"'),
        ([], '"limits" must be an object'),
    ],
)
def test_limit_rules(limits, fragment):
    rejected(format2(limits=limits), fragment)


def test_pool_queue_rules():
    rejected(format2(pool={"max": 2, "queue": -1}), '"pool.queue" must be an integer from 0')
    rejected(format2(pool={"max": 2, "queue": "5"}), '"pool.queue" must be an integer from 0')
    assert load(format2(pool={"max": 2, "queue": 0})).pool.queue == 0
