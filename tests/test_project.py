# Test plan: okra.toml (okra_core.project) and the build orchestration that does not need
# a guest toolchain (okra_core.build: descriptors, declared services).
# - a valid project loads with defaults (pool 1..4, services None = all).
# - the project is found from a subdirectory (like git finds its repository).
# - each defect gives a ConfigError naming the file and what to fix: no okra.toml,
#   bad TOML, missing [service], bad name, missing proto file, unknown keys, bad pool,
#   bad [actor] / [limits] tables (in the manifest's words, without "manifest:").
# - [actor], [limits] and pool.queue load into the project and reach the built manifest.
# - compile_descriptors includes imports (well-known types) and source info (comments),
#   and reports protoc errors.
# - declared_services lists services of the project's own files only.
# - build_project refuses a service that the protos do not declare, before compiling.
# - build fails where deploy would (unknown host API, bad settings, ungranted import,
#   a keyed service's key field missing from a request),
#   with the deploy error's message.
import pytest
from google.protobuf import descriptor_pb2

from okra_core.build import build_project, compile_descriptors, declared_services
from okra_core.errors import BuildError, ConfigError
from okra_core.project import load_project

PROTO = """
syntax = "proto3";
package demo.v1;
import "google/protobuf/timestamp.proto";
message Ping { google.protobuf.Timestamp at = 1; }
service Demo { rpc Echo(Ping) returns (Ping); }
"""

CONFIG = """
[service]
name = "demo"
version = "1.2.3"
language = "go"
proto = ["demo/v1/demo.proto"]
proto_root = "proto"
"""


def make_project(tmp_path, config=CONFIG, proto=PROTO):
    (tmp_path / "proto/demo/v1").mkdir(parents=True)
    (tmp_path / "proto/demo/v1/demo.proto").write_text(proto)
    (tmp_path / "okra.toml").write_text(config)
    return tmp_path


def test_valid_project_loads_with_defaults(tmp_path):
    project = load_project(make_project(tmp_path))
    assert (project.name, project.version, project.language) == ("demo", "1.2.3", "go")
    assert project.proto == ("demo/v1/demo.proto",)
    assert (project.pool_min, project.pool_max) == (1, 4)
    assert project.services is None
    assert project.package_path == tmp_path / "dist" / "demo-1.2.3.okra.pkg"


def test_actor_limits_and_queue_load_from_okra_toml(tmp_path):
    from okra_core.manifest import ActorConfig, KeySource, Limits

    config = CONFIG + (
        "[pool]\nmax = 2\nqueue = 7\n"
        '[actor]\nkind = "keyed"\nkey = { metadata = "x-user" }\nidle_seconds = 30\n'
        "[limits]\nmemory_bytes = 1048576\ntimeout_seconds = 2.5\n"
    )
    project = load_project(make_project(tmp_path, config))
    assert project.pool_queue == 7
    assert project.actor == ActorConfig("keyed", KeySource(metadata="x-user"), idle_seconds=30)
    assert project.limits == Limits(memory_bytes=1048576, timeout_seconds=2.5)


def test_project_is_found_from_a_subdirectory(tmp_path):
    make_project(tmp_path)
    assert load_project(tmp_path / "proto" / "demo").dir == tmp_path


def test_missing_project_file_says_how_to_create_one(tmp_path):
    with pytest.raises(ConfigError, match="okra init"):
        load_project(tmp_path)


