# Test plan: the built-in secrets providers (okra_plugins.secrets_env, secrets_dir),
# made through the plugin registry (Registry.secrets_provider) as the runtime makes them.
# env:
# - secret NAME is env var OKRA_SECRET_NAME (or <prefix>NAME), read at each get: a
#   changed or removed variable is seen at the next get (rotation); raw bytes round-trip.
# - a variable without the prefix is invisible (PATH, HOME...).
# - a bad prefix (empty, a dash, a number first, not a string) or an unknown option is a
#   ConfigError that says what is allowed.
# dir:
# - secret NAME is the file path/NAME, content exactly the value (trailing newline
#   kept), read at each get: a rewritten file and a Kubernetes-style ..data symlink swap
#   are both seen at the next get.
# - a missing file is None; a missing or non-directory path, a missing path option or
#   an unknown option is a ConfigError at creation naming the path.
# - symlinks inside the directory (aliases, the ..data layout, the directory itself a
#   symlink) are followed; symlinks that leave it (absolute, ../, through a symlinked
#   subdirectory, dangling to the outside, to the directory itself) are refused
#   (SecretRefused, a PermissionError) without reading the target.
# - a FIFO, a directory or a device named NAME is refused at once (never blocks), and
#   no descriptor is left open; a file over MAX_SECRET_BYTES is refused.
# both:
# - a name that is not a SECRET_NAME (path traversal, separators, empty) is refused by
#   the provider itself, whatever the caller checked.
# - providers satisfy the SecretsProvider protocol and carry their registered name.
import os

import pytest

from hostapi_basic_support import registry
from okra_core.errors import ConfigError
from okra_core.secrets import SecretsProvider
from okra_plugins.secrets_dir import MAX_SECRET_BYTES, DirSecrets, SecretRefused
from okra_plugins.secrets_env import EnvSecrets

BAD_NAMES = ["", "../etc/passwd", "a/b", "..", ".hidden", "1ABC", "A-B", "A B", "x" * 129, "Ä"]


@pytest.fixture(scope="module")
def plugins():
    return registry()


@pytest.fixture
def secrets_dir(tmp_path):
    root = tmp_path / "secrets"
    root.mkdir()
    return root


@pytest.fixture
def outside(tmp_path):
    target = tmp_path / "outside.txt"
    target.write_bytes(b"host file, not a secret")
    return target


# ----- env ------------------------------------------------------------------------------


def test_env_provider_reads_the_prefixed_variable_at_each_get(plugins, monkeypatch):
    provider = plugins.secrets_provider("env")
    assert isinstance(provider, EnvSecrets) and isinstance(provider, SecretsProvider)
    assert provider.name == "env"
    assert provider.get("PAYMENT_TOKEN") is None
    monkeypatch.setenv("OKRA_SECRET_PAYMENT_TOKEN", "tok-1")
    assert provider.get("PAYMENT_TOKEN") == b"tok-1"
    monkeypatch.setenv("OKRA_SECRET_PAYMENT_TOKEN", "tok-2")
    assert provider.get("PAYMENT_TOKEN") == b"tok-2"
    monkeypatch.delenv("OKRA_SECRET_PAYMENT_TOKEN")
    assert provider.get("PAYMENT_TOKEN") is None


def test_env_provider_returns_the_variables_bytes_unchanged(plugins, monkeypatch):
    monkeypatch.setitem(os.environb, b"OKRA_SECRET_RAW", b"\xff\xfe= \n")
    assert plugins.secrets_provider("env").get("RAW") == b"\xff\xfe= \n"


def test_env_provider_sees_only_prefixed_variables(plugins, monkeypatch):
    monkeypatch.setenv("PLAIN", "host value")
    monkeypatch.setenv("APP_KEY", "k")
    assert plugins.secrets_provider("env").get("PLAIN") is None
    assert plugins.secrets_provider("env").get("PATH") is None
    assert plugins.secrets_provider("env", prefix="APP_").get("KEY") == b"k"


