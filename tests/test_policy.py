# Operator policy: parsing policy files, selecting packages, and narrowing grants.
#
# Grants are computed by okra_core.grants.grant with the real plugin registry (the real
# host APIs and their `narrow`), and deploys run on a real Runtime with real WAT guests
# (log.wat imports okra.log.write; relay.wat imports okra.call.invoke). The CLI cases run
# `okra serve --policy` as a user would.
#
# Test plan
# Parsing (Policy.parse / Policy.load):
# - a full policy parses: selectors, deny, host API settings, limits with sizes.
# - errors name the file and the rule: unknown top-level or rule keys, deny of a name
#   that is not a host API, a non-table host_apis entry, bad limits, duplicate rule
#   names, invalid TOML, a missing file.
# Checking against the installed host APIs (Policy.check, run when the runtime starts
# and by every grant):
# - a runtime whose policy misspells a host API fails to start.
# - a deny entry or host_apis table naming a host API no plugin provides (a typo such
#   as okra.htp) is an error naming the file, the rule and the name, listing the
#   installed host APIs (ConfigError; a DeployError from grant, whatever the package
#   asks for); `okra serve --policy` with such a typo fails on one line.
# - each API's settings are checked without any package: a bad value (allow as a
#   string, a malformed okra.call service), an unknown setting, a function the API
#   does not have, settings for an API without `narrow`; a valid policy passes.
# Selection:
# - a rule without selectors (or with only empty selector lists) applies to every
#   package; services (globs), packages
#   (globs) and tags select; a rule that selects nothing else leaves a package alone.
# Narrowing:
# - deny: a package asking for a denied API fails to deploy, naming the rule and file;
#   a package that does not ask for it deploys.
# - functions: a rule narrowing an API's functions leaves out the rest; a module that
#   imports a narrowed-away function fails the deploy naming the rule.
# - settings of an API without `narrow` (okra.log) fail the deploy with a clear message.
# - limits: a rule's caps lower the operator caps for matching packages only; several
#   matching rules take the smallest value.
# - every matching rule applies, in file order (narrowing composes).
# - a deploy-time denial is audited (counted), at DEBUG in the log.
# CLI:
# - okra serve --policy FILE with a denying rule: a one-line error naming the rule;
#   a policy file that does not parse: a one-line error naming the file.
import logging
import time

import pytest
import wasmtime
from support import FIXTURES_DIR, compile_protos, make_manifest
from test_cli import assert_one_line_error, okra

from okra_core.config import RuntimeConfig
from okra_core.errors import CapabilityError, ConfigError, DeployError
from okra_core.grants import grant
from okra_core.manifest import Limits
from okra_core.package import Package, write_package
from okra_core.plugins import get_registry
from okra_core.policy import Policy
from okra_core.runtime import Runtime
from okra_core.status import RpcError, StatusCode

FULL = """
[[rule]]
name = "untrusted"
tags = ["untrusted"]
deny = ["okra.http", "okra.secrets"]

[[rule]]
name = "shop"
services = ["shop.v1.*"]
packages = ["shop-*"]
[rule.host_apis."okra.call"]
services = ["inventory.v1.Inventory"]
[rule.limits]
memory_bytes = "64MiB"
timeout_seconds = 5
request_bytes = 65536
"""


def policy(*rules, source="policy.toml") -> Policy:
    return Policy.parse({"rule": list(rules)}, source=source)


def test_a_full_policy_parses(tmp_path):
    path = tmp_path / "policy.toml"
    path.write_text(FULL)
    loaded = Policy.load(path)
    untrusted, shop = loaded.rules
    assert untrusted.name == "untrusted" and untrusted.tags == ("untrusted",)
    assert untrusted.deny == ("okra.http", "okra.secrets")
    assert shop.services == ("shop.v1.*",) and shop.packages == ("shop-*",)
    assert shop.host_apis == {"okra.call": {"services": ["inventory.v1.Inventory"]}}
    assert shop.limits == {"memory_bytes": 64 * 1024**2, "timeout_seconds": 5.0, "request_bytes": 65536}
    assert loaded.source == str(path)


