"""Guest languages: SDK, code generation and build, behind one interface.

A language plugin (`register_languages`) turns a project directory (an `okra.toml`, the
service's `.proto` files and guest source code) into a WebAssembly module that speaks the
guest ABI. Packaging, descriptors and the manifest are done by `okra_core.build`, the same
for every language.
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Sequence
from typing import Protocol, runtime_checkable


@dataclasses.dataclass(frozen=True)
class BuildRequest:
    """Everything a language needs to build one project."""

    #: The project directory (where `okra.toml` lives).
    project_dir: pathlib.Path
    #: Service name from `okra.toml` (also the Go module / package name to use).
    name: str
    #: Serialized FileDescriptorSet of the project's protos, imports included.
    descriptor_set: bytes
    #: The proto files of the project itself (paths relative to the proto root), the
    #: ones to generate code for; imports are generated too when a language needs them.
    proto_files: tuple[str, ...]
    #: Fully qualified names of the services to implement.
    services: tuple[str, ...]
    #: A scratch directory the language may use and leave behind (`.okra/build`).
    work_dir: pathlib.Path
    #: Fully qualified names of the services the project calls (its dependencies,
    #: `[host_apis."okra.call"] services`), to generate typed clients for.
    dependencies: tuple[str, ...] = ()


@runtime_checkable
class Language(Protocol):
    #: Short name used in `okra.toml` (`language = "go"`) and `okra init --lang`.
    name: str
    description: str

    def init_project(self, project_dir: pathlib.Path, name: str) -> Sequence[pathlib.Path]:
        """Write a new project's files (proto, okra.toml, guest source, .gitignore) into
        an empty or missing directory. Returns the files written."""

    def generate(self, request: BuildRequest) -> Sequence[pathlib.Path]:
        """Generate guest code for the services (message types, service interface,
        dispatch). Returns the files written."""

    def build(self, request: BuildRequest) -> bytes:
        """Generate, compile and return the WebAssembly module.

        Raise BuildError with the compiler's message on failure.
        """

    def source_globs(self) -> Sequence[str]:
        """Globs (relative to the project) of the files whose changes call for a
        rebuild; generated and output files must not match."""
