"""The `.okra.pkg` package: one deployable unit, checked completely before use.

A package is a zip archive holding exactly three members: `okra.service.json` (the
manifest), `service.wasm` (the guest module) and `service.pb.bin` (a FileDescriptorSet
with its imports). Packages come from anywhere, so loading treats the archive as hostile:
it bounds every size before and while decompressing, refuses paths that could escape a
directory, verifies the digests and builds the descriptors. Either a complete Package
comes back or a PackageError with a one-line message; nothing is half-loaded.

Writing is deterministic (fixed timestamps, sorted members), so the same inputs give the
same bytes, and atomic (temporary file, then rename), so a reader never sees half a file.
The format is described in `docs/package.md`.
"""

from __future__ import annotations

import dataclasses
import io
import os
import pathlib
import tempfile
import zipfile
from collections.abc import Mapping
from typing import BinaryIO

from google.protobuf.descriptor_pool import DescriptorPool

from okra_core.descriptors import (
    ServiceSchema,
    load_descriptor_set,
    service_names,
    service_schema,
)
from okra_core.errors import PackageError
from okra_core.manifest import (
    DESCRIPTORS_MEMBER,
    DIGESTED_MEMBERS,
    MANIFEST_MEMBER,
    WASM_MEMBER,
    Manifest,
    sha256_digest,
)

#: The conventional file name suffix of a package.
SUFFIX = ".okra.pkg"
#: Every member of a package, in the order they are written.
MEMBERS = tuple(sorted((MANIFEST_MEMBER, WASM_MEMBER, DESCRIPTORS_MEMBER)))

WASM_MAGIC = b"\0asm"
WASM_VERSION = b"\x01\x00\x00\x00"
_COMPONENT_VERSION = b"\x0d\x00\x01\x00"  # the component model's version and layer

MiB = 1024 * 1024
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)  # the earliest date a zip can hold
_COMPRESS_LEVEL = 6
_ALLOWED_COMPRESSION = {zipfile.ZIP_STORED: "stored", zipfile.ZIP_DEFLATED: "deflate"}
_CHUNK = 1 * MiB


@dataclasses.dataclass(frozen=True)
class Limits:
    """Largest uncompressed size accepted for each member, in bytes: the guard against
    zip bombs. The whole archive may be at most their sum plus `slack`."""

    wasm: int = 256 * MiB
    descriptor_set: int = 16 * MiB
    manifest: int = 1 * MiB
    slack: int = 1 * MiB

    def member(self, name: str) -> int:
        return {
            WASM_MEMBER: self.wasm,
            DESCRIPTORS_MEMBER: self.descriptor_set,
            MANIFEST_MEMBER: self.manifest,
        }[name]

    @property
    def archive(self) -> int:
        return self.wasm + self.descriptor_set + self.manifest + self.slack


DEFAULT_LIMITS = Limits()


@dataclasses.dataclass(frozen=True, eq=False)
class Package:
    """A complete, checked package.

    Constructing one checks the module header, builds the descriptors into a fresh pool
    and resolves every service the manifest lists; digests in the manifest must match.
    Use `Package.from_parts` to have the digests filled in instead.
    """

    manifest: Manifest
    wasm: bytes = dataclasses.field(repr=False)
    descriptor_set: bytes = dataclasses.field(repr=False)
    path: pathlib.Path | None = None
    #: The package's own descriptor pool, shared by its service schemas.
    pool: DescriptorPool = dataclasses.field(init=False, repr=False)
    #: Schemas of the manifest's services, by fully qualified name.
    schemas: Mapping[str, ServiceSchema] = dataclasses.field(init=False, repr=False)

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        if not isinstance(self.manifest, Manifest):
            raise TypeError(f"manifest must be a Manifest, got {type(self.manifest).__name__}")
        set_(self, "wasm", bytes(self.wasm))
        set_(self, "descriptor_set", bytes(self.descriptor_set))
        if self.path is not None:
            set_(self, "path", pathlib.Path(self.path))
        _check_digests(self.manifest, {WASM_MEMBER: self.wasm, DESCRIPTORS_MEMBER: self.descriptor_set})
        check_wasm_header(self.wasm)
        pool = load_descriptor_set(self.descriptor_set, source=DESCRIPTORS_MEMBER)
        for service in self.manifest.services:
            try:
                pool.FindServiceByName(service)
            except KeyError:
                known = ", ".join(service_names(self.descriptor_set)) or "no services"
                raise PackageError(
                    f"the manifest lists service {service}, but {DESCRIPTORS_MEMBER} does not "
                    f"define it (it defines: {known})"
                ) from None
        schemas = {
            service: service_schema(pool, self.descriptor_set, service)
            for service in self.manifest.services
        }
        set_(self, "pool", pool)
        set_(self, "schemas", schemas)

    @classmethod
    def from_parts(
        cls,
        *,
        manifest: Manifest,
        wasm: bytes,
        descriptor_set: bytes,
        path: pathlib.Path | None = None,
    ) -> Package:
        """A package from its parts, with the manifest's digests (re)computed."""
        return cls(manifest.with_digests(wasm, descriptor_set), wasm, descriptor_set, path)

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def services(self) -> tuple[str, ...]:
        return self.manifest.services

    def schema(self, service: str) -> ServiceSchema:
        """The schema of one of the package's services; PackageError if it has no such
        service."""
        try:
            return self.schemas[service]
        except KeyError:
            raise PackageError(
                f"package {self.manifest.name} has no service {service} "
                f"(it has: {', '.join(self.manifest.services)})"
            ) from None

    def to_bytes(self) -> bytes:
        """The package as an archive, byte-for-byte the same for the same package."""
        buffer = io.BytesIO()
        members = {
            MANIFEST_MEMBER: self.manifest.to_json().encode("utf-8"),
            WASM_MEMBER: self.wasm,
            DESCRIPTORS_MEMBER: self.descriptor_set,
        }
        with zipfile.ZipFile(buffer, "w") as archive:
            for name in MEMBERS:
                info = zipfile.ZipInfo(name, date_time=_ZIP_DATE)
                info.compress_type = zipfile.ZIP_DEFLATED
                info.create_system = 3  # Unix, whatever system writes it
                info.external_attr = 0o100644 << 16  # a regular file, rw-r--r--
                archive.writestr(info, members[name], compresslevel=_COMPRESS_LEVEL)
        return buffer.getvalue()


