"""The packages the runtime benchmarks deploy: the WAT echo guest and the Go greeter.

Import it from a benchmark after putting the repository and `tests/` on `sys.path`.
"""

from __future__ import annotations

import pathlib
import shutil

import wasmtime

from okra_core.manifest import PoolConfig
from okra_core.package import Package, load_package
from support import FIXTURES_DIR, compile_protos, make_manifest

ROOT = pathlib.Path(__file__).resolve().parent.parent

ECHO_PROTO = """
syntax = "proto3";
package bench.v1;
message Blob { bytes data = 1; }
service Echo { rpc Echo(Blob) returns (Blob); }
"""


def echo_package(workdir: pathlib.Path) -> Package:
    """`bench.v1.Echo` answered by tests/fixtures/echo.wat, one instance."""
    descriptors = compile_protos(workdir, {"bench/v1/bench.proto": ECHO_PROTO})
    wasm = wasmtime.wat2wasm((FIXTURES_DIR / "echo.wat").read_text())
    manifest = make_manifest(name="bench", services=("bench.v1.Echo",), host_apis={}, pool=PoolConfig(1, 1))
    return Package.from_parts(manifest=manifest, wasm=wasm, descriptor_set=descriptors)


def greeter_package(workdir: pathlib.Path, given: pathlib.Path | None = None) -> Package:
    """examples/greeter, built with `okra build` in a copy under `workdir` (or `given`)."""
    if given is not None:
        return load_package(given)
    from okra_core.build import build_project

    project = workdir / "greeter"
    shutil.copytree(ROOT / "examples" / "greeter", project, ignore=shutil.ignore_patterns("dist", ".okra", "gen"))
    return load_package(build_project(project).path)
