# Test plan: host API okra.secrets (okra_plugins.hostapi_secrets), called through
# call_host_function on a bytearray guest memory, with a real HostEnvironment whose
# secrets are the real env or dir provider (monkeypatched environment, tmp dirs).
# - registered by its plugin under "okra.secrets": get(name_ptr, name_len, out_ptr,
#   out_cap), blocking (a provider may do I/O).
# - a granted name returns the provider's value; a value bigger than out_cap is pending.
# - rotation: the value changed in the environment / the file rewritten is what the next
#   get returns.
# - a name not granted: -7 PERMISSION_DENIED, an audit denial (counted per service and
#   API, logged to okra.audit, okra_denials_total), a message saying what to add to names
#   in [host_apis."okra.secrets"]; the provider is not asked.
# - a granted name the provider lacks: -5 NOT_FOUND naming the provider.
# - the provider failing (a symlink leaving the secrets directory): -14 UNAVAILABLE; the
#   host log names the secret and the reason, the guest message points at the log.
# - malformed names (empty, too long, not a SECRET_NAME, path traversal, non-ASCII)
#   -3 INVALID_ARGUMENT; bad name or out pointers -3 and nothing written.
# - no secret value ever appears in an error message or in any log record, whatever
#   happens (denial, not found, failure, success).
# - settings: names must be a list of SECRET_NAMEs (ConfigError naming the bad one);
#   unknown keys are ConfigErrors listing the known one; duplicate names are harmless.
# - deploy opens the provider when names are granted (a broken provider fails the
#   deploy), and does not touch it when none are.
# - policy narrowing: the effective names are the intersection; a requested name the
#   policy does not list fails with a ConfigError naming the name and the rule; a policy
#   without names narrows nothing; unknown policy keys and bad policy names fail.
# - concurrent gets from many guests while the secret rotates: every answer is one of the
#   values written, never a torn or foreign one.
import logging
import threading

import pytest

from hostapi_basic_support import Guest, make_env, registry, run_threads
from okra_core.errors import ConfigError
from okra_core.status import StatusCode
from okra_plugins.hostapi_secrets import SecretsAPI

SERVICE = "shop.v1.Cart"
TOKEN = "tok-7f3a9c-very-secret"
CONFIG = {"names": ["PAYMENT_TOKEN", "DB_PASSWORD"]}


@pytest.fixture(autouse=True)
def capture_everything(caplog):
    caplog.set_level(logging.DEBUG)
    yield
    for value in (TOKEN, "rotated-" + TOKEN, "dir-" + TOKEN, "outside-" + TOKEN):
        assert value not in caplog.text, "a secret value was logged"


@pytest.fixture
def env_provider(monkeypatch):
    monkeypatch.setenv("OKRA_SECRET_PAYMENT_TOKEN", TOKEN)
    monkeypatch.setenv("OKRA_SECRET_OTHER", "other-" + TOKEN)
    monkeypatch.delenv("OKRA_SECRET_DB_PASSWORD", raising=False)
    return registry().secrets_provider("env")


@pytest.fixture
def env(env_provider):
    return make_env(secrets=lambda: env_provider)


@pytest.fixture
def guest(env):
    return Guest(SecretsAPI(), CONFIG, env, service=SERVICE)


def assert_no_value_in(text: str) -> None:
    assert TOKEN not in text and "rotated" not in text and "outside-" not in text


def test_registered_by_its_plugin_as_one_blocking_function(env):
    api = registry().host_api("okra.secrets")
    assert isinstance(api, SecretsAPI)
    (function,) = api.functions(CONFIG, env)
    assert api.function_names() == ("get",)
    assert (function.namespace, function.name) == ("okra.secrets", "get")
    assert function.params == ("i32", "i32", "i32", "i32") and function.blocking is True


def test_granted_secret_is_returned(guest):
    result = guest.fetch("get", b"PAYMENT_TOKEN")
    assert result.code == len(TOKEN) and result.data == TOKEN.encode()


def test_value_bigger_than_out_cap_is_pending(guest):
    ptr, length = guest.memory.put(b"PAYMENT_TOKEN")
    out = guest.memory.alloc(4)
    assert guest.call("get", ptr, length, out, 4) == len(TOKEN)
    assert guest.memory.read(out, 4) == bytes(4)
    assert guest.ctx.pending == TOKEN.encode()


def test_rotated_env_secret_is_seen_at_the_next_get(guest, monkeypatch):
    assert guest.fetch("get", b"PAYMENT_TOKEN").data == TOKEN.encode()
    monkeypatch.setenv("OKRA_SECRET_PAYMENT_TOKEN", "rotated-" + TOKEN)
    assert guest.fetch("get", b"PAYMENT_TOKEN").data == ("rotated-" + TOKEN).encode()


