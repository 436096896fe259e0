# Test plan: okra.time, okra.config, okra.secrets and okra.metrics through the runtime's
# own deploy-time path (okra_core.grants.grant with a real Registry, RuntimeConfig and
# Policy parsed from TOML), so settings, overrides and narrowing reach the host APIs as
# the runtime passes them.
# - the offline check `okra build` runs (no environment) accepts packages asking for all
#   four APIs with settings, without opening a secrets provider.
# - okra.config: deploy-time overrides replace manifest values, a policy pin beats both;
#   the functions built read the pinned value.
# - okra.secrets: a policy listing fewer names than the manifest asks for fails the
#   deploy (CapabilityError) naming the secret and the rule, audited at deploy; a policy
#   listing more grants the manifest's names; bad manifest names fail the deploy.
# - okra.metrics: a policy max_series caps the manifest's.
# - okra.time: a policy giving it settings fails the deploy (it has none to narrow).
# - a secrets provider that cannot be created fails the deploy with its message; one
#   that fails otherwise lets the deploy through and get answers -14 UNAVAILABLE.
import tomllib

import pytest

from hostapi_basic_support import Guest, make_env, registry
from okra_core.config import RuntimeConfig
from okra_core.errors import CapabilityError, ConfigError, DeployError
from okra_core.grants import grant
from okra_core.policy import Policy
from okra_core.status import StatusCode
from okra_plugins.hostapi_secrets import SecretsAPI
from support import make_manifest

ALL_FOUR = {
    "okra.time": {},
    "okra.config": {"values": {"region": "us", "port": 8080}},
    "okra.secrets": {"names": ["PAYMENT_TOKEN", "DB_PASSWORD"]},
    "okra.metrics": {"max_series": 500},
}


@pytest.fixture(scope="module")
def plugins():
    return registry()


def policy(text: str) -> RuntimeConfig:
    return RuntimeConfig(policy=Policy.parse(tomllib.loads(text), source="policy.toml"))


def test_offline_build_check_accepts_all_four_without_a_provider(plugins):
    grants = grant(make_manifest(host_apis=ALL_FOUR), plugins, RuntimeConfig())
    assert set(grants.functions) == {
        "okra.time.now", "okra.time.monotonic", "okra.config.get", "okra.secrets.get",
        "okra.metrics.record",
    }


def test_config_override_replaces_the_manifest_and_a_policy_pin_beats_both(plugins):
    config = policy('''
[[rule]]
name = "eu-only"
[rule.host_apis."okra.config".values]
region = "eu"
''')
    manifest = make_manifest(host_apis={"okra.config": ALL_FOUR["okra.config"]})
    env = make_env()
    grants = grant(manifest, plugins, config, env, overrides={"region": "ap", "port": "9090"})
    assert grants.settings["okra.config"]["values"] == {"region": "eu", "port": "9090"}
    guest = Guest(plugins.host_api("okra.config"), grants.settings["okra.config"], env)
    assert guest.fetch("get", b"region").data == b"eu"
    assert guest.fetch("get", b"port").data == b"9090"


def test_secrets_policy_without_a_requested_name_fails_the_deploy(plugins):
    config = policy('''
[[rule]]
name = "payments"
[rule.host_apis."okra.secrets"]
names = ["PAYMENT_TOKEN"]
''')
    env = make_env()
    with pytest.raises(CapabilityError) as exc:
        grant(make_manifest(host_apis={"okra.secrets": ALL_FOUR["okra.secrets"]}), plugins, config, env)
    message = str(exc.value)
    assert "operator policy rule 'payments' (policy.toml)" in message
    assert "does not allow secret DB_PASSWORD" in message
    assert env.audit.denials() == {"okra.secrets": 1}


def test_secrets_policy_listing_more_grants_the_manifests_names(plugins, tmp_path):
    (tmp_path / "PAYMENT_TOKEN").write_text("t")
    provider = plugins.secrets_provider("dir", path=tmp_path)
    config = policy('''
[[rule]]
name = "wide"
[rule.host_apis."okra.secrets"]
names = ["PAYMENT_TOKEN", "DB_PASSWORD", "OTHER"]
''')
    env = make_env(secrets=lambda: provider)
    grants = grant(make_manifest(host_apis={"okra.secrets": ALL_FOUR["okra.secrets"]}), plugins, config, env)
    assert grants.settings["okra.secrets"] == {"names": ["PAYMENT_TOKEN", "DB_PASSWORD"]}
    guest = Guest(plugins.host_api("okra.secrets"), grants.settings["okra.secrets"], env)
    assert guest.fetch("get", b"PAYMENT_TOKEN").data == b"t"
    assert guest.fetch("get", b"OTHER").code == -StatusCode.PERMISSION_DENIED


def test_bad_secret_names_in_the_manifest_fail_the_deploy(plugins):
    manifest = make_manifest(host_apis={"okra.secrets": {"names": ["../x"]}})
    with pytest.raises(DeployError, match="host API okra.secrets: .*'../x' is not a valid secret name"):
        grant(manifest, plugins, RuntimeConfig())


def test_metrics_policy_caps_max_series(plugins):
    config = policy('''
[[rule]]
name = "small"
[rule.host_apis."okra.metrics"]
max_series = 10
''')
    grants = grant(make_manifest(host_apis={"okra.metrics": ALL_FOUR["okra.metrics"]}), plugins, config, make_env())
    assert grants.settings["okra.metrics"] == {"max_series": 10}


def test_time_cannot_be_narrowed_by_settings(plugins):
    config = policy('''
[[rule]]
name = "clockless"
[rule.host_apis."okra.time"]
precision = "s"
''')
    with pytest.raises(DeployError, match="cannot be narrowed"):
        grant(make_manifest(host_apis={"okra.time": {}}), plugins, config, make_env())


def test_provider_that_cannot_be_created_fails_the_deploy(plugins, tmp_path):
    env = make_env(secrets=lambda: plugins.secrets_provider("dir", path=tmp_path / "missing"))
    with pytest.raises(DeployError, match=f"host API okra.secrets: secrets provider dir: {tmp_path / 'missing'} does not exist"):
        grant(make_manifest(host_apis={"okra.secrets": ALL_FOUR["okra.secrets"]}), plugins, RuntimeConfig(), env)


def test_provider_failing_otherwise_lets_the_deploy_through_and_get_is_unavailable(caplog):
    def down():
        raise OSError("vault unreachable")

    env = make_env(secrets=down)
    guest = Guest(SecretsAPI(), {"names": ["PAYMENT_TOKEN"]}, env)
    result = guest.fetch("get", b"PAYMENT_TOKEN")
    assert result.code == -StatusCode.UNAVAILABLE
    assert "could not be opened to read secret PAYMENT_TOKEN: vault unreachable" in caplog.text


def test_config_error_at_deploy_is_not_swallowed():
    def broken():
        raise ConfigError("secrets provider dir needs option path")

    with pytest.raises(ConfigError, match="needs option path"):
        SecretsAPI().functions({"names": ["A"]}, make_env(secrets=broken))
