"""The Go guest's request path: what the Go SDK and generated code cost per call, side by
side with the hand-written echo guest (tests/fixtures/echo.wat) as the baseline, and how
long `okra build` takes for a Go project.

    /work/venv/bin/python benchmarks/go_guest.py [--iterations N] [--cold-build]

Everything runs in one process, one case after another, each after its own warm-up, on
the wasmtime engine's `Instance.handle` (the runtime's request path without the actor
and pool around it). Cases:

- wat echo: tests/fixtures/echo.wat answers with its input; no decoding at all.
- go echo, empty: the Go test guest (tests/fixtures/go/wire), method Echo, empty input:
  the SDK's envelope handling and dispatch.
- go echo, ~100 B: Echo of a message with a few scalars, a string and a nested message,
  decoded into the generated struct and encoded again.
- go echo, ~10 KB: Echo of a message with repeated, packed and map fields.
- go greeter: examples/greeter SayHello, which also writes one record through okra.log:
  once below the service's log level (the host drops it after one crossing), once
  logged (decoded and handed to a logging.NullHandler).

Build: `okra build` of the wire guest with the Go build cache warm (nothing changed;
what a developer sees on each rebuild) and, with --cold-build, with an empty GOCACHE
(the first build on a machine: Go compiles its standard library for wasm).
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import pathlib
import shutil
import statistics
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import wasmtime  # noqa: E402

from lang_go_support import Guest, message_classes  # noqa: E402
from okra_core import abi  # noqa: E402
from okra_core.build import build_project  # noqa: E402
from okra_core.hostapi import HostContext, HostFunction  # noqa: E402
from okra_core.package import load_package  # noqa: E402
from okra_plugins.engine_wasmtime._engine import create_engine  # noqa: E402
from support import FIXTURES_DIR, PROTO_DIR  # noqa: E402


def measure(call, iterations: int) -> tuple[float, float]:
    for _ in range(min(2000, iterations)):
        call()
    samples = []
    gc.disable()
    try:
        for _ in range(iterations):
            start = time.perf_counter_ns()
            call()
            samples.append(time.perf_counter_ns() - start)
    finally:
        gc.enable()
    samples.sort()
    return statistics.median(samples) / 1000, samples[int(len(samples) * 0.99)] / 1000


def copy_project(workspace: pathlib.Path, source: pathlib.Path, protos=()) -> pathlib.Path:
    project = workspace / source.name
    shutil.copytree(source, project, ignore=shutil.ignore_patterns("dist", ".okra", "gen"))
    for directory in protos:
        shutil.copytree(PROTO_DIR / directory, project / "proto" / directory)
    return project


def timed_build(project: pathlib.Path, env: dict[str, str] | None = None) -> float:
    saved = dict(os.environ)
    os.environ.update(env or {})
    try:
        start = time.perf_counter()
        build_project(project)
        return time.perf_counter() - start
    finally:
        os.environ.clear()
        os.environ.update(saved)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=20000)
    parser.add_argument("--cold-build", action="store_true", help="also time a build with an empty GOCACHE")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="okra-bench-") as tmp:
        workspace = pathlib.Path(tmp)
        wire_project = copy_project(workspace, FIXTURES_DIR / "go" / "wire", protos=("wire", "tricky"))
        first = timed_build(wire_project)
        warm = timed_build(wire_project)
        cold = None
        if args.cold_build:
            cold_project = copy_project(workspace / "cold", FIXTURES_DIR / "go" / "wire", protos=("wire", "tricky"))
            cold = timed_build(cold_project, {"GOCACHE": str(workspace / "gocache")})
        wire = load_package(wire_project.joinpath("dist", "wiretest-0.1.0.okra.pkg"))
        greeter_project = copy_project(workspace, ROOT / "examples" / "greeter")
        build_project(greeter_project)
        greeter = load_package(greeter_project.joinpath("dist", "greeter-0.1.0.okra.pkg"))

        engine = create_engine(cache_dir=None)
        wat = engine.compile(wasmtime.wat2wasm(FIXTURES_DIR.joinpath("echo.wat").read_text()))
        wat_instance = wat.instantiate([], lambda fd, data: None, HostContext("echo", logging.getLogger("echo")))
        data_fn = HostFunction("okra.test", "data", ("i32",) * 4, lambda ctx, *a: 0)
        wire_guest = Guest(wire, "wire.v1.Wire", extra=[data_fn])
        greeter_guest = Guest(greeter, "greeter.v1.Greeter")
        greeter_guest.logger.removeHandler(greeter_guest.logs)
        greeter_guest.logger.addHandler(logging.NullHandler())
        greeter_guest.logger.propagate = False

        types = message_classes(wire.descriptor_set)
        Everything = types("wire.v1.Everything")
        small = Everything(f_int32=-7, f_int64=1 << 40, f_bool=True, f_string="hello, world", f_double=3.25,
                           f_nested={"name": "nested", "id": 42, "kind": 1}, f_color=2).SerializeToString()
        large_message = Everything(
            r_int64=list(range(-500, 500)), r_double=[i / 3 for i in range(300)],
            r_string=[f"item-{i}" for i in range(200)],
            r_nested=[{"name": f"n{i}", "id": i} for i in range(50)],
            m_string_string={f"k{i}": f"v{i}" for i in range(50)},
        )
        large = large_message.SerializeToString()
        hello = message_classes(greeter.descriptor_set)("greeter.v1.HelloRequest")(name="Ada").SerializeToString()

        def envelope(service, method, payload):
            return abi.encode_request(abi.request_prefix(service, method), payload)

        cases = [
            (f"wat echo, {len(small)} B", wat_instance, envelope("echo.v1.Echo", "Echo", small)),
            ("go echo, empty", wire_guest.instance, envelope("wire.v1.Wire", "Echo", b"")),
            (f"go echo, {len(small)} B", wire_guest.instance, envelope("wire.v1.Wire", "Echo", small)),
            (f"go echo, {len(large)} B", wire_guest.instance, envelope("wire.v1.Wire", "Echo", large)),
            ("go greeter SayHello, log record filtered", greeter_guest.instance,
             envelope("greeter.v1.Greeter", "SayHello", hello), logging.WARNING),
            ("go greeter SayHello, log record logged", greeter_guest.instance,
             envelope("greeter.v1.Greeter", "SayHello", hello), logging.INFO),
        ]
        results = []
        for name, instance, request, *level in cases:
            if level:
                greeter_guest.logger.setLevel(level[0])
            reply = abi.decode_response(instance.handle(request))
            assert reply[1] == 0, reply
            results.append((name, *measure(lambda: instance.handle(request), args.iterations)))

    base = results[0][1]
    print(f"per call, {args.iterations} iterations (median / p99, us; ratio of medians to wat echo)")
    for name, median, p99 in results:
        print(f"  {name:<40} {median:8.1f} {p99:8.1f}   x{median / base:.2f}")
    print(f"module size: wire guest {len(wire.wasm) / 1e6:.2f} MB, greeter {len(greeter.wasm) / 1e6:.2f} MB")
    print(f"okra build of the wire guest: first in this run {first:.1f} s, rebuild unchanged {warm:.1f} s"
          + (f", empty GOCACHE {cold:.1f} s" if cold is not None else ""))


if __name__ == "__main__":
    main()
