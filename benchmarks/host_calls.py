"""The cost of one host function call from a guest, side by side with a bare one.

    python benchmarks/host_calls.py [--calls K] [--rounds N]

One process, the wasmtime engine, one WAT guest per host function whose `okra_handle`
calls that function K times in a loop (K comes with the request). Per-call cost =
(time of a K-call request - time of a 0-call request) / K, so the cost of entering the
guest and of the request itself cancels out. Rows, each measured in rounds that
alternate with the others (so drift hits them alike):

- bare: a host function that does nothing (the guest -> host -> guest crossing alone).
- okra.log.write: a short message ("hello"), logger enabled, handler discarding.
- okra.state.get of a 100-byte value, memory store.
- okra.state.get of a 100-byte value, sqlite store (WAL, a temporary file).
- okra.time.now (a non-blocking API writing 8 bytes).

The table gives the median and p90 per call in microseconds and each row's cost above
bare (the host API's own work).
"""

from __future__ import annotations

import argparse
import logging
import pathlib
import statistics
import struct
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import wasmtime  # noqa: E402

from okra_core import abi  # noqa: E402
from okra_core.audit import Audit  # noqa: E402
from okra_core.clock import SystemClock  # noqa: E402
from okra_core.hostapi import HostContext, HostEnvironment, HostFunction  # noqa: E402
from okra_core.metrics import Metrics  # noqa: E402
from okra_core.plugins import get_registry  # noqa: E402
from okra_plugins.engine_wasmtime._engine import create_engine  # noqa: E402

KEY = b"key"
VALUE = bytes(range(100))
LOG_RECORD = b"\x0a\x05hello"  # LogRecord{message: "hello"}

# (import module, name, params, the call's arguments as WAT instructions)
TARGETS = {
    "bare": ("bench.noop", "noop", "i32 i32", "(i32.const 2048) (i32.const 3)"),
    "okra.log.write": ("okra.log", "write", "i32 i32 i32", f"(i32.const 2) (i32.const 2048) (i32.const {len(LOG_RECORD)})"),
    "okra.state.get (memory)": ("okra.state", "get", "i32 i32 i32 i32", "(i32.const 2048) (i32.const 3) (i32.const 4096) (i32.const 512)"),
    "okra.state.get (sqlite)": ("okra.state", "get", "i32 i32 i32 i32", "(i32.const 2048) (i32.const 3) (i32.const 4096) (i32.const 512)"),
    "okra.time.now": ("okra.time", "now", "i32", "(i32.const 4096)"),
}


def guest(module: str, name: str, params: str, args: str, data: bytes) -> bytes:
    escaped = "".join(f"\\{b:02x}" for b in data)
    return wasmtime.wat2wasm(f"""
(module
  (import "{module}" "{name}" (func $f (param {params}) (result i32)))
  (memory (export "memory") 2)
  (data (i32.const 2048) "{escaped}")
  (func (export "okra_abi_version") (result i32) (i32.const 1))
  (func (export "okra_buffer") (param i32) (result i32) (i32.const 8192))
  ;; The request envelope ends with the call count, a little-endian u32.
  (func (export "okra_handle") (param $ptr i32) (param $len i32) (result i64)
    (local $n i32)
    (local.set $n (i32.load (i32.sub (i32.add (local.get $ptr) (local.get $len)) (i32.const 4))))
    (block $done
      (loop $again
        (br_if $done (i32.eqz (local.get $n)))
        (if (i32.lt_s (call $f {args}) (i32.const 0)) (then (unreachable)))
        (local.set $n (i32.sub (local.get $n) (i32.const 1)))
        (br $again)))
    (i64.const 0)))
""")


def environment(store) -> HostEnvironment:
    def no_secrets():
        raise RuntimeError("not used")

    def no_invoke(*args):
        raise RuntimeError("not used")

    return HostEnvironment(
        clock=SystemClock(), metrics=Metrics(), audit=Audit(), state=lambda: store,
        secrets=no_secrets, invoke=no_invoke,
    )


def build(engine, label: str, registry, stores: dict):
    module_name, name, params, args = TARGETS[label]
    data = LOG_RECORD if module_name == "okra.log" else KEY
    wasm = guest(module_name, name, params, args, data)
    context = HostContext("bench.v1.Bench", logging.getLogger("okra.service.bench"))
    if module_name == "bench.noop":
        functions = [HostFunction("bench.noop", "noop", ("i32", "i32"), lambda ctx, p, n: 0, blocking=False)]
    else:
        store = stores["sqlite" if "sqlite" in label else "memory"]
        env = environment(store)
        functions = list(registry.host_api(module_name).functions({}, env))
        context.config = {module_name: {}}
    instance = engine.compile(wasm).instantiate(
        [*abi.abi_functions(), *functions], lambda fd, data: None, context
    )
    return instance, abi.request_prefix("bench.v1.Bench", "Run")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=2000, help="host calls per request (K)")
    parser.add_argument("--rounds", type=int, default=200, help="timed requests per row")
    options = parser.parse_args()

    logger = logging.getLogger("okra.service.bench")
    logger.addHandler(logging.NullHandler())
    logger.setLevel(logging.INFO)
    logger.propagate = False

    registry = get_registry()
    with tempfile.TemporaryDirectory() as tmp:
        stores = {
            "memory": registry.get("state_stores", "memory")(),
            "sqlite": registry.get("state_stores", "sqlite")(path=str(pathlib.Path(tmp) / "state.db")),
        }
        for store in stores.values():
            store.set("bench.v1.Bench", KEY, VALUE)
        engine = create_engine(cache_dir=None)
        rows = {label: build(engine, label, registry, stores) for label in TARGETS}
        k = options.calls
        samples: dict[str, list[float]] = {label: [] for label in TARGETS}
        for label, (instance, prefix) in rows.items():  # warm up
            for _ in range(20):
                instance.handle(abi.encode_request(prefix, struct.pack("<I", k)))
        for _ in range(options.rounds):
            for label, (instance, prefix) in rows.items():
                empty = abi.encode_request(prefix, struct.pack("<I", 0))
                full = abi.encode_request(prefix, struct.pack("<I", k))
                t0 = time.perf_counter()
                instance.handle(empty)
                t1 = time.perf_counter()
                instance.handle(full)
                t2 = time.perf_counter()
                samples[label].append(((t2 - t1) - (t1 - t0)) / k * 1e6)
        for store in stores.values():
            store.close()

    bare = statistics.median(samples["bare"])
    print(f"host calls: {k} per request, {options.rounds} rounds, rows alternating\n")
    print(f"{'host function':<28} {'median us':>10} {'p90 us':>8} {'above bare':>11}")
    for label, values in samples.items():
        values.sort()
        median = statistics.median(values)
        p90 = values[int(len(values) * 0.9)]
        print(f"{label:<28} {median:>10.2f} {p90:>8.2f} {median - bare:>+11.2f}")


if __name__ == "__main__":
    main()
