# Test plan: okra_core.package, on real descriptor sets (grpc_tools.protoc) and the 8-byte
# empty WebAssembly module.
# - Round trip: write_package fills the digests, and load_package (from the path or from
#   the bytes) gives back the same manifest, module, descriptors and working schemas.
# - Determinism: the same inputs give byte-identical files, whenever and wherever written,
#   with fixed timestamps and members in sorted order; stale digests are replaced.
# - Atomic writes: no temporary file is left behind, an existing package is replaced
#   whole, and a failed write (invalid parts, unwritable target) leaves it untouched.
# - Every archive defect is a one-line PackageError saying what is wrong: not a zip, empty,
#   truncated, CRC error; missing, extra, duplicated, directory, unsafe (../, /abs,
#   backslash, drive) members; encryption and other compression methods; sizes over the
#   limits, both as declared and as actually decompressed; a file too large to be a
#   package; a missing file or a directory.
# - Every content defect: manifest JSON and types, digest missing or mismatched (naming the
#   member), descriptors that do not parse or build, a manifest service the descriptors
#   lack (listing those that exist), a module that is not WebAssembly, a component, a
#   wrong binary version.
# - Messages from a path start with the path; Package.schema on a foreign service fails
#   clearly.

from __future__ import annotations

import io
import os
import zipfile

import pytest

from okra_core.errors import PackageError
from okra_core.manifest import Manifest, sha256_digest
from okra_core.package import (
    MEMBERS,
    Limits,
    Package,
    load_package,
    package_bytes,
    read_bounded,
    write_package,
)
from support import EMPTY_WASM, compile_protos, make_manifest, zip_bytes


@pytest.fixture(scope="module")
def descriptors(tmp_path_factory) -> bytes:
    return compile_protos(tmp_path_factory.mktemp("protos"), ["greeter/v1/greeter.proto"])


@pytest.fixture(scope="module")
def events_descriptors(tmp_path_factory) -> bytes:
    return compile_protos(tmp_path_factory.mktemp("protos"), ["events/v1/events.proto"])


@pytest.fixture
def good(descriptors) -> bytes:
    return package_bytes(manifest=make_manifest(), wasm=EMPTY_WASM, descriptor_set=descriptors)


