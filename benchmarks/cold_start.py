"""Cold start against warm calls, through the runtime, for the Go greeter.

    python benchmarks/cold_start.py [--iterations N] [--pooling-slots N]

Builds examples/greeter (Go, with `okra build`), deploys it into a `Runtime` with the
compiled-module cache warm, and times `Runtime.invoke(SayHello)` in one run, alternating:

- cold: `Runtime.passivate` first (the service's instances are released, as after its
  idle time), so the call waits while an instance starts: instantiate the module, run
  the Go runtime's `_initialize`, set up the request buffer, then the call itself.
- warm: the same call on the instance the previous call left.

Alternating keeps the machine's drift out of the ratio. Also printed: the same pair for
the WAT echo guest (tests/fixtures/echo.wat), the cheapest module to start.
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

from bench_packages import echo_package, greeter_package  # noqa: E402
from lang_go_support import message_classes  # noqa: E402
from okra_core.config import RuntimeConfig  # noqa: E402
from okra_core.runtime import Runtime  # noqa: E402


async def pair(runtime: Runtime, service: str, method: str, payload: bytes, n: int):
    cold, warm = [], []
    for _ in range(20):  # warm-up: caches, allocator, the first instantiations
        runtime.passivate(service)
        await runtime.invoke(service, method, payload)
        await runtime.invoke(service, method, payload)
    gc.collect()
    gc.disable()
    try:
        for _ in range(n):
            runtime.passivate(service)
            start = time.perf_counter()
            await runtime.invoke(service, method, payload)
            cold.append(time.perf_counter() - start)
            start = time.perf_counter()
            await runtime.invoke(service, method, payload)
            warm.append(time.perf_counter() - start)
    finally:
        gc.enable()
    return cold, warm


def report(label: str, cold: list[float], warm: list[float]) -> None:
    def q(samples, p):
        return statistics.quantiles(samples, n=100)[p - 1] * 1e3

    c, w = statistics.median(cold) * 1e3, statistics.median(warm) * 1e3
    print(
        f"{label:<28} cold median {c:7.3f} ms  p90 {q(cold, 90):7.3f} ms | "
        f"warm median {w:7.3f} ms  p90 {q(warm, 90):7.3f} ms | cold/warm {c / w:5.1f}x"
    )


async def run(iterations: int, workspace: pathlib.Path, pooling_slots: int) -> None:
    greeter = greeter_package(workspace)
    hello = message_classes(greeter.descriptor_set)("greeter.v1.HelloRequest")(name="Ada")
    options = {"cache_dir": str(workspace / "cache")}
    if pooling_slots:
        options["pooling_slots"] = pooling_slots  # wasmtime's pooling allocator
    config = RuntimeConfig(engine_options=options)
    async with Runtime(config) as runtime:
        await runtime.deploy(greeter)
        await runtime.deploy(echo_package(workspace))
        logging.getLogger("okra.service").setLevel(logging.WARNING)
        echo = runtime.schema("bench.v1.Echo").methods["Echo"].input_class(data=b"x" * 100)
        report("go greeter SayHello", *await pair(
            runtime, "greeter.v1.Greeter", "SayHello", hello.SerializeToString(), iterations
        ))
        report("wat echo Echo (100 B)", *await pair(
            runtime, "bench.v1.Echo", "Echo", echo.SerializeToString(), iterations
        ))
        stats = runtime.stats("greeter.v1.Greeter")["events"]
        print(f"greeter events: {stats}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument(
        "--pooling-slots", type=int, default=0,
        help="run the engine with wasmtime's pooling allocator and this many slots",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(run(args.iterations, pathlib.Path(tmp), args.pooling_slots))


if __name__ == "__main__":
    main()