def test_rotated_dir_secret_is_seen_at_the_next_get(tmp_path):
    (tmp_path / "PAYMENT_TOKEN").write_text("dir-" + TOKEN)
    provider = registry().secrets_provider("dir", path=tmp_path)
    guest = Guest(SecretsAPI(), CONFIG, make_env(secrets=lambda: provider))
    assert guest.fetch("get", b"PAYMENT_TOKEN").data == ("dir-" + TOKEN).encode()
    (tmp_path / "PAYMENT_TOKEN").write_text("rotated-" + TOKEN)
    assert guest.fetch("get", b"PAYMENT_TOKEN").data == ("rotated-" + TOKEN).encode()


def test_name_not_granted_is_denied_audited_and_says_what_to_add(guest, env, caplog):
    result = guest.fetch("get", b"OTHER")
    assert result.code == -StatusCode.PERMISSION_DENIED
    assert 'add "OTHER" to names in [host_apis."okra.secrets"]' in result.message
    assert SERVICE in result.message
    assert_no_value_in(result.message)
    assert env.audit.denials(SERVICE) == {"okra.secrets": 1}
    (record,) = [r for r in caplog.records if r.name == "okra.audit"]
    assert record.okra_audit == {
        "event": "denied", "service": SERVICE, "api": "okra.secrets",
        "reason": "secret OTHER is not granted", "secret": "OTHER",
    }
    assert f'okra_denials_total{{service="{SERVICE}",api="okra.secrets"}} 1' in env.metrics.render()


def test_denial_does_not_ask_the_provider():
    asked = []

    class Recording:
        name = "recording"

        def get(self, name):
            asked.append(name)
            return b"v"

    provider = Recording()
    guest = Guest(SecretsAPI(), {"names": ["A"]}, make_env(secrets=lambda: provider))
    assert guest.fetch("get", b"B").code == -StatusCode.PERMISSION_DENIED
    assert asked == []
    assert guest.fetch("get", b"A").data == b"v"
    assert asked == ["A"]


def test_every_denial_is_audited(guest, env):
    for name in (b"OTHER", b"HOME", b"PATH", b"OTHER"):
        assert guest.fetch("get", name).code == -StatusCode.PERMISSION_DENIED
    assert env.audit.denials(SERVICE) == {"okra.secrets": 4}


def test_granted_name_the_provider_lacks_is_not_found(guest, env):
    result = guest.fetch("get", b"DB_PASSWORD")
    assert result.code == -StatusCode.NOT_FOUND
    assert "DB_PASSWORD" in result.message and "(env)" in result.message
    assert env.audit.denials() == {}


def test_provider_failure_is_unavailable_and_logged_without_the_value(tmp_path, caplog):
    root = tmp_path / "secrets"
    root.mkdir()
    (tmp_path / "outside").write_text("outside-" + TOKEN)
    (root / "PAYMENT_TOKEN").symlink_to(tmp_path / "outside")
    provider = registry().secrets_provider("dir", path=root)
    guest = Guest(SecretsAPI(), CONFIG, make_env(secrets=lambda: provider))
    result = guest.fetch("get", b"PAYMENT_TOKEN")
    assert result.code == -StatusCode.UNAVAILABLE
    assert "PAYMENT_TOKEN" in result.message and "log" in result.message
    assert str(tmp_path) not in result.message
    (record,) = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert record.name == f"okra.service.{SERVICE}"
    assert "PAYMENT_TOKEN" in record.getMessage() and "leads outside" in record.getMessage()


@pytest.mark.parametrize(
    "name",
    [b"../PAYMENT_TOKEN", b"PAYMENT TOKEN", b"PAYMENT-TOKEN", b"1TOKEN", b"PAYMENT_TOKEN\0",
     b"\xc3\x84", b"\xff", b"A" * 129],
)
def test_malformed_names_are_invalid_argument(guest, env, name):
    result = guest.fetch("get", name)
    assert result.code == -StatusCode.INVALID_ARGUMENT
    assert "secret name" in result.message
    assert env.audit.denials() == {}


def test_empty_name_is_invalid_argument(guest):
    out = guest.memory.alloc(8)
    result = guest.error(guest.call("get", 100, 0, out, 8))
    assert result.code == -StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize("ptr, length", [(-1, 5), (64 * 1024 - 3, 5), (10, -1), (10, 10**9)])
def test_bad_name_pointer_is_invalid_argument(guest, ptr, length):
    result = guest.error(guest.call("get", ptr, length, 0, 0))
    assert result.code == -StatusCode.INVALID_ARGUMENT