@pytest.mark.parametrize("prefix", ["", "MY-APP_", "1X_", 5, None])
def test_env_provider_refuses_a_bad_prefix(plugins, prefix):
    with pytest.raises(ConfigError, match="is not a valid start of an environment variable name"):
        plugins.secrets_provider("env", prefix=prefix)


def test_env_provider_refuses_unknown_options(plugins):
    with pytest.raises(ConfigError, match="unknown options for secrets provider env: path .known: prefix."):
        plugins.secrets_provider("env", path="/tmp")


# ----- dir ------------------------------------------------------------------------------


def test_dir_provider_reads_the_file_at_each_get(plugins, secrets_dir):
    provider = plugins.secrets_provider("dir", path=str(secrets_dir))
    assert isinstance(provider, DirSecrets) and isinstance(provider, SecretsProvider)
    assert provider.name == "dir"
    assert provider.get("DB_PASSWORD") is None
    (secrets_dir / "DB_PASSWORD").write_bytes(b"one\n")
    assert provider.get("DB_PASSWORD") == b"one\n"
    (secrets_dir / "DB_PASSWORD").write_bytes(b"two")
    assert provider.get("DB_PASSWORD") == b"two"
    (secrets_dir / "DB_PASSWORD").unlink()
    assert provider.get("DB_PASSWORD") is None


def test_dir_provider_follows_a_kubernetes_secret_volume_rotation(plugins, secrets_dir):
    # kubelet's layout: NAME -> ..data/NAME, ..data -> ..<timestamp>, swapped atomically.
    for version, value in (("..v1", b"old"), ("..v2", b"new")):
        (secrets_dir / version).mkdir()
        (secrets_dir / version / "API_KEY").write_bytes(value)
    (secrets_dir / "..data").symlink_to("..v1")
    (secrets_dir / "API_KEY").symlink_to("..data/API_KEY")
    provider = plugins.secrets_provider("dir", path=secrets_dir)
    assert provider.get("API_KEY") == b"old"
    (secrets_dir / "..data_tmp").symlink_to("..v2")
    os.replace(secrets_dir / "..data_tmp", secrets_dir / "..data")
    assert provider.get("API_KEY") == b"new"


def test_dir_provider_follows_symlinks_that_stay_inside(plugins, secrets_dir, tmp_path):
    (secrets_dir / "REAL").write_bytes(b"v")
    (secrets_dir / "ALIAS").symlink_to("REAL")
    (secrets_dir / "sub").mkdir()
    (secrets_dir / "sub" / "deep").write_bytes(b"d")
    (secrets_dir / "DEEP").symlink_to(secrets_dir / "sub" / "deep")  # absolute, inside
    link = tmp_path / "link-to-secrets"
    link.symlink_to(secrets_dir)
    provider = plugins.secrets_provider("dir", path=link)
    assert provider.get("ALIAS") == b"v"
    assert provider.get("DEEP") == b"d"


def test_dir_provider_refuses_symlinks_that_leave_the_directory(plugins, secrets_dir, outside, tmp_path):
    (secrets_dir / "ABSOLUTE").symlink_to(outside)
    (secrets_dir / "RELATIVE").symlink_to(os.path.join("..", outside.name))
    (secrets_dir / "sub").mkdir()
    (secrets_dir / "SNEAKY").symlink_to("sub/../../" + outside.name)
    (secrets_dir / "escape").symlink_to(tmp_path)
    (secrets_dir / "VIA_DIR").symlink_to("escape/" + outside.name)
    (secrets_dir / "DANGLING").symlink_to(tmp_path / "not-there-yet")
    (secrets_dir / "ETC").symlink_to("/etc/hostname")
    provider = plugins.secrets_provider("dir", path=secrets_dir)
    for name in ("ABSOLUTE", "RELATIVE", "SNEAKY", "VIA_DIR", "DANGLING", "ETC"):
        with pytest.raises(SecretRefused, match="leads outside") as exc:
            provider.get(name)
        assert isinstance(exc.value, PermissionError)
        assert "host file" not in str(exc.value)