@pytest.mark.parametrize(
    "data, fragment",
    [
        ({"rules": []}, "unknown top-level keys rules"),
        ({"rule": {"name": "x"}}, "array of tables"),
        ({"rule": [{"name": "x", "allow": []}]}, "rule 1: unknown keys allow"),
        ({"rule": [{"name": "x", "deny": ["http"]}]}, "rule 'x': deny names host APIs"),
        ({"rule": [{"name": "x", "host_apis": {"okra.http": "no"}}]}, "one table per API"),
        ({"rule": [{"name": "x", "host_apis": {"okra.log": {"functions": "write"}}}]}, "list of names"),
        ({"rule": [{"name": "x", "limits": {"memory": 1}}]}, "unknown limits memory"),
        ({"rule": [{"name": "x", "limits": {"memory_bytes": "lots"}}]}, "limits.memory_bytes"),
        ({"rule": [{"name": "x", "limits": {"timeout_seconds": 0}}]}, "timeout_seconds must be a number > 0"),
        ({"rule": [{"name": "x"}, {"name": "x"}]}, "two rules are named 'x'"),
        ({"rule": [{"name": ""}]}, "'name' must be a non-empty string"),
        ({"rule": [{"tags": [1]}]}, "'tags' must be a list of non-empty strings"),
    ],
)
def test_policy_errors_name_the_file_and_rule(data, fragment):
    with pytest.raises(ConfigError) as info:
        Policy.parse(data, source="ops.toml")
    assert fragment in str(info.value) and str(info.value).startswith("ops.toml")


@pytest.mark.parametrize(
    "rule, fragment",
    [
        ({"deny": ["okra.htp"]}, "deny names okra.htp, which is not an installed host API"),
        ({"host_apis": {"okra.htpp": {"allow": []}}},
         'host_apis."okra.htpp" names okra.htpp, which is not an installed host API'),
    ],
)
def test_an_unknown_host_api_name_is_an_error_naming_rule_file_and_installed_apis(rule, fragment):
    loaded = policy({"name": "typo", **rule}, source="ops.toml")
    with pytest.raises(ConfigError) as info:
        loaded.check(get_registry())
    message = str(info.value)
    assert message.startswith("ops.toml: rule 'typo': ") and fragment in message
    assert "(installed: " in message and "okra.http" in message and "okra.log" in message
    # Every grant checks the policy, whatever the package asks for.
    with pytest.raises(DeployError, match="okra.htp"):
        grant(manifest(), get_registry(), RuntimeConfig(policy=loaded))


@pytest.mark.parametrize(
    "host_apis, fragment",
    [
        ({"okra.http": {"allow": "https://a.example"}}, "okra.http"),
        ({"okra.http": {"max_response_bytes": "lots"}}, "max_response_bytes"),
        ({"okra.http": {"alow": ["https://a.example"]}}, "unknown okra.http policy settings: alow"),
        ({"okra.call": {"services": ["Inventory"]}}, "fully qualified service names"),
        ({"okra.state": {"read_only": "yes"}}, "read_only must be true or false"),
        ({"okra.secrets": {"names": ["bad-name"]}}, "not a valid secret name"),
        ({"okra.metrics": {"max_series": -1}}, "max_series"),
        ({"okra.log": {"functions": ["wirte"]}}, "functions names wirte, which okra.log does not have"),
        ({"okra.log": {"level": "error"}}, "gives settings for okra.log, which that host API cannot be narrowed by"),
    ],
)
def test_host_api_settings_are_checked_without_a_package(host_apis, fragment):
    loaded = policy({"name": "bad", "host_apis": host_apis}, source="ops.toml")
    with pytest.raises(ConfigError) as info:
        loaded.check(get_registry())
    assert str(info.value).startswith("ops.toml: rule 'bad': ") and fragment in str(info.value)


def test_a_valid_policy_passes_the_check(tmp_path):
    path = tmp_path / "policy.toml"
    path.write_text(FULL + """
[[rule]]
name = "narrow"
[rule.host_apis."okra.http"]
allow = ["https://*.payments.example"]
timeout_seconds = 5
[rule.host_apis."okra.state"]
read_only = true
[rule.host_apis."okra.secrets"]
names = ["TOKEN"]
[rule.host_apis."okra.config"]
values = { mode = "strict" }
[rule.host_apis."okra.metrics"]
max_series = 10
[rule.host_apis."okra.log"]
functions = ["write"]
""")
    Policy.load(path).check(get_registry())