@pytest.mark.parametrize(
    "config, message",
    [
        ("[service\n", "okra.toml"),
        ("[pool]\nmin = 1\n", r"missing \[service\]"),
        (CONFIG.replace('name = "demo"', 'name = "Demo Service"'), "must be lower case"),
        (CONFIG.replace("demo/v1/demo.proto", "nope.proto"), "proto file nope.proto not found"),
        (CONFIG + "colour = 1\n", r"unknown key\(s\) in \[service\]: colour"),
        (CONFIG + "[extra]\n", r"unknown table\(s\) extra \(known: service, host_apis, pool, actor, limits\)"),
        (CONFIG + "[pool]\nmin = 5\nmax = 2\n", "0 <= min <= max"),
        (CONFIG + "[pool]\nmni = 2\n", r"unknown key\(s\) in \[pool\]: mni"),
        (CONFIG.replace('version = "1.2.3"', ""), "needs version"),
        (CONFIG + '[host_apis]\n"okra.log" = 3\n', "each host API is a table"),
        (CONFIG + '[actor]\nkind = "keyed"\n', r'okra.toml: "actor.kind" is "keyed" but "actor.key" is missing'),
        (CONFIG + '[actor]\nkind = "solo"\n', r'"actor.kind" must be one of regular, singleton, keyed'),
        (CONFIG + "[limits]\nmemory = 1\n", r'unknown key "limits.memory"'),
        (CONFIG + "[pool]\nqueue = -1\n", r'"pool.queue" must be an integer'),
        ("actor = 3\n" + CONFIG, r"actor must be a table, e.g. \[actor\]"),
    ],
)
def test_each_config_defect_is_a_clear_error(tmp_path, config, message):
    make_project(tmp_path, config)
    with pytest.raises(ConfigError, match=message):
        load_project(tmp_path)


def test_descriptors_include_imports_comments_and_list_own_services(tmp_path):
    project = load_project(make_project(tmp_path))
    data = compile_descriptors(project.proto_root, project.proto)
    files = descriptor_pb2.FileDescriptorSet.FromString(data).file
    assert [f.name for f in files] == ["google/protobuf/timestamp.proto", "demo/v1/demo.proto"]
    assert files[1].source_code_info.location  # comments travel with the descriptors
    assert declared_services(data, project.proto) == ["demo.v1.Demo"]


def test_protoc_errors_are_reported(tmp_path):
    project = load_project(make_project(tmp_path, proto="syntax = \"proto3\";\nmessage {"))
    with pytest.raises(BuildError, match="protoc failed"):
        compile_descriptors(project.proto_root, project.proto)


def test_build_refuses_a_service_the_protos_do_not_declare(tmp_path):
    make_project(tmp_path, CONFIG.replace('proto_root = "proto"', 'proto_root = "proto"\nservices = ["demo.v1.Nope"]'))
    with pytest.raises(BuildError, match=r"names service demo.v1.Nope.*declared: demo.v1.Demo"):
        build_project(tmp_path)


def test_build_fails_where_deploy_would_with_the_same_message(tmp_path):
    # Checked before any compiler runs: a host API no plugin provides, bad settings.
    make_project(tmp_path, CONFIG + '[host_apis."okra.nope"]\n')
    with pytest.raises(BuildError, match="would not deploy: .*requests host API okra.nope, but no installed plugin provides it"):
        build_project(tmp_path)


def test_build_refuses_a_key_field_the_requests_do_not_have(tmp_path):
    # Checked before any compiler runs, with the deploy's message.
    make_project(tmp_path, CONFIG + '[actor]\nkind = "keyed"\nkey = { field = "nom" }\n')
    with pytest.raises(BuildError, match="would not deploy: actor.key.field 'nom': /demo.v1.Demo/Echo takes demo.v1.Ping, which has no field 'nom'"):
        build_project(tmp_path)


def test_check_deployable_names_the_ungranted_import(tmp_path):
    import wasmtime

    from okra_core.build import check_deployable
    from okra_core.plugins import get_registry
    from support import FIXTURES_DIR, make_manifest

    wasm = wasmtime.wat2wasm((FIXTURES_DIR / "log.wat").read_text())
    with pytest.raises(BuildError, match=r'would not deploy: module imports okra.log.write, .*\[host_apis."okra.log"\] table in okra.toml'):
        check_deployable(make_manifest(host_apis={}), wasm, get_registry())
    with pytest.raises(BuildError, match="okra.log level 'loud'"):
        check_deployable(make_manifest(host_apis={"okra.log": {"level": "loud"}}), wasm, get_registry())
    check_deployable(make_manifest(host_apis={"okra.log": {}}), wasm, get_registry())
