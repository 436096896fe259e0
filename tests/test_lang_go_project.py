# Test plan: a Go project from `init_project`, built by `okra build`'s code path
# (okra_core.build.build_project) with the real Go toolchain, then run.
# - the new project builds as it is; its module speaks ABI v1, exports exactly the ABI,
#   and imports only WASI and the okra.log function it uses.
# - SayHello answers through the request envelope, and logs through okra.log with
#   structured fields; an empty name is INVALID_ARGUMENT with the message from main.go.
# - the same, deployed on the Runtime and invoked like a transport would.
# - a rebuild without changes gives the same bytes (reproducible) and rewrites nothing.
# - build failures are BuildErrors: compiler errors as `file:line:col: message` without
#   go's `# package` headers; importing a third-party module adds the offline hint.
from __future__ import annotations

import shutil

import pytest

from lang_go_support import Guest, message_classes
from okra_core.build import build_project
from okra_core.config import RuntimeConfig
from okra_core.errors import BuildError
from okra_core.package import load_package
from okra_core.plugins import get_registry
from okra_core.runtime import Runtime
from okra_core.status import RpcError, StatusCode

pytestmark = pytest.mark.slow

SERVICE = "greeter.v1.Greeter"


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    directory = tmp_path_factory.mktemp("init") / "greeter"
    get_registry().language("go").init_project(directory, "greeter")
    return directory


@pytest.fixture(scope="module")
def built(project):
    return build_project(project)


@pytest.fixture(scope="module")
def package(built):
    return load_package(built.path)


@pytest.fixture(scope="module")
def types(package):
    return message_classes(package.descriptor_set)


@pytest.fixture
def guest(package):
    guest = Guest(package, SERVICE)
    yield guest
    guest.close()


def test_new_project_builds_a_module_that_speaks_the_abi(built, package, guest):
    assert built.services == (SERVICE,)
    assert package.manifest.language == "go"
    assert guest.instance.abi_version() == package.manifest.abi_version == 2
    exports = {e.name for e in guest.module.exports}
    assert exports == {"memory", "_initialize", "okra_abi_version", "okra_buffer", "okra_handle"}
    imports = {(i.module, i.name) for i in guest.module.imports}
    assert {m for m, _ in imports} == {"wasi_snapshot_preview1", "okra.log"}
    assert ("okra.log", "write") in imports and ("okra.log", "enabled") not in imports


def test_say_hello_answers_and_logs_structured_fields(guest, types):
    request = types("greeter.v1.HelloRequest")(name="Ada")
    reply = guest.call("SayHello", request.SerializeToString())
    assert (reply.code, reply.message) == (0, "")
    assert types("greeter.v1.HelloReply").FromString(reply.output).message == "Hello, Ada!"
    (record,) = guest.logs.records
    assert (record.levelname, record.name) == ("INFO", f"okra.service.{SERVICE}")
    assert record.okra_fields == {"name": "Ada"}
    assert record.getMessage().startswith("saying hello")


def test_empty_name_is_invalid_argument(guest):
    reply = guest.call("SayHello", b"")
    assert (reply.code, reply.message) == (StatusCode.INVALID_ARGUMENT, "name must not be empty")


async def test_deployed_on_the_runtime(package, types):
    async with Runtime(RuntimeConfig(engine_options={"cache_dir": None})) as runtime:
        assert await runtime.deploy(package) == [SERVICE]
        payload = types("greeter.v1.HelloRequest")(name="Grace").SerializeToString()
        output = await runtime.invoke(SERVICE, "SayHello", payload)
        assert types("greeter.v1.HelloReply").FromString(output).message == "Hello, Grace!"
        with pytest.raises(RpcError) as failure:
            await runtime.invoke(SERVICE, "SayHello", b"")
        assert failure.value.code == StatusCode.INVALID_ARGUMENT


def test_rebuild_without_changes_is_identical_and_rewrites_nothing(project, package):
    generated = sorted((project / "gen").rglob("*.go")) + sorted((project / ".okra/sdk").iterdir())
    stamps = [p.stat().st_mtime_ns for p in generated]
    again = load_package(build_project(project).path)
    assert again.wasm == package.wasm
    assert [p.stat().st_mtime_ns for p in generated] == stamps


def broken_copy(project, tmp_path, main_go: str):
    copy = tmp_path / "greeter"
    shutil.copytree(project, copy, ignore=shutil.ignore_patterns("dist"))
    (copy / "main.go").write_text(main_go)
    return copy


def test_compile_errors_name_file_and_line(project, tmp_path):
    source = (project / "main.go").read_text()
    lines = source.splitlines()
    at = next(i for i, line in enumerate(lines) if "return &greeterv1.HelloReply" in line)
    lines.insert(at, "\tundefinedThing()")
    copy = broken_copy(project, tmp_path, "\n".join(lines) + "\n")
    with pytest.raises(BuildError) as failure:
        build_project(copy)
    message = str(failure.value)
    assert message.startswith("go build failed:\n")
    assert f"main.go:{at + 1}:2: undefined: undefinedThing" in message
    assert "# greeter" not in message


def test_third_party_imports_get_the_offline_hint(project, tmp_path):
    source = (project / "main.go").read_text().replace(
        'import (\n', 'import (\n\t"github.com/acme/nothing"\n'
    ).replace("func main() {}", "func main() { nothing.Do() }")
    with pytest.raises(BuildError, match="hint: Go guests build offline"):
        build_project(broken_copy(project, tmp_path, source))
