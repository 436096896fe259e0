"""The two engines side by side: wasmtime (compiled) and wasm3 (an interpreter).

    python benchmarks/engines.py [--rounds N] [--calls K] [--no-go]

One process, the engines created with `cache_dir=None` (wasm3 checks every module it
compiles, wasmtime compiles without its cache): wasmtime, wasm3 as it runs by default
(fuel checks written into each module, so that deadlines and interrupts stop a running
guest) and wasm3 with `meter=false`, to show what the fuel checks cost. Every operation
is measured in rounds that alternate between the engines (the order flips each round,
so the machine's drift hits all alike); the table gives the median and p90 of all
samples per engine, the wasm3 / wasmtime ratio of the medians and the metered /
unmetered wasm3 ratio. The collector is off while a round runs.

- tiny handler: `Instance.handle` of tests/fixtures/echo.wat with a 100-byte payload,
  each call timed on its own (50 per engine per round).
- compute-heavy handler: a WAT guest (COMPUTE_WAT below, guest ABI v1) that runs FNV-1a
  over its request envelope 2,000 times and answers with the 4-byte hash; the answer is
  checked against Python's on both engines before timing.
- host call: a guest calling a host function that does nothing K times per request
  (K in the request, as in benchmarks/host_calls.py): per call = (t(K) - t(0)) / K.
- instantiate + close: `module.instantiate(...)` then `close()` of the WAT echo and,
  unless --no-go (or the Go toolchain is missing), of examples/greeter built here with
  `okra build` (okra.log and okra.abi as its ABI version sees it linked).
- cold start: instantiate, first call, close. wasm3 compiles a function the first
  time an instance calls it, so its first call carries that cost.
- greeter SayHello: a warm call to the Go greeter (its log record below the level).

Also printed once, outside the rounds: `Engine.compile` of each module on each engine
(wasm3 compiles every function once to check the module) and the resident memory that
live instances add, per instance (1,000 WAT echoes, 100 Go greeters, each after one
call; wasm3 measured first, so that it cannot reuse memory wasmtime freed).
"""

from __future__ import annotations

import argparse
import gc
import logging
import pathlib
import shutil
import statistics
import struct
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import wasmtime  # noqa: E402

from host_calls import guest as host_call_guest  # noqa: E402  (benchmarks/ is on the path)
from okra_core import abi  # noqa: E402
from okra_core.hostapi import HostContext, HostFunction  # noqa: E402
from okra_core.plugins import get_registry  # noqa: E402

ENGINES = ("wasmtime", "wasm3", "wasm3-unmetered")
#: label -> (engine, options): wasm3 as it runs by default (fuel checks written into
#: each module, so deadlines hold) and without them, to show what they cost.
SPECS = {
    "wasmtime": ("wasmtime", {}),
    "wasm3": ("wasm3", {}),
    "wasm3-unmetered": ("wasm3", {"meter": False}),
}
PASSES = 2000
FNV_OFFSET, FNV_PRIME = 0x811C9DC5, 16777619

#: Guest ABI v1: FNV-1a over the whole request envelope, PASSES times (the hash carries
#: over between passes); the response envelope is Response{output: <hash, 4 bytes LE>}.
COMPUTE_WAT = f"""(module
  (memory (export "memory") 2)
  (func (export "okra_abi_version") (result i32) (i32.const 1))
  ;; The request buffer lives at 1024, up to 128 KiB - 1024 bytes.
  (func (export "okra_buffer") (param $size i32) (result i32)
    (if (result i32) (i32.gt_u (local.get $size) (i32.const 130048))
      (then (i32.const 0)) (else (i32.const 1024))))
  (func (export "okra_handle") (param $ptr i32) (param $len i32) (result i64)
    (local $h i32) (local $i i32) (local $end i32) (local $pass i32)
    (local.set $h (i32.const {FNV_OFFSET}))
    (local.set $end (i32.add (local.get $ptr) (local.get $len)))
    (local.set $pass (i32.const {PASSES}))
    (loop $passes
      (local.set $i (local.get $ptr))
      (loop $bytes
        (local.set $h (i32.mul (i32.xor (local.get $h) (i32.load8_u (local.get $i)))
                               (i32.const {FNV_PRIME})))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br_if $bytes (i32.lt_u (local.get $i) (local.get $end))))
      (local.set $pass (i32.sub (local.get $pass) (i32.const 1)))
      (br_if $passes (local.get $pass)))
    (i32.store8 (i32.const 16) (i32.const 0x0a))
    (i32.store8 (i32.const 17) (i32.const 4))
    (i32.store (i32.const 18) (local.get $h))
    (i64.or (i64.shl (i64.const 16) (i64.const 32)) (i64.const 6))))"""



