"""A 100-byte echo through the wasmtime engine's request path, side by side with the
same echo through wasmtime-py's convenience API and, if installed, through Extism.

    /work/venv/bin/python benchmarks/engine_echo.py [--iterations N] [--size BYTES]

All three run in one process on the same machine, one after another, each after its own
warm-up; the table gives per-call median and p99 and the ratios against the engine path.

- okra engine: `Instance.handle(envelope)` of okra_plugins.engine_wasmtime, on
  tests/fixtures/echo.wat (parses the request envelope, answers with its input).
- wasmtime-py convenience: the same module and the same steps (write the envelope into
  the request buffer, call okra_handle, read the response) through `Memory.write`,
  `Func.__call__` and `Memory.read`.
- extism: an Extism plugin echoing its input (`input_offset`, `input_length`,
  `output_set` from extism:host/env), called with `Plugin.call`; skipped if the `extism`
  package is not installed (`pip install extism`).
"""

from __future__ import annotations

import argparse
import gc
import logging
import pathlib
import statistics
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import wasmtime  # noqa: E402

from okra_core import abi  # noqa: E402
from okra_core.hostapi import HostContext  # noqa: E402
from okra_plugins.engine_wasmtime._engine import create_engine  # noqa: E402

ECHO_WAT = ROOT / "tests" / "fixtures" / "echo.wat"

EXTISM_ECHO_WAT = """
(module
  (import "extism:host/env" "input_offset" (func $input_offset (result i64)))
  (import "extism:host/env" "input_length" (func $input_length (result i64)))
  (import "extism:host/env" "output_set" (func $output_set (param i64 i64)))
  (memory (export "memory") 1)
  (func (export "echo") (result i32)
    (call $output_set (call $input_offset) (call $input_length))
    (i32.const 0)))
"""


def okra_engine_echo(wasm: bytes):
    engine = create_engine(cache_dir=None)
    module = engine.compile(wasm)
    context = HostContext("bench.v1.Echo", logging.getLogger("okra.service.bench"))
    instance = module.instantiate(abi.abi_functions(), lambda fd, data: None, context)
    return instance.handle


def convenience_echo(wasm: bytes):
    engine = wasmtime.Engine()
    store = wasmtime.Store(engine)
    module = wasmtime.Module(engine, wasm)
    instance = wasmtime.Linker(engine).instantiate(store, module)
    exports = instance.exports(store)
    memory, handle_fn = exports["memory"], exports["okra_handle"]
    buffer = exports["okra_buffer"](store, abi.INITIAL_BUFFER_SIZE)

    def handle(request: bytes) -> bytes:
        memory.write(store, request, buffer)
        result = handle_fn(store, buffer, len(request)) & 0xFFFFFFFFFFFFFFFF
        ptr = result >> 32
        return bytes(memory.read(store, ptr, ptr + (result & 0xFFFFFFFF)))

    return handle


def extism_echo():
    try:
        import extism
    except ImportError:
        return None, "the extism package is not installed (pip install extism)"
    try:
        plugin = extism.Plugin(bytes(wasmtime.wat2wasm(EXTISM_ECHO_WAT)), wasi=False)
    except Exception as exc:  # an incompatible Extism build: report, do not fail
        return None, f"Extism cannot load the plugin: {exc}"
    call = plugin.call
    return (lambda payload: call("echo", payload, parse=bytes)), None


def measure(fn, arg, iterations: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn(arg)
    samples = [0.0] * iterations
    clock = time.perf_counter_ns
    gc.disable()
    try:
        for i in range(iterations):
            start = clock()
            fn(arg)
            samples[i] = (clock() - start) / 1000.0
    finally:
        gc.enable()
    return samples


def p99(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=50_000)
    parser.add_argument("--warmup", type=int, default=5_000)
    parser.add_argument("--size", type=int, default=100, help="payload bytes")
    args = parser.parse_args()

    payload = bytes(range(256)) * (args.size // 256) + bytes(range(args.size % 256))
    envelope = abi.encode_request(abi.request_prefix("bench.v1.Echo", "Echo"), payload)
    wasm = wasmtime.wat2wasm(ECHO_WAT.read_text())

    okra = okra_engine_echo(wasm)
    convenience = convenience_echo(wasm)
    expected = abi.encode_response(payload)
    assert okra(envelope) == expected, "okra engine echo is wrong"
    assert convenience(envelope) == expected, "convenience echo is wrong"

    rows = [
        ("okra engine (Instance.handle)", okra, envelope),
        ("wasmtime-py convenience API", convenience, envelope),
    ]
    extism_call, why_not = extism_echo()
    if extism_call is not None:
        assert extism_call(payload) == payload, "extism echo is wrong"
        rows.append(("extism (Plugin.call)", extism_call, payload))

    results = []
    for name, fn, arg in rows:
        samples = measure(fn, arg, args.iterations, args.warmup)
        results.append((name, statistics.median(samples), p99(samples)))

    base = results[0][1]
    print(
        f"{args.size}-byte echo, {args.iterations} calls each after {args.warmup} warm-up calls "
        f"(wasmtime {create_engine(cache_dir=None).describe()['version']}, Python "
        f"{sys.version.split()[0]})"
    )
    print(f"{'path':34s} {'median us':>10s} {'p99 us':>10s} {'x engine':>9s}")
    for name, median, tail in results:
        print(f"{name:34s} {median:10.2f} {tail:10.2f} {median / base:9.1f}")
    if why_not:
        print(f"extism: skipped: {why_not}")


if __name__ == "__main__":
    main()