def check_wasm_header(wasm: bytes) -> None:
    """Check that `wasm` starts like a WebAssembly core module, version 1.

    The engine validates the whole module when it compiles it; this catches the wrong
    file early, without importing an engine.
    """
    if wasm[:4] != WASM_MAGIC:
        raise PackageError(
            f"{WASM_MEMBER} is not a WebAssembly module (it does not start with \\0asm): "
            "package the compiled .wasm file"
        )
    version = wasm[4:8]
    if version == _COMPONENT_VERSION:
        raise PackageError(
            f"{WASM_MEMBER} is a WebAssembly component, not a core module: build a core "
            "module (wasm32, e.g. GOOS=wasip1 GOARCH=wasm)"
        )
    if version != WASM_VERSION:
        shown = int.from_bytes(version, "little") if len(version) == 4 else "truncated"
        raise PackageError(
            f"{WASM_MEMBER} is WebAssembly binary version {shown}; OKRA runs version 1 core "
            "modules"
        )


def _check_digests(manifest: Manifest, members: Mapping[str, bytes]) -> None:
    for name in DIGESTED_MEMBERS:
        expected = manifest.digests.get(name)
        if expected is None:
            continue
        actual = sha256_digest(members[name])
        if actual != expected:
            raise PackageError(
                f"{name} does not match its digest in the manifest (manifest says "
                f"{expected[:19]}..., contents are {actual[:19]}...): the package was modified "
                "or damaged after it was built; rebuild it"
            )


# -- loading ------------------------------------------------------------------------------