def members_of(data: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def repacked(data: bytes, **replace: bytes) -> bytes:
    """The package's members, some replaced (keyword names use _ for .)."""
    members = members_of(data)
    for key, value in replace.items():
        members[{"manifest": "okra.service.json", "wasm": "service.wasm", "pb": "service.pb.bin"}[key]] = value
    return zip_bytes(members)


def manifest_json(data: bytes, **changes) -> bytes:
    """The package's manifest JSON with top-level keys changed (None deletes)."""
    import json

    doc = json.loads(members_of(data)["okra.service.json"])
    for key, value in changes.items():
        if value is None:
            doc.pop(key, None)
        else:
            doc[key] = value
    return json.dumps(doc).encode()


def rejected(source, *fragments: str, limits: Limits | None = None) -> str:
    with pytest.raises(PackageError) as info:
        load_package(source) if limits is None else load_package(source, limits=limits)
    message = str(info.value)
    assert "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, message
    return message


# -- round trip ---------------------------------------------------------------------------


def test_written_package_loads_back_identical(tmp_path, descriptors):
    manifest = make_manifest()
    path = write_package(tmp_path / "greeter.okra.pkg", manifest=manifest, wasm=EMPTY_WASM,
                         descriptor_set=descriptors)
    assert path == tmp_path / "greeter.okra.pkg"
    package = load_package(path)
    assert package.path == path
    assert package.wasm == EMPTY_WASM
    assert package.descriptor_set == descriptors
    assert package.manifest == manifest.with_digests(EMPTY_WASM, descriptors)
    assert package.manifest.digests["service.wasm"] == sha256_digest(EMPTY_WASM)
    method = package.schema("greeter.v1.Greeter").methods["SayHello"]
    assert method.input.full_name == "greeter.v1.HelloRequest"
    assert package.schema("greeter.v1.Greeter").pool is package.pool


def test_package_loads_the_same_from_bytes_and_from_str_path(tmp_path, good):
    path = tmp_path / "p.okra.pkg"
    path.write_bytes(good)
    from_bytes = load_package(good)
    from_str = load_package(str(path))
    assert from_bytes.path is None
    assert from_str.path == path
    assert from_bytes.manifest == from_str.manifest
    assert (from_bytes.wasm, from_bytes.descriptor_set) == (from_str.wasm, from_str.descriptor_set)


def test_package_with_several_services_and_imports_round_trips(tmp_path, events_descriptors):
    manifest = make_manifest(name="events", services=("events.v1.Admin", "events.v1.Events"))
    path = write_package(tmp_path / "events.okra.pkg", manifest=manifest, wasm=EMPTY_WASM,
                         descriptor_set=events_descriptors)
    package = load_package(path)
    assert set(package.schemas) == {"events.v1.Admin", "events.v1.Events"}
    assert package.schema("events.v1.Events").methods["Watch"].server_streaming


def test_schema_of_a_service_the_package_does_not_have(good):
    with pytest.raises(PackageError, match=r"package greeter has no service x\.Y \(it has: greeter\.v1\.Greeter\)"):
        load_package(good).schema("x.Y")


def test_two_packages_never_share_a_pool(good):
    one, two = load_package(good), load_package(good)
    assert one.pool is not two.pool
    assert (one.schema("greeter.v1.Greeter").methods["SayHello"].input_class
            is not two.schema("greeter.v1.Greeter").methods["SayHello"].input_class)


# -- determinism --------------------------------------------------------------------------


def test_same_inputs_give_byte_identical_packages(tmp_path, descriptors):
    first = write_package(tmp_path / "a" / "one.okra.pkg", manifest=make_manifest(),
                          wasm=EMPTY_WASM, descriptor_set=descriptors)
    reordered = make_manifest(host_apis={"okra.log": {"level": "info", "functions": ["write"]}})
    same = make_manifest(host_apis={"okra.log": {"functions": ["write"], "level": "info"}})
    second = write_package(tmp_path / "b" / "two.okra.pkg", manifest=make_manifest(),
                           wasm=EMPTY_WASM, descriptor_set=descriptors)
    assert first.read_bytes() == second.read_bytes()
    assert (package_bytes(manifest=reordered, wasm=EMPTY_WASM, descriptor_set=descriptors)
            == package_bytes(manifest=same, wasm=EMPTY_WASM, descriptor_set=descriptors))


def test_members_are_sorted_with_fixed_timestamps_and_modes(good):
    with zipfile.ZipFile(io.BytesIO(good)) as archive:
        infos = archive.infolist()
    assert [info.filename for info in infos] == sorted(MEMBERS) == list(MEMBERS)
    assert {info.date_time for info in infos} == {(1980, 1, 1, 0, 0, 0)}
    assert {info.external_attr >> 16 for info in infos} == {0o100644}
    assert {info.compress_type for info in infos} == {zipfile.ZIP_DEFLATED}


def test_stale_digests_are_replaced_when_writing(descriptors):
    stale = make_manifest(digests={"service.wasm": "sha256:" + "0" * 64})
    data = package_bytes(manifest=stale, wasm=EMPTY_WASM, descriptor_set=descriptors)
    assert load_package(data).manifest.digests["service.wasm"] == sha256_digest(EMPTY_WASM)
    assert data == package_bytes(manifest=make_manifest(), wasm=EMPTY_WASM, descriptor_set=descriptors)


def test_constructor_refuses_parts_that_do_not_match_their_digests(descriptors):
    manifest = make_manifest().with_digests(EMPTY_WASM, descriptors)
    with pytest.raises(PackageError, match="service.wasm does not match its digest"):
        Package(manifest, EMPTY_WASM + b"\0", descriptors)


# -- atomic writes ------------------------------------------------------------------------


def test_write_replaces_an_existing_package_and_leaves_no_temporary_file(tmp_path, descriptors):
    path = tmp_path / "greeter.okra.pkg"
    path.write_bytes(b"old")
    write_package(path, manifest=make_manifest(), wasm=EMPTY_WASM, descriptor_set=descriptors)
    assert os.listdir(tmp_path) == ["greeter.okra.pkg"]
    assert load_package(path).manifest.name == "greeter"
    assert oct(path.stat().st_mode & 0o777) == oct(0o644)


@pytest.mark.parametrize(
    ("parts", "fragment"),
    [
        ({"wasm": b"not wasm"}, "service.wasm is not a WebAssembly module"),
        ({"manifest": make_manifest(services=("greeter.v1.Nope",))}, "does not define it"),
        ({"descriptor_set": b"\xff"}, "service.pb.bin is not a serialized FileDescriptorSet"),
    ],
)
def test_invalid_parts_are_refused_and_nothing_is_written(tmp_path, descriptors, parts, fragment):
    path = tmp_path / "greeter.okra.pkg"
    path.write_bytes(b"previous")
    arguments = {"manifest": make_manifest(), "wasm": EMPTY_WASM, "descriptor_set": descriptors, **parts}
    with pytest.raises(PackageError, match=fragment):
        write_package(path, **arguments)
    assert os.listdir(tmp_path) == ["greeter.okra.pkg"]
    assert path.read_bytes() == b"previous"


def test_failed_write_cleans_up_and_says_why(tmp_path, descriptors):
    target = tmp_path / "taken"
    target.mkdir()
    (target / "keep").write_text("x")
    with pytest.raises(PackageError) as info:
        write_package(target, manifest=make_manifest(), wasm=EMPTY_WASM, descriptor_set=descriptors)
    assert str(info.value).startswith(f"{target}: cannot write the package: ")
    assert sorted(os.listdir(tmp_path)) == ["taken"]
    assert os.listdir(target) == ["keep"]


def test_write_creates_missing_directories(tmp_path, descriptors):
    path = write_package(tmp_path / "dist" / "deep" / "g.okra.pkg", manifest=make_manifest(),
                         wasm=EMPTY_WASM, descriptor_set=descriptors)
    assert path.is_file()


# -- archive defects ----------------------------------------------------------------------


@pytest.mark.parametrize("data", [b"", b"hello, world", EMPTY_WASM, b"PK\x03\x04" + b"\0" * 100])
def test_bytes_that_are_not_a_zip_are_rejected(data):
    message = rejected(data, "not an OKRA package: not a zip archive, or a truncated one")
    assert message.startswith("not an OKRA package")


def test_truncated_package_is_rejected(good):
    rejected(good[: len(good) - 30], "not a zip archive, or a truncated one")


def test_crc_error_names_the_member(good):
    members = members_of(good)
    stored = zip_bytes(members, compression=zipfile.ZIP_STORED)
    at = stored.index(EMPTY_WASM)
    broken = stored[:at + 4] + b"\x02" + stored[at + 5:]  # flip the module's version byte
    rejected(broken, "member service.wasm is corrupt (", "CRC-32", "rebuild or re-download")


def test_corrupt_deflate_stream_names_the_member(good):
    members = members_of(good)
    data = zip_bytes({"okra.service.json": members["okra.service.json"],
                      "service.pb.bin": members["service.pb.bin"], "service.wasm": b"\0asm" * 1000})
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        info = archive.getinfo("service.wasm")
    start = info.header_offset + 30 + len(info.filename)
    garbage = bytes([0xFF] * 8)
    broken = data[:start] + garbage + data[start + len(garbage):]
    rejected(broken, "member service.wasm is corrupt (")


@pytest.mark.parametrize("missing", MEMBERS)
def test_missing_member_is_named(good, missing):
    members = members_of(good)
    del members[missing]
    rejected(zip_bytes(members), f"missing member {missing}: a package holds exactly "
             "okra.service.json, service.pb.bin, service.wasm")


def test_extra_member_is_named(good):
    members = members_of(good)
    members["README.md"] = b"hi"
    rejected(zip_bytes(members), "unexpected member 'README.md'")


def test_member_in_a_subdirectory_is_unexpected(good):
    members = members_of(good)
    members["lib/service.wasm"] = members.pop("service.wasm")
    rejected(zip_bytes(members), "unexpected member 'lib/service.wasm'")


def test_directory_entry_is_rejected(good):
    rejected(zip_bytes([*members_of(good).items(), ("lib/", b"")]), "unexpected directory entry 'lib/'")


def test_duplicated_member_is_rejected(good):
    members = list(members_of(good).items())
    rejected(zip_bytes(members + [("service.wasm", EMPTY_WASM)]), "member service.wasm appears twice")


@pytest.mark.parametrize("name", ["../service.wasm", "/service.wasm", "a/../../x", "..\\service.wasm",
                                  "service\\wasm", "C:service.wasm", "/etc/passwd"])
def test_member_path_that_could_escape_is_rejected(good, name):
    members = [(name, b"x"), *members_of(good).items()]
    rejected(zip_bytes(members), f"unsafe member path {name!r}: package members are plain file names")


def _set_flag_bits(data: bytes, name: bytes, bits: int) -> bytes:
    """Set general-purpose flag bits of one member, in its local and central headers."""
    out = bytearray(data)
    for signature, offset, name_at in ((b"PK\x03\x04", 6, 30), (b"PK\x01\x02", 8, 46)):
        at = out.find(signature)
        while at != -1:
            if out[at + name_at:at + name_at + len(name)] == name:
                out[at + offset] |= bits
            at = out.find(signature, at + 1)
    return bytes(out)


def test_encrypted_member_is_rejected(good):
    rejected(_set_flag_bits(good, b"service.wasm", 0x1), "member service.wasm is encrypted")


@pytest.mark.parametrize("method", [zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA])
def test_other_compression_methods_are_rejected(good, method):
    data = zip_bytes(members_of(good), compression=method)
    rejected(data, f"uses zip compression method {method}: packages use deflate or store")


def test_stored_members_are_accepted(good):
    data = zip_bytes(members_of(good), compression=zipfile.ZIP_STORED)
    assert load_package(data).wasm == EMPTY_WASM


# -- size limits --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("limits", "member"),
    [
        (Limits(wasm=7), "service.wasm"),
        (Limits(manifest=100), "okra.service.json"),
        (Limits(descriptor_set=10), "service.pb.bin"),
    ],
)
def test_declared_size_over_the_limit_is_rejected_before_reading(good, limits, member):
    rejected(good, f"member {member} is ", "uncompressed, over the ", f"limit for {member}", limits=limits)


