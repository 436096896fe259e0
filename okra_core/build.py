"""`okra build`: project -> descriptors -> guest module -> `.okra.pkg`.

The language plugin compiles the guest; everything else (descriptors, manifest,
packaging) is the same for every language and lives here.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import pathlib
import subprocess
import sys
import tempfile
import time

from google.protobuf import descriptor_pb2

from okra_core import abi
from okra_core.config import RuntimeConfig
from okra_core.errors import BuildError, DeployError, PackageError
from okra_core.language import BuildRequest
from okra_core.manifest import Manifest, PoolConfig
from okra_core.package import load_package, write_package
from okra_core.plugins import Registry, get_registry
from okra_core.project import Project, load_project


@dataclasses.dataclass(frozen=True)
class BuildResult:
    project: Project
    path: pathlib.Path
    services: tuple[str, ...]
    seconds: float


def well_known_protos() -> pathlib.Path | None:
    """The include directory of google/protobuf/*.proto shipped with grpcio-tools."""
    spec = importlib.util.find_spec("grpc_tools")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = pathlib.Path(next(iter(spec.submodule_search_locations))) / "_proto"
    return path if path.is_dir() else None


def compile_descriptors(proto_root: pathlib.Path, files: tuple[str, ...]) -> bytes:
    """A FileDescriptorSet of `files` with all their imports (protoc from grpcio-tools)."""
    if importlib.util.find_spec("grpc_tools") is None:
        raise BuildError("protoc is missing: install grpcio-tools (pip install grpcio-tools)")
    with tempfile.TemporaryDirectory(prefix="okra-protoc-") as tmp:
        out = pathlib.Path(tmp) / "set.pb"
        command = [sys.executable, "-m", "grpc_tools.protoc", f"-I{proto_root}"]
        wkt = well_known_protos()
        if wkt is not None:
            command.append(f"-I{wkt}")
        # Source info keeps the protos' comments: generated code and reflection show them.
        command += [
            f"--descriptor_set_out={out}", "--include_imports", "--include_source_info", *files
        ]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            message = (result.stderr or result.stdout).strip()
            raise BuildError(f"protoc failed:\n{message}")
        return out.read_bytes()


def declared_services(descriptor_set: bytes, files: tuple[str, ...]) -> list[str]:
    fds = descriptor_pb2.FileDescriptorSet.FromString(descriptor_set)
    names = []
    for file in fds.file:
        if file.name in files:
            prefix = f"{file.package}." if file.package else ""
            names += [prefix + service.name for service in file.service]
    return names


def prepare(path: str | pathlib.Path, registry: Registry | None = None):
    """Load the project, compile its descriptors and check its services: what both
    `okra generate` and `okra build` start from. Returns (project, language, request)."""
    registry = registry or get_registry()
    project = load_project(path)
    language = registry.language(project.language)
    descriptor_set = compile_descriptors(project.proto_root, project.proto)
    available = declared_services(descriptor_set, project.proto)
    dependencies = call_dependencies(project)
    if project.services is not None:
        services = project.services
    else:  # a dependency's .proto is among the project's, but its service is called, not served
        services = tuple(s for s in available if s not in dependencies)
    if not services:
        raise BuildError(
            f"{', '.join(project.proto)} declares no service"
            + (" besides the dependencies the service calls" if available else "")
        )
    for service in services:
        if service not in available:
            raise BuildError(
                f"okra.toml names service {service}, which the protos do not declare "
                f"(declared: {', '.join(available) or 'none'})"
            )
    project.work_dir.mkdir(exist_ok=True)
    request = BuildRequest(
        project_dir=project.dir,
        name=project.name,
        descriptor_set=descriptor_set,
        proto_files=project.proto,
        services=tuple(services),
        work_dir=project.work_dir,
        dependencies=dependencies,
    )
    return project, language, request


def call_dependencies(project: Project) -> tuple[str, ...]:
    """The services the project calls: `[host_apis."okra.call"] services`. Settings of
    the wrong shape are left for okra.call itself to refuse, with its own message."""
    services = project.host_apis.get("okra.call", {}).get("services", ())
    if not isinstance(services, list | tuple) or not all(isinstance(s, str) for s in services):
        return ()
    return tuple(dict.fromkeys(services))


def generate_project(path: str | pathlib.Path, registry: Registry | None = None) -> list[pathlib.Path]:
    """Generate the guest code for the project at `path` (no compile); returns the files."""
    _, language, request = prepare(path, registry)
    return list(language.generate(request))


def check_grants(manifest: Manifest, registry: Registry, config: RuntimeConfig | None = None):
    """The requested host APIs exist and accept their settings; returns the grants.
    Raises BuildError with the message the deploy would give."""
    from okra_core.grants import grant

    try:
        return grant(manifest, registry, config or RuntimeConfig())
    except DeployError as exc:
        raise BuildError(f"the built service would not deploy: {exc}") from None


def check_key(manifest: Manifest, descriptor_set: bytes) -> None:
    """A keyed service's key field is in every method's request, as deploy checks it.
    Raises BuildError with the message the deploy would give."""
    from okra_core.descriptors import load_descriptor_set, service_schema
    from okra_core.runtime import check_key_field

    key = manifest.actor.key
    if key is None or key.field is None:
        return
    pool = load_descriptor_set(descriptor_set)
    schemas = {name: service_schema(pool, descriptor_set, name) for name in manifest.services}
    try:
        check_key_field(manifest, schemas)
    except DeployError as exc:
        raise BuildError(f"the service would not deploy: {exc}") from None


def check_deployable(
    manifest: Manifest, wasm: bytes, registry: Registry, config: RuntimeConfig | None = None
) -> None:
    """Run the deploy checks that need no running service: the requested host APIs exist
    and accept their settings, the module has the ABI's exports, and every import is
    granted. So `okra build` fails where `okra serve` would, with the same message.
    Compiling here also fills the engine's module cache for the first deploy."""
    from okra_core.grants import check_imports
    from okra_core.runtime import check_exports

    config = config or RuntimeConfig()
    grants = check_grants(manifest, registry, config)
    try:
        module = registry.engine(config.engine, **config.engine_options).compile(wasm)
        check_exports(module)
        check_imports(module, grants, manifest.host_apis, manifest.abi_version)
    except (DeployError, PackageError) as exc:
        raise BuildError(f"the built service would not deploy: {exc}") from None


def build_project(path: str | pathlib.Path, registry: Registry | None = None) -> BuildResult:
    """Build the project at `path` into `dist/<name>-<version>.okra.pkg`."""
    started = time.perf_counter()
    registry = registry or get_registry()
    project, language, request = prepare(path, registry)
    manifest = Manifest(
        name=project.name,
        version=project.version,
        abi_version=abi.ABI_VERSION,
        services=request.services,
        host_apis={ns: dict(cfg) for ns, cfg in project.host_apis.items()},
        pool=PoolConfig(min=project.pool_min, max=project.pool_max, queue=project.pool_queue),
        actor=project.actor,
        limits=project.limits,
        tags=project.tags,
        engine=project.engine,
        digests={},
        language=project.language,
    )
    check_grants(manifest, registry)  # before the compiler: the cheap mistakes first
    check_key(manifest, request.descriptor_set)
    wasm = language.build(request)
    check_deployable(manifest, wasm, registry)
    project.dist_dir.mkdir(exist_ok=True)
    out = write_package(
        project.package_path, manifest=manifest, wasm=wasm, descriptor_set=request.descriptor_set
    )
    load_package(out)  # what we ship must load
    return BuildResult(project, out, request.services, time.perf_counter() - started)
