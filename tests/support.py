"""Shared test support: real descriptor sets, tiny modules, manifests and packages.

Import it from a test module with `from support import ...` (pytest puts `tests/` on the
path). Everything here builds real artefacts; nothing is mocked.
"""

from __future__ import annotations

import importlib.resources
import io
import itertools
import os
import pathlib
import subprocess
import sys
import warnings
import zipfile
from collections.abc import Iterable, Mapping

from okra_core.manifest import Manifest, PoolConfig

TESTS_DIR = pathlib.Path(__file__).resolve().parent
FIXTURES_DIR = TESTS_DIR / "fixtures"
#: Root of the fixture `.proto` files (`greeter/v1/greeter.proto`, `events/v1/events.proto`).
PROTO_DIR = FIXTURES_DIR / "proto"
#: The well-known types (`google/protobuf/*.proto`) that grpc_tools ships.
WELL_KNOWN_PROTO_DIR = pathlib.Path(str(importlib.resources.files("grpc_tools") / "_proto"))

#: The smallest valid WebAssembly module: the header alone.
EMPTY_WASM = b"\0asm\x01\0\0\0"

_counter = itertools.count()


def compile_protos(
    tmp_path: os.PathLike,
    files: Mapping[str, str] | Iterable[str | os.PathLike],
    include: Iterable[str | os.PathLike] = (),
) -> bytes:
    """Compile `.proto` files with `python -m grpc_tools.protoc` into a serialized
    FileDescriptorSet, imports (well-known types too) included.

    `files` is either a mapping of relative file name -> source text, written under
    `tmp_path` and compiled from there, or names of existing files relative to one of the
    `include` directories (default: the fixture protos, `PROTO_DIR`). The well-known
    types are always on the include path. Raises RuntimeError with protoc's message.
    """
    tmp_path = pathlib.Path(tmp_path)
    run = next(_counter)
    include = [pathlib.Path(p) for p in include]
    if isinstance(files, Mapping):
        root = tmp_path / f"protos-{run}"
        for name, text in files.items():
            target = root / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
        names = list(files)
        include = [root, *include]
    else:
        names = [str(name) for name in files]
        include = include or [PROTO_DIR]
    out = tmp_path / f"descriptors-{run}.pb"
    command = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        *(f"-I{directory}" for directory in [*include, WELL_KNOWN_PROTO_DIR]),
        f"--descriptor_set_out={out}",
        "--include_imports",
        *names,
    ]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"protoc failed: {result.stderr.strip()}")
    return out.read_bytes()


def make_manifest(**overrides) -> Manifest:
    """A valid manifest for the greeter fixture (`greeter.v1.Greeter`), with overrides."""
    fields = dict(
        name="greeter",
        version="0.1.0",
        abi_version=1,
        services=("greeter.v1.Greeter",),
        host_apis={"okra.log": {}},
        pool=PoolConfig(1, 4),
        language="go",
    )
    fields.update(overrides)
    return Manifest(**fields)


def zip_bytes(
    members: Iterable[tuple[str, bytes]] | Mapping[str, bytes],
    *,
    compression: int = zipfile.ZIP_DEFLATED,
) -> bytes:
    """A zip archive with exactly these members, in this order (duplicates allowed):
    for building malformed packages by hand."""
    items = members.items() if isinstance(members, Mapping) else members
    buffer = io.BytesIO()
    with warnings.catch_warnings(), zipfile.ZipFile(buffer, "w", compression=compression) as archive:
        warnings.simplefilter("ignore", UserWarning)  # "Duplicate name", on purpose
        for name, data in items:
            archive.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), data,
                             compress_type=compression)
    return buffer.getvalue()


def stop_processes(*processes: subprocess.Popen | None) -> None:
    """End what a test started (kill what still runs) and close its pipes."""
    for process in processes:
        if process is None:
            continue
        if process.poll() is None:
            process.kill()
        process.wait()
        for pipe in (process.stdin, process.stdout, process.stderr):
            if pipe is not None:
                pipe.close()