def test_sizes_at_the_limit_are_accepted(good):
    members = members_of(good)
    limits = Limits(wasm=len(EMPTY_WASM), manifest=len(members["okra.service.json"]),
                    descriptor_set=len(members["service.pb.bin"]))
    assert load_package(good, limits=limits).wasm == EMPTY_WASM


def test_zip_bomb_is_stopped_by_its_declared_size(good):
    members = members_of(good)
    bomb = zip_bytes({**members, "service.wasm": EMPTY_WASM + b"\0" * (4 * 1024 * 1024)})
    assert len(bomb) < 64 * 1024
    rejected(bomb, "member service.wasm is 4.0 MiB uncompressed, over the 1 MiB limit",
             limits=Limits(wasm=1024 * 1024))


def test_decompressed_bytes_are_counted_whatever_the_header_declares():
    # A stream that yields more than its member's limit, as a lying header would allow.
    with pytest.raises(PackageError, match="member service.wasm decompresses to more than the 1 KiB limit"):
        read_bounded(io.BytesIO(b"\0" * 64 * 1024), 1024, "service.wasm")
    with pytest.raises(PackageError, match="more than the 1 KiB limit"):
        read_bounded(io.BytesIO(b"\0" * 1025), 1024, "service.wasm")
    assert read_bounded(io.BytesIO(b"x" * 1024), 1024, "service.wasm") == b"x" * 1024


