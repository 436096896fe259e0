"""What a call costs when the CPU caches are cold, as they are inside a busy server.

Microbenchmarks call the same path back to back, so the guest's code and data, and the
interpreter's, stay in the CPU caches. A server runs a transport's and a protocol
library's code between two guest calls, which evicts them. This script measures the same
calls with a configurable amount of memory touched between them (64 bytes apart, one
write per cache line), so the two figures can be put side by side:

- `Runtime.invoke` of examples/greeter SayHello (the Go guest, built here unless
  `--package` is given), and inside it the engine's `Instance.handle`;
- `Runtime.invoke` of tests/fixtures/echo.wat (a guest with almost no code or data),
  and its `Instance.handle`.

    python benchmarks/cold_cache.py [--iterations 5000] [--package PKG]

The machine's cache sizes are printed first (`/sys/devices/system/cpu/cpu0/cache`).
"""

from __future__ import annotations

import argparse
import asyncio
import pathlib
import statistics
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from bench_packages import echo_package, greeter_package  # noqa: E402
from okra_core.config import RuntimeConfig  # noqa: E402
from okra_core.runtime import Runtime  # noqa: E402
from okra_plugins.engine_wasmtime import _instance  # noqa: E402

#: Bytes of memory written between two calls.
SWEEPS = (0, 256 * 1024, 1024 * 1024, 4 * 1024 * 1024)


class HandleTimer:
    """Times every `Instance.handle` of the wasmtime engine (wraps the method). Enter it
    before deploying: the runtime binds an instance's `handle` when it starts one."""

    def __init__(self) -> None:
        self.samples: list[float] = []
        self._original = _instance.WasmtimeInstance.handle

    def __enter__(self) -> HandleTimer:
        original, samples, clock = self._original, self.samples, time.perf_counter

        def handle(instance, request, deadline=None):
            start = clock()
            try:
                return original(instance, request, deadline)
            finally:
                samples.append(clock() - start)

        _instance.WasmtimeInstance.handle = handle
        return self

    def __exit__(self, *exc) -> None:
        _instance.WasmtimeInstance.handle = self._original


def cache_sizes() -> str:
    caches = []
    for index in sorted(pathlib.Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        try:
            level = (index / "level").read_text().strip()
            kind = (index / "type").read_text().strip()
            size = (index / "size").read_text().strip()
        except OSError:
            continue
        caches.append(f"L{level} {kind.lower()} {size}")
    return ", ".join(caches) or "unknown"


async def measure(runtime: Runtime, handle: HandleTimer, service: str, method: str,
                  payload: bytes, sweep: int, iterations: int) -> tuple[float, float]:
    junk = bytearray(max(sweep, 1))
    for _ in range(500):
        await runtime.invoke(service, method, payload)
    invoke_samples = []
    clock = time.perf_counter
    handle.samples.clear()
    for _ in range(iterations):
        for i in range(0, sweep, 64):
            junk[i] = (junk[i] + 1) & 0xFF
        start = clock()
        await runtime.invoke(service, method, payload)
        invoke_samples.append(clock() - start)
    return statistics.median(invoke_samples) * 1e6, statistics.median(handle.samples) * 1e6


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        workdir = pathlib.Path(tmp)
        greeter, echo = greeter_package(workdir, args.package), echo_package(workdir)
        runtime = Runtime(RuntimeConfig(engine_options={"cache_dir": str(workdir / "cache")}))
        await runtime.start()
        with HandleTimer() as handle:
            await _run(runtime, handle, greeter, echo, args.iterations)


async def _run(runtime: Runtime, handle: HandleTimer, greeter, echo, iterations: int) -> None:
    try:
        await runtime.deploy(greeter)
        await runtime.deploy(echo)
        hello = runtime.schema("greeter.v1.Greeter").methods["SayHello"].input_class
        blob = runtime.schema("bench.v1.Echo").methods["Echo"].input_class
        cases = [
            ("Go greeter SayHello", "greeter.v1.Greeter", "SayHello", hello(name="Ada").SerializeToString()),
            ("WAT echo, 100 B", "bench.v1.Echo", "Echo", blob(data=b"x" * 98).SerializeToString()),
        ]
        print(f"caches: {cache_sizes()}; {iterations} calls per cell; medians in us")
        print(f"{'guest':<22} {'touched between calls':>22} {'Runtime.invoke':>15} {'Instance.handle':>16}")
        for label, service, method, payload in cases:
            for sweep in SWEEPS:
                invoke, inner = await measure(runtime, handle, service, method, payload, sweep, iterations)
                print(f"{label:<22} {sweep // 1024:>19} KiB {invoke:15.1f} {inner:16.1f}")
    finally:
        await runtime.close(1)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=5000)
    parser.add_argument("--package", type=pathlib.Path, help="a built greeter package (default: build examples/greeter)")
    asyncio.run(main(parser.parse_args()))
