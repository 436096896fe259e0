"""What the package checks cost: `parse_input` per request, `load_package` per deploy.

Each figure is measured side by side with a baseline in the same process:

* `parse_input(method, payload)` against the bare protobuf parse it wraps
  (`input_class.FromString(payload)`), for a small and a 64 KiB request;
* `load_package(bytes)` of a package whose module is 2 MiB (the size of a Go guest)
  against the least any loader must do: open the zip, inflate the members and hash them.

    python benchmarks/package_checks.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import pathlib
import subprocess
import sys
import tempfile
import timeit
import zipfile

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import grpc_tools  # noqa: E402

from okra_core.descriptors import load_descriptor_set, parse_input, service_schema  # noqa: E402
from okra_core.manifest import Manifest  # noqa: E402
from okra_core.package import load_package, package_bytes  # noqa: E402

PROTO_DIR = ROOT / "tests" / "fixtures" / "proto"
WELL_KNOWN = pathlib.Path(grpc_tools.__file__).parent / "_proto"


def descriptor_set() -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        out = pathlib.Path(tmp) / "set.pb"
        subprocess.run(
            [sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTO_DIR}", f"-I{WELL_KNOWN}",
             f"--descriptor_set_out={out}", "--include_imports", "events/v1/events.proto"],
            check=True,
        )
        return out.read_bytes()


def best(stmt, number: int, repeat: int) -> float:
    """Best time per call, in microseconds."""
    return min(timeit.repeat(stmt, number=number, repeat=repeat)) / number * 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    data = descriptor_set()
    schema = service_schema(load_descriptor_set(data), data, "events.v1.Events")
    method = schema.methods["Publish"]
    cls = method.input_class
    print(f"python {sys.version.split()[0]}, protobuf parse_input vs bare FromString")
    for label, body in (("small", b"x" * 32), ("64 KiB", os.urandom(64 * 1024))):
        event = cls(topic="orders", body=body, labels={"region": "eu", "tier": "gold"})
        event.at.seconds = 1_700_000_000
        payload = event.SerializeToString()
        number = 200_000 if label == "small" else 20_000
        base = best(lambda: cls.FromString(payload), number, args.repeat)
        ours = best(lambda: parse_input(method, payload), number, args.repeat)
        print(f"  {label:7s} ({len(payload):6d} B): FromString {base:6.2f} us, "
              f"parse_input {ours:6.2f} us, ratio {ours / base:.2f}")

    # A 2 MiB module that compresses like real code (about 3:1), not like zeros.
    rng = __import__("random").Random(1)
    words = [os.urandom(4) for _ in range(4096)]
    wasm = b"\0asm\x01\0\0\0" + b"".join(rng.choice(words) for _ in range(512 * 1024))
    manifest = Manifest(name="events", version="1.0.0", abi_version=1, services=("events.v1.Events",))
    package = package_bytes(manifest=manifest, wasm=wasm, descriptor_set=data)

    def baseline() -> None:
        with zipfile.ZipFile(io.BytesIO(package)) as archive:
            for name in archive.namelist():
                hashlib.sha256(archive.read(name)).digest()

    base = best(baseline, 10, args.repeat) / 1000
    ours = best(lambda: load_package(package), 10, args.repeat) / 1000
    print(f"load_package, {len(wasm) / 2**20:.1f} MiB module, {len(package) / 2**20:.2f} MiB archive: "
          f"unzip+hash {base:.2f} ms, load_package {ours:.2f} ms, ratio {ours / base:.2f}")


if __name__ == "__main__":
    main()