def test_unreadable_or_invalid_policy_files_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="cannot read policy file"):
        Policy.load(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[[rule]\nname=")
    with pytest.raises(ConfigError, match="is not valid TOML"):
        Policy.load(bad)


@pytest.mark.parametrize(
    "selectors, selected",
    [
        ({}, True),
        ({"tags": [], "services": [], "packages": []}, True),  # empty lists: no selector
        ({"services": ["greeter.v1.*"]}, True),
        ({"services": ["greeter.v2.*"]}, False),
        ({"packages": ["gree*"]}, True),
        ({"packages": ["shop"]}, False),
        ({"tags": ["public"]}, True),
        ({"tags": ["internal"]}, False),
        ({"tags": ["internal"], "packages": ["greeter"]}, True),
    ],
)
def test_rules_select_packages_by_service_package_or_tag(selectors, selected):
    [rule] = policy({"name": "r", **selectors}).rules
    assert rule.matches("greeter", ["greeter.v1.Greeter"], ["public"]) is selected


def manifest(**fields):
    return make_manifest(tags=("public",), **fields)


def test_a_denied_api_fails_naming_the_rule_and_file():
    config = RuntimeConfig(policy=policy({"name": "no-logs", "tags": ["public"], "deny": ["okra.log"]}))
    with pytest.raises(CapabilityError) as info:
        grant(manifest(), get_registry(), config)
    assert str(info.value) == (
        "package 'greeter' requests host API okra.log, which operator policy rule "
        "'no-logs' (policy.toml) denies"
    )
    # A package that does not ask for it is unaffected.
    assert grant(manifest(host_apis={}), get_registry(), config).functions == {}


def test_a_rule_that_does_not_select_the_package_changes_nothing():
    config = RuntimeConfig(policy=policy({"name": "r", "packages": ["other"], "deny": ["okra.log"]}))
    assert set(grant(manifest(), get_registry(), config).functions) == {"okra.log.write", "okra.log.enabled"}


def test_functions_narrowed_by_a_rule_are_left_out():
    config = RuntimeConfig(policy=policy(
        {"name": "quiet", "host_apis": {"okra.log": {"functions": ["enabled"]}}}
    ))
    grants = grant(manifest(), get_registry(), config)
    assert set(grants.functions) == {"okra.log.enabled"}
    assert grants.narrowed_functions == {"okra.log": ("quiet", ("enabled",))}


def test_settings_for_an_api_without_narrow_fail_clearly():
    config = RuntimeConfig(policy=policy({"name": "lvl", "host_apis": {"okra.log": {"level": "error"}}}))
    with pytest.raises(DeployError, match="gives settings for okra.log, which that host API cannot be narrowed by"):
        grant(manifest(), get_registry(), config)


def test_limits_cap_matching_packages_and_the_smallest_wins():
    config = RuntimeConfig(policy=policy(
        {"name": "a", "limits": {"memory_bytes": "64MiB", "timeout_seconds": 10}},
        {"name": "b", "tags": ["public"], "limits": {"memory_bytes": "32MiB"}},
        {"name": "c", "tags": ["other"], "limits": {"memory_bytes": "1MiB"}},
    ))
    capped = grant(manifest(), get_registry(), config).config
    assert capped.max_memory_bytes == 32 * 1024**2
    assert capped.max_call_seconds == 10.0
    assert capped.max_request_bytes == config.max_request_bytes


def test_every_matching_rule_applies_in_order():
    config = RuntimeConfig(policy=policy(
        {"name": "first", "host_apis": {"okra.call": {"services": ["a.v1.A", "b.v1.B"]}}},
        {"name": "second", "tags": ["public"], "host_apis": {"okra.call": {"services": ["a.v1.A"]}}},
    ))
    asks_b = manifest(host_apis={"okra.call": {"services": ["b.v1.B"]}})
    with pytest.raises(CapabilityError, match="rule 'second'"):
        grant(asks_b, get_registry(), config)
    asks_a = manifest(host_apis={"okra.call": {"services": ["a.v1.A"]}})
    assert set(grant(asks_a, get_registry(), config).functions) == {"okra.call.invoke"}


# -- through a runtime -------------------------------------------------------------------


@pytest.fixture(scope="module")
def descriptors(tmp_path_factory):
    return compile_protos(tmp_path_factory.mktemp("protos"), ["greeter/v1/greeter.proto"])


def log_package(descriptors, **fields) -> Package:
    wasm = wasmtime.wat2wasm((FIXTURES_DIR / "log.wat").read_text())
    return Package.from_parts(manifest=manifest(**fields), wasm=wasm, descriptor_set=descriptors)


async def deploy_with(tmp_path, package, rules):
    runtime = Runtime(RuntimeConfig(
        engine_options={"cache_dir": str(tmp_path / "cache")}, policy=policy(*rules),
    ))
    await runtime.start()
    try:
        await runtime.deploy(package)
        return runtime.stats("greeter.v1.Greeter")
    finally:
        await runtime.close(grace=0)


async def test_importing_a_function_narrowed_away_fails_the_deploy_naming_the_rule(tmp_path, descriptors):
    with pytest.raises(CapabilityError) as info:
        await deploy_with(tmp_path, log_package(descriptors), [
            {"name": "no-writes", "host_apis": {"okra.log": {"functions": ["enabled"]}}},
        ])
    assert str(info.value) == (
        "module imports okra.log.write, but operator policy rule 'no-writes' grants only "
        "enabled of okra.log"
    )


async def test_a_deploy_denial_is_audited_quietly(tmp_path, descriptors, caplog):
    runtime = Runtime(RuntimeConfig(
        engine_options={"cache_dir": str(tmp_path / "cache")},
        policy=policy({"name": "no-logs", "deny": ["okra.log"]}),
    ))
    await runtime.start()
    with caplog.at_level(logging.DEBUG, logger="okra.audit"), pytest.raises(CapabilityError):
        await runtime.deploy(log_package(descriptors))
    assert runtime.audit.denials("greeter") == {"okra.log": 1}
    [record] = [r for r in caplog.records if r.name == "okra.audit"]
    assert record.levelno == logging.DEBUG and record.okra_audit["at"] == "deploy"
    await runtime.close()


async def test_limits_from_a_rule_stop_a_running_guest(tmp_path, descriptors):
    wasm = wasmtime.wat2wasm((FIXTURES_DIR / "forever.wat").read_text())
    package = Package.from_parts(
        manifest=manifest(host_apis={}, limits=Limits(timeout_seconds=60)), wasm=wasm,
        descriptor_set=descriptors,
    )
    runtime = Runtime(RuntimeConfig(
        engine_options={"cache_dir": str(tmp_path / "cache")},
        policy=policy({"name": "short", "limits": {"timeout_seconds": 0.3}}),
    ))
    await runtime.start()
    try:
        await runtime.deploy(package)
        started = time.monotonic()
        with pytest.raises(RpcError) as info:
            await runtime.invoke("greeter.v1.Greeter", "SayHello", b"", timeout=30)
        assert info.value.code == StatusCode.DEADLINE_EXCEEDED
        assert "operator policy rule 'short' (policy.toml)" in info.value.message
        assert time.monotonic() - started < 5
    finally:
        await runtime.close(grace=0)


# -- CLI ------------------------------------------------------------------------------------


def test_serve_with_a_denying_policy_is_a_one_line_error(tmp_path, descriptors):
    wasm = wasmtime.wat2wasm((FIXTURES_DIR / "log.wat").read_text())
    package = write_package(tmp_path / "log.okra.pkg", manifest=manifest(), wasm=wasm, descriptor_set=descriptors)
    rules = tmp_path / "policy.toml"
    rules.write_text('[[rule]]\nname = "no-logs"\ntags = ["public"]\ndeny = ["okra.log"]\n')
    result = okra("serve", str(package), "--grpc-port", "0", "--http-port", "0", "--policy", str(rules),
                  env={"OKRA_CACHE_DIR": str(tmp_path / "cache")})
    assert_one_line_error(result, f"which operator policy rule 'no-logs' ({rules}) denies")


def test_serve_with_a_misspelt_host_api_in_the_policy_is_a_one_line_error(tmp_path, descriptors):
    wasm = wasmtime.wat2wasm((FIXTURES_DIR / "log.wat").read_text())
    package = write_package(tmp_path / "log.okra.pkg", manifest=manifest(), wasm=wasm, descriptor_set=descriptors)
    rules = tmp_path / "policy.toml"
    rules.write_text('[[rule]]\nname = "x"\ndeny = ["okra.htp"]\n')
    result = okra("serve", str(package), "--grpc-port", "0", "--http-port", "0", "--policy", str(rules),
                  env={"OKRA_CACHE_DIR": str(tmp_path / "cache")})
    assert_one_line_error(result, f"{rules}: rule 'x': deny names okra.htp, which is not an installed host API")


def test_serve_with_an_invalid_policy_file_names_it(tmp_path, descriptors):
    wasm = wasmtime.wat2wasm((FIXTURES_DIR / "log.wat").read_text())
    package = write_package(tmp_path / "log.okra.pkg", manifest=manifest(), wasm=wasm, descriptor_set=descriptors)
    rules = tmp_path / "policy.toml"
    rules.write_text('[[rule]]\nname = "x"\nallow = ["okra.log"]\n')
    result = okra("serve", str(package), "--grpc-port", "0", "--http-port", "0", "--policy", str(rules))
    assert_one_line_error(result, f"{rules}: rule 1: unknown keys allow")


async def test_a_runtime_with_a_misspelt_policy_fails_to_start(tmp_path):
    path = tmp_path / "policy.toml"
    path.write_text('[[rule]]\nname = "typo"\ndeny = ["okra.htp"]\n')
    runtime = Runtime(RuntimeConfig(policy=Policy.load(path), data_dir=str(tmp_path)))
    with pytest.raises(ConfigError, match="rule 'typo': deny names okra.htp, which is not an installed host API"):
        await runtime.start()