def load_package(
    source: str | os.PathLike | bytes, *, limits: Limits = DEFAULT_LIMITS
) -> Package:
    """Load and check a package from a file path or from the archive's bytes.

    Raises PackageError, whose message starts with the path when loading a file.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        _check_archive_size(len(data), limits)
        return _load(data, None, limits)
    path = pathlib.Path(source)
    try:
        data = _read_file(path, limits)
        return _load(data, path, limits)
    except PackageError as exc:
        raise PackageError(f"{path}: {exc}") from None


def _read_file(path: pathlib.Path, limits: Limits) -> bytes:
    try:
        with open(path, "rb") as file:
            data = file.read(limits.archive + 1)
    except FileNotFoundError:
        raise PackageError("no such file") from None
    except IsADirectoryError:
        raise PackageError("is a directory, not a package") from None
    except OSError as exc:
        raise PackageError(f"cannot read the file: {exc.strerror or exc}") from None
    _check_archive_size(len(data), limits)
    return data


def _check_archive_size(size: int, limits: Limits) -> None:
    if size > limits.archive:
        raise PackageError(
            f"the package is larger than {_size(limits.archive)}, the most a package may be"
        )


def _load(data: bytes, path: pathlib.Path | None, limits: Limits) -> Package:
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except Exception as exc:  # zipfile raises many types on hostile input
        detail = "" if str(exc) in ("", "File is not a zip file") else f" ({exc})"
        raise PackageError(
            f"not an OKRA package: not a zip archive, or a truncated one{detail}"
        ) from None
    with archive:
        infos = _check_entries(archive.infolist())
        members = {name: _read_member(archive, infos[name], limits.member(name)) for name in MEMBERS}
    manifest = Manifest.from_json(members[MANIFEST_MEMBER])
    for name in DIGESTED_MEMBERS:
        if name not in manifest.digests:
            raise PackageError(
                f'manifest: "digests" has no entry for {name}: rebuild the package with '
                "`okra build`"
            )
    return Package(manifest, members[WASM_MEMBER], members[DESCRIPTORS_MEMBER], path)


_EXPECTED = ", ".join(MEMBERS)


def _check_entries(infos: list[zipfile.ZipInfo]) -> dict[str, zipfile.ZipInfo]:
    found: dict[str, zipfile.ZipInfo] = {}
    for info in infos:
        name = info.orig_filename
        if (
            name.startswith("/")
            or "\\" in name
            or "\0" in name
            or ".." in name.split("/")
            or (len(name) > 1 and name[1] == ":")
        ):
            raise PackageError(f"unsafe member path {name!r}: package members are plain file names")
        if name.endswith("/"):
            raise PackageError(
                f"unexpected directory entry {name!r}: a package holds exactly {_EXPECTED}"
            )
        if name in found:
            raise PackageError(f"member {name} appears twice: rebuild the package")
        if name not in MEMBERS:
            raise PackageError(f"unexpected member {name!r}: a package holds exactly {_EXPECTED}")
        if info.flag_bits & 0x1:
            raise PackageError(f"member {name} is encrypted: packages are not encrypted")
        if info.compress_type not in _ALLOWED_COMPRESSION:
            raise PackageError(
                f"member {name} uses zip compression method {info.compress_type}: packages use "
                "deflate or store"
            )
        found[name] = info
    for name in MEMBERS:
        if name not in found:
            raise PackageError(f"missing member {name}: a package holds exactly {_EXPECTED}")
    return found


def _read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, limit: int) -> bytes:
    name = info.filename
    if info.file_size > limit:
        raise PackageError(
            f"member {name} is {_size(info.file_size)} uncompressed, over the "
            f"{_size(limit)} limit for {name}"
        )
    try:
        with archive.open(info) as stream:
            return read_bounded(stream, limit, name)
    except PackageError:
        raise
    except Exception as exc:  # CRC errors, bad deflate streams, truncated data...
        raise PackageError(f"member {name} is corrupt ({exc}): rebuild or re-download the package") from None


def read_bounded(stream: BinaryIO, limit: int, name: str) -> bytes:
    """Read a stream to its end, failing as soon as it yields more than `limit` bytes:
    a size declared in an archive header is not trusted on its own."""
    chunks = []
    total = 0
    while True:
        chunk = stream.read(min(_CHUNK, limit + 1 - total))
        if not chunk:
            return b"".join(chunks)
        total += len(chunk)
        if total > limit:
            raise PackageError(
                f"member {name} decompresses to more than the {_size(limit)} limit for {name}"
            )
        chunks.append(chunk)


def _size(size: int) -> str:
    if size >= MiB and size % MiB == 0:
        return f"{size // MiB} MiB"
    if size >= MiB:
        return f"{size / MiB:.1f} MiB"
    if size >= 1024 and size % 1024 == 0:
        return f"{size // 1024} KiB"
    return f"{size} bytes"


# -- writing ------------------------------------------------------------------------------


def package_bytes(*, manifest: Manifest, wasm: bytes, descriptor_set: bytes) -> bytes:
    """A checked package as archive bytes, digests filled in (what `write_package` writes)."""
    return Package.from_parts(manifest=manifest, wasm=wasm, descriptor_set=descriptor_set).to_bytes()


def write_package(
    path: str | os.PathLike, *, manifest: Manifest, wasm: bytes, descriptor_set: bytes
) -> pathlib.Path:
    """Check the parts, fill in the digests and write the package to `path` atomically.

    Creates missing parent directories. Raises PackageError for invalid parts or a write
    that fails; on failure an existing file at `path` is left untouched.
    """
    path = pathlib.Path(path)
    data = package_bytes(manifest=manifest, wasm=wasm, descriptor_set=descriptor_set)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise PackageError(f"{path}: cannot write the package: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temp, 0o644)
        os.replace(temp, path)
    except BaseException as exc:
        try:
            os.unlink(temp)
        except OSError:
            pass
        if isinstance(exc, OSError):
            raise PackageError(f"{path}: cannot write the package: {exc.strerror or exc}") from None
        raise
    return path