def test_dir_provider_refuses_a_symlink_to_the_directory_itself(plugins, secrets_dir):
    (secrets_dir / "SELF").symlink_to(".")
    with pytest.raises(SecretRefused):
        plugins.secrets_provider("dir", path=secrets_dir).get("SELF")


@pytest.mark.timeout(10)
def test_dir_provider_refuses_a_fifo_without_blocking(plugins, secrets_dir):
    os.mkfifo(secrets_dir / "PIPE")
    with pytest.raises(SecretRefused, match="not a regular file"):
        plugins.secrets_provider("dir", path=secrets_dir).get("PIPE")


def test_dir_provider_refuses_directories_and_devices(plugins, secrets_dir):
    (secrets_dir / "A_DIR").mkdir()
    (secrets_dir / "ZERO").symlink_to("/dev/zero")  # outside, and a device
    provider = plugins.secrets_provider("dir", path=secrets_dir)
    with pytest.raises(SecretRefused, match="not a regular file"):
        provider.get("A_DIR")
    with pytest.raises(SecretRefused):
        provider.get("ZERO")


def test_dir_provider_closes_what_it_opens_even_when_it_refuses(plugins, secrets_dir):
    (secrets_dir / "A_DIR").mkdir()
    os.mkfifo(secrets_dir / "PIPE")
    (secrets_dir / "OK").write_bytes(b"v")
    provider = plugins.secrets_provider("dir", path=secrets_dir)
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(200):
        for name in ("A_DIR", "PIPE"):
            with pytest.raises(SecretRefused):
                provider.get(name)
        assert provider.get("OK") == b"v"
    assert len(os.listdir("/proc/self/fd")) <= before


def test_dir_provider_refuses_a_file_over_the_size_limit(plugins, secrets_dir):
    (secrets_dir / "EXACT").write_bytes(b"a" * MAX_SECRET_BYTES)
    (secrets_dir / "HUGE").write_bytes(b"a" * (MAX_SECRET_BYTES + 1))
    provider = plugins.secrets_provider("dir", path=secrets_dir)
    assert len(provider.get("EXACT")) == MAX_SECRET_BYTES
    with pytest.raises(SecretRefused, match=f"larger than {MAX_SECRET_BYTES} bytes"):
        provider.get("HUGE")


def test_dir_provider_needs_an_existing_directory(plugins, tmp_path):
    with pytest.raises(ConfigError, match=f"{tmp_path / 'nope'} does not exist"):
        plugins.secrets_provider("dir", path=tmp_path / "nope")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match=f"{tmp_path / 'file'} is not a directory"):
        plugins.secrets_provider("dir", path=str(tmp_path / "file"))
    with pytest.raises(ConfigError, match="needs option path"):
        plugins.secrets_provider("dir")
    with pytest.raises(ConfigError, match="needs option path"):
        plugins.secrets_provider("dir", path="")
    with pytest.raises(ConfigError, match="unknown options for secrets provider dir: prefix .known: path."):
        plugins.secrets_provider("dir", path=tmp_path, prefix="X")


def test_dir_provider_reads_nothing_after_its_directory_is_removed(plugins, secrets_dir):
    provider = plugins.secrets_provider("dir", path=secrets_dir)
    (secrets_dir / "GONE").write_bytes(b"x")
    (secrets_dir / "GONE").unlink()
    secrets_dir.rmdir()
    assert provider.get("GONE") is None


# ----- both -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", BAD_NAMES)
def test_providers_refuse_names_that_are_not_secret_names(plugins, secrets_dir, name, monkeypatch):
    (secrets_dir.parent / "passwd").write_text("x")
    monkeypatch.setenv("OKRA_SECRET_", "x")
    for provider in (plugins.secrets_provider("env"), plugins.secrets_provider("dir", path=secrets_dir)):
        with pytest.raises(ValueError, match="is not a secret name"):
            provider.get(name)