def test_bad_out_pointer_is_invalid_argument_and_writes_nothing(guest):
    ptr, length = guest.memory.put(b"PAYMENT_TOKEN")
    snapshot = bytes(guest.memory.data)
    result = guest.error(guest.call("get", ptr, length, 64 * 1024 - 4, 64))
    assert result.code == -StatusCode.INVALID_ARGUMENT
    assert bytes(guest.memory.data) == snapshot
    assert_no_value_in(result.message)


@pytest.mark.parametrize(
    "config, fragment",
    [
        ({"names": "PAYMENT_TOKEN"}, "names must be a list of secret names"),
        ({"names": [1]}, "names must be a list of secret names"),
        ({"names": ["ok", "bad-name"]}, "'bad-name' is not a valid secret name"),
        ({"names": ["../etc/passwd"]}, "'../etc/passwd' is not a valid secret name"),
        ({"names": [""]}, "'' is not a valid secret name"),
        ({"name": ["A"]}, "unknown okra.secrets settings: name (known: names)"),
    ],
)
def test_invalid_settings_are_config_errors(env, config, fragment):
    with pytest.raises(ConfigError) as exc:
        SecretsAPI().functions(config, env)
    assert fragment in str(exc.value)


def test_duplicate_names_are_harmless(env):
    guest = Guest(SecretsAPI(), {"names": ["PAYMENT_TOKEN", "PAYMENT_TOKEN"]}, env)
    assert guest.fetch("get", b"PAYMENT_TOKEN").data == TOKEN.encode()


def test_deploy_opens_the_provider_when_names_are_granted(tmp_path):
    def broken():
        return registry().secrets_provider("dir", path=tmp_path / "missing")

    with pytest.raises(ConfigError, match="does not exist"):
        SecretsAPI().functions(CONFIG, make_env(secrets=broken))
    # No names, nothing to read: the provider is not opened (make_env's default fails the
    # test if it is).
    guest = Guest(SecretsAPI(), {}, make_env())
    assert guest.fetch("get", b"PAYMENT_TOKEN").code == -StatusCode.PERMISSION_DENIED


def test_policy_narrowing_keeps_the_names_both_allow():
    api = SecretsAPI()
    narrowed = api.narrow(CONFIG, {"rule": "payments", "names": ["DB_PASSWORD", "PAYMENT_TOKEN", "X"]})
    assert narrowed == {"names": ["PAYMENT_TOKEN", "DB_PASSWORD"]}
    assert api.narrow({}, {"rule": "r", "names": ["X"]}) == {"names": []}


def test_policy_without_a_requested_name_fails_the_deploy_naming_name_and_rule():
    with pytest.raises(ConfigError) as exc:
        SecretsAPI().narrow(CONFIG, {"rule": "payments-only", "names": ["PAYMENT_TOKEN"]})
    message = str(exc.value)
    assert "policy rule 'payments-only' does not allow secret DB_PASSWORD:" in message
    assert 'remove it from names in [host_apis."okra.secrets"]' in message
    with pytest.raises(ConfigError, match="does not allow secrets PAYMENT_TOKEN, DB_PASSWORD"):
        SecretsAPI().narrow(CONFIG, {"rule": "none", "names": []})


def test_policy_without_names_narrows_nothing():
    assert SecretsAPI().narrow(CONFIG, {"rule": "r"}) == CONFIG


def test_policy_with_unknown_keys_or_bad_names_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown okra.secrets policy settings: allow"):
        SecretsAPI().narrow(CONFIG, {"rule": "r", "allow": ["X"]})
    with pytest.raises(ConfigError, match="policy rule 'r': okra.secrets: 'a b' is not a valid"):
        SecretsAPI().narrow(CONFIG, {"rule": "r", "names": ["a b"]})


def test_concurrent_gets_while_the_secret_rotates_see_whole_values(tmp_path):
    (tmp_path / "PAYMENT_TOKEN").write_text("v0")
    provider = registry().secrets_provider("dir", path=tmp_path)
    api, env = SecretsAPI(), make_env(secrets=lambda: provider)
    written = {f"v{i}".encode() for i in range(100)}
    seen: list[bytes] = []
    stop = threading.Event()

    def rotate():
        for i in range(1, 100):
            tmp = tmp_path / f".tmp{i}"
            tmp.write_text(f"v{i}")
            tmp.replace(tmp_path / "PAYMENT_TOKEN")  # atomic, as a rotation tool does
        stop.set()

    def read():
        guest = Guest(api, CONFIG, env)
        while True:
            guest.memory.reset()
            seen.append(guest.fetch("get", b"PAYMENT_TOKEN").data)
            if stop.is_set():
                break

    run_threads([read] * 4 + [rotate])
    assert len(seen) >= 4 and set(seen) <= written