def test_file_too_large_to_be_a_package_is_not_unzipped(tmp_path):
    limits = Limits(wasm=1024, descriptor_set=1024, manifest=512, slack=512)
    path = tmp_path / "huge.okra.pkg"
    path.write_bytes(b"\0" * 4096)
    rejected(path, f"{path}: the package is larger than 3 KiB", limits=limits)
    message = rejected(b"\0" * 4096, limits=limits)
    assert message == "the package is larger than 3 KiB, the most a package may be"


def test_missing_file_and_directory_are_clear(tmp_path):
    assert rejected(tmp_path / "nope.okra.pkg") == f"{tmp_path / 'nope.okra.pkg'}: no such file"
    assert rejected(tmp_path) == f"{tmp_path}: is a directory, not a package"


# -- content defects ----------------------------------------------------------------------


def test_invalid_manifest_json_is_rejected(good):
    rejected(repacked(good, manifest=b"{not json"), "manifest: invalid JSON at line 1 column 2")


def test_wrong_manifest_type_is_rejected(good):
    rejected(repacked(good, manifest=manifest_json(good, pool={"min": 9, "max": 2})),
             'manifest: "pool.min" (9) is larger than "pool.max" (2)')


@pytest.mark.parametrize("member", ["service.wasm", "service.pb.bin"])
def test_missing_digest_is_named(good, member):
    import json

    doc = json.loads(manifest_json(good))
    del doc["digests"][member]
    rejected(repacked(good, manifest=json.dumps(doc).encode()),
             f'manifest: "digests" has no entry for {member}: rebuild the package')


