"""Runtime-level invoke: a call through `Runtime.invoke` (actor lookup, method and input
checks, request envelope, pool acquire, guest, response checks), side by side with the
engine's bare `Instance.handle` on the same guest, in one process. The runtime runs twice:
as configured by default (short calls of non-blocking guests go inline on the loop), and
with `inline_calls=False` (every call handed to a worker thread and back).

    /work/venv/bin/python benchmarks/runtime_invoke.py [--iterations N]

The guest is tests/fixtures/echo.wat deployed as `bench.v1.Echo/Echo(Blob) -> Blob`;
payload sizes 100 B and 64 KiB. Reports median and p99 per call and the runtime's
overhead over the engine path.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import pathlib
import statistics
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import wasmtime  # noqa: E402

from okra_core import abi  # noqa: E402
from okra_core.config import RuntimeConfig  # noqa: E402
from okra_core.hostapi import HostContext  # noqa: E402
from okra_core.manifest import PoolConfig  # noqa: E402
from okra_core.package import Package  # noqa: E402
from okra_core.runtime import Runtime  # noqa: E402
from support import compile_protos, make_manifest  # noqa: E402

PROTO = """
syntax = "proto3";
package bench.v1;
message Blob { bytes data = 1; }
service Echo { rpc Echo(Blob) returns (Blob); }
"""


def summarize(samples: list[float]) -> tuple[float, float]:
    samples.sort()
    return statistics.median(samples) * 1e6, samples[int(len(samples) * 0.99)] * 1e6


async def measure_runtime(runtime: Runtime, payload: bytes, iterations: int) -> list[float]:
    invoke = runtime.invoke
    for _ in range(200):
        await invoke("bench.v1.Echo", "Echo", payload)
    samples = []
    clock = time.perf_counter
    for _ in range(iterations):
        start = clock()
        await invoke("bench.v1.Echo", "Echo", payload)
        samples.append(clock() - start)
    return samples


def measure_engine(handle, envelope: bytes, iterations: int) -> list[float]:
    for _ in range(200):
        handle(envelope)
    samples = []
    clock = time.perf_counter
    for _ in range(iterations):
        start = clock()
        handle(envelope)
        samples.append(clock() - start)
    return samples


async def main(iterations: int) -> None:
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        descriptors = compile_protos(pathlib.Path(tmp), {"bench/v1/bench.proto": PROTO})
        wasm = wasmtime.wat2wasm((ROOT / "tests/fixtures/echo.wat").read_text())
        package = Package.from_parts(
            manifest=make_manifest(name="bench", services=("bench.v1.Echo",), host_apis={}, pool=PoolConfig(1, 1)),
            wasm=wasm,
            descriptor_set=descriptors,
        )
        runtime = Runtime(RuntimeConfig(engine_options={"cache_dir": tmp}))
        await runtime.start()
        await runtime.deploy(package)
        threaded = Runtime(RuntimeConfig(engine_options={"cache_dir": tmp}, inline_calls=False))
        await threaded.start()
        await threaded.deploy(package)
        module = runtime.engine.compile(wasm)
        instance = module.instantiate(
            abi.abi_functions(), lambda fd, data: None, HostContext("bench.v1.Echo", logging.getLogger("bench"))
        )
        blob = runtime.schema("bench.v1.Echo").methods["Echo"].input_class
        print(f"{'size':>8} {'path':<28} {'median us':>10} {'p99 us':>10}")
        for size in (100, 64 * 1024):
            payload = blob(data=b"x" * (size - 4 if size > 200 else size - 2)).SerializeToString()
            envelope = abi.encode_request(abi.request_prefix("bench.v1.Echo", "Echo"), payload)
            gc.collect()
            gc.disable()
            engine_med, engine_p99 = summarize(measure_engine(instance.handle, envelope, iterations))
            runtime_med, runtime_p99 = summarize(await measure_runtime(runtime, payload, iterations))
            thread_med, thread_p99 = summarize(await measure_runtime(threaded, payload, iterations))
            gc.enable()
            label = f"{len(payload)} B"
            print(f"{label:>8} {'engine Instance.handle':<28} {engine_med:10.1f} {engine_p99:10.1f}")
            print(f"{label:>8} {'Runtime.invoke (default)':<28} {runtime_med:10.1f} {runtime_p99:10.1f}")
            print(f"{label:>8} {'Runtime.invoke (threads)':<28} {thread_med:10.1f} {thread_p99:10.1f}")
            print(f"{'':>8} runtime overhead: {runtime_med - engine_med:.1f} us median by default, "
                  f"{thread_med - engine_med:.1f} us with every call on a worker thread")
        instance.close()
        await runtime.close()
        await threaded.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=5000)
    asyncio.run(main(parser.parse_args().iterations))
