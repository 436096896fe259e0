"""The state stores side by side: get of a 100-byte value, and set of one.

    python benchmarks/state_stores.py [--ops N] [--rounds R]

One process, one thread, each store opened through the plugin registry as the runtime
opens it: memory; sqlite on a temporary file with the default synchronous=FULL (every
set fsyncs the WAL) and with synchronous=normal; redis on a redis-server started here
on 127.0.0.1 (persistence off), reached over TCP. Each call is timed on its own; the
rounds alternate between stores so drift hits them alike. The table gives the median
and p90 per call in microseconds.
"""

from __future__ import annotations

import argparse
import contextlib
import pathlib
import statistics
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from okra_core.plugins import Registry, make_plugin_manager  # noqa: E402
from redis_support import REDIS_SERVER, redis_server  # noqa: E402

NAMESPACE = "bench.v1.State"
VALUE = bytes(range(100))


def time_calls(call, ops: int) -> list[float]:
    samples = []
    for _ in range(ops):
        start = time.perf_counter_ns()
        call()
        samples.append((time.perf_counter_ns() - start) / 1000)
    return samples


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ops", type=int, default=2000, help="calls per store, operation and round")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    registry = Registry(make_plugin_manager(entrypoints=False))
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        stores = {
            "memory": registry.state_store("memory"),
            "sqlite (synchronous=full)": registry.state_store("sqlite", path=f"{tmp}/full.db"),
            "sqlite (synchronous=normal)": registry.state_store(
                "sqlite", path=f"{tmp}/normal.db", synchronous="normal"
            ),
        }
        if REDIS_SERVER is not None:
            url = stack.enter_context(redis_server())
            stores["redis (127.0.0.1, TCP)"] = registry.state_store("redis", url=url)
        else:
            print("redis-server is not installed: no redis row", file=sys.stderr)
        for store in stores.values():
            stack.callback(store.close)
            store.set(NAMESPACE, b"key", VALUE)
            for _ in range(200):  # warm up: connections, statement caches, scripts loaded
                store.get(NAMESPACE, b"key")
                store.set(NAMESPACE, b"written", VALUE)

        samples = {(name, op): [] for name in stores for op in ("get", "set")}
        for _ in range(args.rounds):
            for name, store in stores.items():
                samples[(name, "get")] += time_calls(lambda: store.get(NAMESPACE, b"key"), args.ops)
                samples[(name, "set")] += time_calls(
                    lambda: store.set(NAMESPACE, b"written", VALUE), args.ops
                )

    print(f"{args.rounds} rounds x {args.ops} calls per store and operation; 100-byte values; µs per call")
    print(f"{'store':<30} {'get median':>11} {'get p90':>9} {'set median':>11} {'set p90':>9}")
    for name in stores:
        get, set_ = samples[(name, "get")], samples[(name, "set")]
        print(
            f"{name:<30} {statistics.median(get):>11.1f} {percentile(get, 0.9):>9.1f} "
            f"{statistics.median(set_):>11.1f} {percentile(set_, 0.9):>9.1f}"
        )


if __name__ == "__main__":
    main()
