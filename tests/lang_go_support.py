"""Support for the Go guest tests: build each Go test guest once per test session, and
run it on the real wasmtime engine through the guest ABI (no runtime in between, so a
test can hand the guest bytes the runtime would refuse).

A Go build takes seconds, so guests are built once and shared: `build_guest` caches
by project name for the whole session.
"""

from __future__ import annotations

import dataclasses
import logging
import pathlib
import shutil
import tempfile
from collections.abc import Callable, Iterable, Sequence

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from okra_core import abi
from okra_core.build import build_project
from okra_core.hostapi import HostContext, HostFunction
from okra_core.package import Package, load_package
from okra_core.hookspecs import hookimpl
from okra_core.plugins import Registry, get_registry, make_plugin_manager
from support import FIXTURES_DIR, PROTO_DIR

GO_FIXTURES = FIXTURES_DIR / "go"

_built: dict[str, Package] = {}
_WASM3_CHECKED = tempfile.mkdtemp(prefix="okra-wasm3-checked-")


def build_guest(
    name: str, workspace: pathlib.Path, protos: Iterable[str] = (), host_apis: Sequence[object] = ()
) -> Package:
    """Build tests/fixtures/go/<name> (with the given top-level directories of the
    fixture protos copied into its proto root) once per session; the package.

    `host_apis` are extra HostAPI objects a test plugin registers, so that the build's
    deploy checks grant a guest's test-only imports the way a third-party plugin would."""
    if name not in _built:
        project = workspace / name
        shutil.copytree(GO_FIXTURES / name, project)
        for directory in protos:
            shutil.copytree(PROTO_DIR / directory, project / "proto" / directory)
        _built[name] = load_package(build_project(project, registry_with(host_apis)).path)
    return _built[name]


def registry_with(host_apis: Sequence[object]) -> Registry:
    """The built-in plugins plus one test plugin that registers `host_apis`."""
    if not host_apis:
        return get_registry()

    class TestPlugin:
        @hookimpl
        def register_host_apis(self, register):
            for api in host_apis:
                register(api)

    pm = make_plugin_manager(entrypoints=False)
    pm.register(TestPlugin(), name="okra-tests")
    return Registry(pm)


class FunctionsAPI:
    """A host API made of fixed HostFunctions (a test's own imports)."""

    description = "functions for tests"

    def __init__(self, namespace: str, functions: Sequence[HostFunction]):
        self.namespace = namespace
        self._functions = tuple(functions)

    def function_names(self) -> Sequence[str]:
        return [f.name for f in self._functions]

    def functions(self, config, env=None) -> Sequence[HostFunction]:
        return self._functions


def message_classes(descriptor_set: bytes) -> Callable[[str], type]:
    """Python message classes from a serialized FileDescriptorSet, by full name."""
    pool = descriptor_pool.DescriptorPool()
    for file in descriptor_pb2.FileDescriptorSet.FromString(descriptor_set).file:
        pool.Add(file)

    def get(full_name: str) -> type:
        return message_factory.GetMessageClass(pool.FindMessageTypeByName(full_name))

    return get


class RecordingHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@dataclasses.dataclass
class Reply:
    output: bytes
    code: int
    message: str


class Guest:
    """One instance of a guest module on `engine` with okra.log (and any extra host
    functions) linked; logs and stdio are recorded."""

    def __init__(
        self, package: Package, service: str, extra: Sequence[HostFunction] = (),
        engine: str = "wasmtime",
    ):
        registry = get_registry()
        # wasm3 checks a module once per cache (seconds for a Go guest): one per session
        self.engine = registry.engine(engine, cache_dir=_WASM3_CHECKED if engine == "wasm3" else None)
        self.module = self.engine.compile(package.wasm)
        self.logger = logging.getLogger(f"okra.service.{service}")
        self.logger.setLevel(logging.DEBUG)
        self.logs = RecordingHandler()
        self.logger.addHandler(self.logs)
        self.stdio: list[tuple[int, bytes]] = []
        self.context = HostContext(service, self.logger)
        log_api = registry.host_api("okra.log")
        functions = [*log_api.functions({}), *abi.abi_functions(), *extra]
        self.instance = self.module.instantiate(
            functions, lambda fd, data: self.stdio.append((fd, data)), self.context
        )
        self.service = service

    def call(
        self, method: str, payload: bytes, *, service: str | None = None,
        metadata: Sequence[tuple[str, str]] = (),
    ) -> Reply:
        request = abi.encode_request(
            abi.request_prefix(service or self.service, method),
            payload,
            abi.encode_metadata(metadata),
        )
        return Reply(*abi.decode_response(self.instance.handle(request)))

    def close(self) -> None:
        self.logger.removeHandler(self.logs)
        self.instance.close()