def test_missing_digests_object_is_rejected(good):
    rejected(repacked(good, manifest=manifest_json(good, digests=None)), '"digests" has no entry for service.wasm')


def test_wasm_digest_mismatch_names_the_member(good):
    other = EMPTY_WASM + b"\x00\x00"  # still a valid header
    message = rejected(repacked(good, wasm=other), "service.wasm does not match its digest in the manifest",
                       "modified or damaged", sha256_digest(other)[:19])
    assert "service.pb.bin" not in message


def test_descriptor_digest_mismatch_names_the_member(good):
    pb = members_of(good)["service.pb.bin"]
    rejected(repacked(good, pb=pb + b"\x68\x01"), "service.pb.bin does not match its digest")


def _with_consistent_digests(good: bytes, wasm: bytes | None = None, pb: bytes | None = None) -> bytes:
    """Replace members and fix the digests, so the content checks after them are reached."""
    import json

    members = members_of(good)
    wasm = members["service.wasm"] if wasm is None else wasm
    pb = members["service.pb.bin"] if pb is None else pb
    doc = json.loads(members["okra.service.json"])
    doc["digests"] = {"service.wasm": sha256_digest(wasm), "service.pb.bin": sha256_digest(pb)}
    return zip_bytes({"okra.service.json": json.dumps(doc).encode(), "service.pb.bin": pb, "service.wasm": wasm})


def test_descriptors_that_do_not_parse_are_rejected(good):
    rejected(_with_consistent_digests(good, pb=b"\xff\xff"), "service.pb.bin is not a serialized FileDescriptorSet")


def test_descriptors_with_a_missing_import_are_rejected(good, events_descriptors):
    from google.protobuf import descriptor_pb2

    fds = descriptor_pb2.FileDescriptorSet.FromString(events_descriptors)
    kept = [f for f in fds.file if f.name != "events/v1/types.proto"]
    pb = descriptor_pb2.FileDescriptorSet(file=kept).SerializeToString()
    rejected(_with_consistent_digests(good, pb=pb),
             "service.pb.bin: events/v1/events.proto imports events/v1/types.proto", "--include_imports")


def test_manifest_service_missing_from_descriptors_is_named_with_those_that_exist(good, events_descriptors):
    rejected(_with_consistent_digests(good, pb=events_descriptors),
             "the manifest lists service greeter.v1.Greeter, but service.pb.bin does not define it "
             "(it defines: events.v1.Events, events.v1.Admin)")


@pytest.mark.parametrize(
    ("wasm", "fragment"),
    [
        (b"", "service.wasm is not a WebAssembly module (it does not start with \\0asm)"),
        (b"\x7fELF\x02\x01\x01\x00", "is not a WebAssembly module"),
        (b"\0asm", "WebAssembly binary version truncated"),
        (b"\0asm\x02\0\0\0", "WebAssembly binary version 2; OKRA runs version 1 core modules"),
        (b"\0asm\x0d\0\x01\0", "service.wasm is a WebAssembly component, not a core module"),
    ],
)
def test_module_that_is_not_a_core_wasm_module_is_rejected(good, wasm, fragment):
    rejected(_with_consistent_digests(good, wasm=wasm), fragment)


def test_errors_from_a_path_start_with_the_path(tmp_path, good):
    path = tmp_path / "bad.okra.pkg"
    path.write_bytes(repacked(good, wasm=b"junk"))
    message = rejected(path, "service.wasm does not match its digest")
    assert message.startswith(f"{path}: service.wasm")
    path.write_bytes(b"junk")
    assert rejected(os.fspath(path)).startswith(f"{path}: not an OKRA package")


def test_manifest_of_a_newer_format_asks_to_upgrade(good):
    rejected(repacked(good, manifest=manifest_json(good, format=5, quota=1)),
             "manifest: format 5 is newer than this okra understands", "upgrade okra")


def test_manifest_round_trip_inside_the_package_is_exact(good):
    text = members_of(good)["okra.service.json"].decode()
    assert Manifest.from_json(text).to_json() == text