def fnv_passes(data: bytes) -> int:
    h = FNV_OFFSET
    for _ in range(PASSES):
        for b in data:
            h = ((h ^ b) * FNV_PRIME) & 0xFFFFFFFF
    return h


def quiet_logger(name: str, level: int = logging.INFO) -> logging.Logger:
    logger = logging.getLogger(name)
    logger.setLevel(level)
    logger.propagate = False
    logger.addHandler(logging.NullHandler())
    return logger


def sink(fd: int, data: bytes) -> None:
    pass


def build_greeter(workspace: pathlib.Path):
    """examples/greeter built in `workspace` (what `okra build` does), or the reason not."""
    from okra_core.build import build_project
    from okra_core.package import load_package

    project = workspace / "greeter"
    shutil.copytree(
        ROOT / "examples" / "greeter", project, ignore=shutil.ignore_patterns("dist", ".okra", "gen")
    )
    try:
        return load_package(build_project(project).path), None
    except Exception as exc:  # noqa: BLE001 (no Go toolchain, a failed build: skip Go rows)
        return None, f"{type(exc).__name__}: {exc}"


def percentile90(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.9))]


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


class Guest:
    """One module on one engine, with the host functions and request it is run with."""

    def __init__(self, engine, wasm: bytes, functions, service: str, level: int = logging.INFO):
        start = time.perf_counter()
        self.module = engine.compile(wasm)
        self.compile_seconds = time.perf_counter() - start
        self.functions = list(functions)
        self.service = service
        self.logger = quiet_logger(f"okra.service.{service}", level)
        self._instance = None

    def new_instance(self):
        return self.module.instantiate(self.functions, sink, HostContext(self.service, self.logger))

    @property
    def instance(self):
        if self._instance is None:
            self._instance = self.new_instance()
        return self._instance


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=60, help="rounds, engines alternating")
    parser.add_argument("--calls", type=int, default=1000, help="host calls per request (K)")
    parser.add_argument("--no-go", action="store_true", help="skip the Go greeter rows")
    args = parser.parse_args()

    registry = get_registry()
    engines = {
        label: registry.engine(SPECS[label][0], cache_dir=None, **SPECS[label][1])
        for label in ENGINES
    }
    abi_functions = list(abi.abi_functions(1))
    noop = HostFunction("bench.noop", "noop", ("i32", "i32"), lambda ctx, p, n: 0, blocking=False)

    echo_wasm = wasmtime.wat2wasm((ROOT / "tests" / "fixtures" / "echo.wat").read_text())
    compute_wasm = wasmtime.wat2wasm(COMPUTE_WAT)
    # benchmarks/host_calls.py's guest: calls bench.noop K times, K the request's last 4 bytes.
    host_call_wasm = host_call_guest("bench.noop", "noop", "i32 i32", "(i32.const 2048) (i32.const 3)", b"")

    greeter, why_no_go = None, "--no-go"
    if not args.no_go:
        with tempfile.TemporaryDirectory(prefix="okra-bench-") as tmp:
            start = time.perf_counter()
            greeter, why_no_go = build_greeter(pathlib.Path(tmp))
            build_seconds = time.perf_counter() - start

    payload = bytes(range(100))
    echo_request = abi.encode_request(abi.request_prefix("echo.v1.Echo", "Echo"), payload)
    compute_request = abi.encode_request(abi.request_prefix("bench.v1.Hash", "Hash"), payload)
    host_prefix = abi.request_prefix("bench.v1.Calls", "Run")
    host_empty = abi.encode_request(host_prefix, struct.pack("<I", 0))
    host_full = abi.encode_request(host_prefix, struct.pack("<I", args.calls))
    expected_hash = abi.encode_response(struct.pack("<I", fnv_passes(compute_request)))

    guests: dict[str, dict[str, Guest]] = {}
    for name, engine in engines.items():
        guests[name] = {
            "echo": Guest(engine, echo_wasm, abi_functions, "echo.v1.Echo"),
            "compute": Guest(engine, compute_wasm, abi_functions, "bench.v1.Hash"),
            "host": Guest(engine, host_call_wasm, [*abi_functions, noop], "bench.v1.Calls"),
        }
    if greeter is not None:
        from lang_go_support import message_classes

        hello = message_classes(greeter.descriptor_set)("greeter.v1.HelloRequest")(name="Ada")
        greeter_request = abi.encode_request(
            abi.request_prefix("greeter.v1.Greeter", "SayHello"), hello.SerializeToString()
        )
        log_functions = list(registry.host_api("okra.log").functions({}))
        for name, engine in engines.items():
            guests[name]["go"] = Guest(
                engine, greeter.wasm, [*log_functions, *abi.abi_functions()], "greeter.v1.Greeter",
                level=logging.WARNING,
            )

    # Correctness first, on both engines: identical answers.
    for name in ENGINES:
        g = guests[name]
        assert g["echo"].instance.handle(echo_request) == abi.encode_response(payload), name
        assert g["compute"].instance.handle(compute_request) == expected_hash, name
        g["host"].instance.handle(host_full)
        if "go" in g:
            output, code, message = abi.decode_response(g["go"].instance.handle(greeter_request))
            assert code == 0 and b"Hello, Ada!" in output, (name, code, message)

    # Operations: name -> (function(engine name) -> list of samples in us, calls per round).
    clock = time.perf_counter_ns

    def timed_calls(handle, request, n):
        samples = []
        for _ in range(n):
            start = clock()
            handle(request)
            samples.append((clock() - start) / 1000)
        return samples

    def tiny(name):
        return timed_calls(guests[name]["echo"].instance.handle, echo_request, 50)

    def compute(name):
        return timed_calls(guests[name]["compute"].instance.handle, compute_request, 2)

    def host_call(name):
        handle = guests[name]["host"].instance.handle
        t0 = clock()
        handle(host_empty)
        t1 = clock()
        handle(host_full)
        t2 = clock()
        return [((t2 - t1) - (t1 - t0)) / args.calls / 1000]

    def instantiate_close(key, n):
        def run(name):
            guest = guests[name][key]
            samples = []
            for _ in range(n):
                start = clock()
                guest.new_instance().close()
                samples.append((clock() - start) / 1000)
            return samples

        return run

    def cold_start(key, request, n):
        def run(name):
            guest = guests[name][key]
            samples = []
            for _ in range(n):
                start = clock()
                instance = guest.new_instance()
                instance.handle(request)
                instance.close()
                samples.append((clock() - start) / 1000)
            return samples

        return run

    def greeter_call(name):
        return timed_calls(guests[name]["go"].instance.handle, greeter_request, 20)

    operations = [
        ("tiny handler: echo, 100 B", tiny),
        (f"compute: FNV-1a, {PASSES} passes over {len(compute_request)} B", compute),
        ("one host call (no-op), per call", host_call),
        ("WAT echo: instantiate + close", instantiate_close("echo", 10)),
        ("WAT echo: cold start (instantiate, call, close)", cold_start("echo", echo_request, 10)),
    ]
    if greeter is not None:
        operations += [
            ("Go greeter: instantiate + close", instantiate_close("go", 2)),
            ("Go greeter: cold start (instantiate, SayHello, close)", cold_start("go", greeter_request, 2)),
            ("Go greeter: warm SayHello", greeter_call),
        ]

    for label, run in operations:  # warm-up
        for name in ENGINES:
            run(name)
    samples = {label: {name: [] for name in ENGINES} for label, _ in operations}
    started = time.perf_counter()
    for round_number in range(args.rounds):
        order = ENGINES if round_number % 2 == 0 else ENGINES[::-1]
        gc.collect()
        gc.disable()
        try:
            for label, run in operations:
                for name in order:
                    samples[label][name].extend(run(name))
        finally:
            gc.enable()
    elapsed = time.perf_counter() - started

    # Memory of live instances (not in rounds): wasm3 first, see the docstring.
    memory = {}
    memory_cases = [("WAT echo", "echo", echo_request, 1000)]
    if greeter is not None:
        memory_cases.append(("Go greeter", "go", greeter_request, 100))
    for label, key, request, count in memory_cases:
        for name in ("wasm3", "wasmtime"):  # metering changes no memory
            gc.collect()
            before = rss_bytes()
            live = [guests[name][key].new_instance() for _ in range(count)]
            for instance in live:  # touch them as a service would
                instance.handle(request)
            memory[(label, name)] = (rss_bytes() - before) / count
            for instance in live:
                instance.close()
            del live

    for name in ENGINES:
        for guest in guests[name].values():
            if guest._instance is not None:
                guest._instance.close()

    versions = ", ".join(f"{name} {engines[name].describe()['version']}" for name in ENGINES)
    print(
        f"{args.rounds} rounds alternating engines in {elapsed:.1f} s ({versions}, "
        f"Python {sys.version.split()[0]}); times in us, median (p90)\n"
    )
    print("| operation | wasmtime | wasm3 | wasm3 / wasmtime | wasm3, meter=false | metered / unmetered |")
    print("|---|---|---|---|---|---|")
    medians = {}
    for label, _ in operations:
        cells = []
        for name in ENGINES:
            values = samples[label][name]
            medians[(label, name)] = statistics.median(values)
            cells.append(f"{fmt(medians[(label, name)])} ({fmt(percentile90(values))})")
        ratio = medians[(label, "wasm3")] / medians[(label, "wasmtime")]
        meter = medians[(label, "wasm3")] / medians[(label, "wasm3-unmetered")]
        print(f"| {label} | {cells[0]} | {cells[1]} | {ratio:.2f}x | {cells[2]} | {meter:.2f}x |")

    print("\nonce, outside the rounds:")
    print("| module | wasmtime compile | wasm3 compile (meter, check) | wasm3 compile (check) |")
    print("|---|---|---|---|")
    modules = [("WAT echo", "echo"), ("compute guest", "compute"), ("host-call guest", "host")]
    if greeter is not None:
        modules.append((f"Go greeter ({len(greeter.wasm) / 1e6:.1f} MB)", "go"))
    for label, key in modules:
        cells = [f"{guests[name][key].compile_seconds * 1000:.1f} ms" for name in ENGINES]
        print(f"| {label} | {cells[0]} | {cells[1]} | {cells[2]} |")
    print()
    for label, key, request, count in memory_cases:
        print(
            f"resident memory per live {label} instance ({count} live, one call each): "
            + ", ".join(
                f"{name} {memory[(label, name)] / 1024:.0f} KiB" for name in ("wasmtime", "wasm3")
            )
        )
    if greeter is not None:
        print(f"greeter build: {build_seconds:.1f} s")
    else:
        print(f"\nGo greeter rows skipped: {why_no_go}")

    tiny_wasm3 = medians[(operations[0][0], "wasm3")]
    verdict = "met" if tiny_wasm3 <= 5.0 else "NOT met"
    print(f"\ngoal: wasm3 tiny-handler invoke <= 5 us median: {verdict} ({tiny_wasm3:.2f} us)")


def fmt(us: float) -> str:
    if us >= 1000:
        return f"{us / 1000:.2f} ms"
    if us >= 100:
        return f"{us:.0f}"
    return f"{us:.2f}"


if __name__ == "__main__":
    main()
