"""Unary calls per second through OKRA's gRPC transport vs a plain grpc.aio echo server.

Both servers run side by side in this process, on one event loop: the OKRA transport over
a trivial runtime whose `invoke` returns the request (so only the transport is measured:
dynamic routing, metadata filtering, deadline, status mapping), and a plain grpc.aio
server whose generic handler returns the request bytes, with the same channel options.
With `--wasm`, a third server is the whole stack: the transport over the real runtime
and the wasmtime engine, running the echo guest of tests/fixtures/echo.wat.

Load comes from another process (so client and server each get a core): a grpcio asyncio
client with N calls in flight, and h2load too when it is installed (Debian
`nghttp2-client`). Rounds alternate between the servers so drift hits all alike. Besides
calls/s it reports the serving process's CPU time per call, which other load on the
machine disturbs less, and the cost of the transport's handler code alone.

    python benchmarks/grpc_echo.py [--seconds 3] [--concurrency 16] [--rounds 2] [--size 100] [--wasm]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import grpc  # noqa: E402
from google.protobuf import descriptor_pb2  # noqa: E402

from okra_core.descriptors import load_descriptor_set, service_schema  # noqa: E402
from okra_plugins.transport_grpc._transport import DEFAULT_MAX_MESSAGE_SIZE, GrpcTransport  # noqa: E402

SERVICE = "bench.v1.Echo"
PATH = f"/{SERVICE}/Echo"


def descriptor_set() -> bytes:
    """bench/v1/echo.proto: `service Echo { rpc Echo(Blob) returns (Blob); }`."""
    file = descriptor_pb2.FileDescriptorProto(name="bench/v1/echo.proto", package="bench.v1", syntax="proto3")
    blob = file.message_type.add(name="Blob")
    blob.field.add(name="data", number=1, type=descriptor_pb2.FieldDescriptorProto.TYPE_BYTES,
                   label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL, json_name="data")
    service = file.service.add(name="Echo")
    service.method.add(name="Echo", input_type=".bench.v1.Blob", output_type=".bench.v1.Blob")
    return descriptor_pb2.FileDescriptorSet(file=[file]).SerializeToString()


class EchoRuntime:
    """The smallest runtime a transport can serve: one service, `invoke` echoes."""

    def __init__(self) -> None:
        data = descriptor_set()
        self._schema = service_schema(load_descriptor_set(data), data, SERVICE)
        self.calls = 0

    def services(self):
        return [SERVICE]

    def schema(self, service):
        return self._schema if service == SERVICE else None

    def subscribe(self, listener):
        pass

    async def invoke(self, service, method, payload, *, metadata=(), timeout=None):
        self.calls += 1
        return payload


class PlainCounter:
    calls = 0


class FullStackCounter:
    calls = 0
    #: CPU seconds of the loop thread spent in each `Runtime.invoke` under load: the
    #: runtime and guest call as a busy server runs them (compare benchmarks/cold_cache.py).
    invoke_cpu: list[float] = []


async def start_full_stack():
    """The transport over the real runtime, serving tests/fixtures/echo.wat as
    bench.v1.Echo (its echo of a Blob request is a valid Blob response)."""
    import wasmtime

    from okra_core.config import RuntimeConfig
    from okra_core.manifest import Manifest, PoolConfig
    from okra_core.package import load_package, package_bytes
    from okra_core.runtime import Runtime

    root = Path(__file__).resolve().parent.parent
    wasm = wasmtime.wat2wasm((root / "tests" / "fixtures" / "echo.wat").read_text())
    manifest = Manifest(name="bench-echo", version="1.0.0", abi_version=1, services=(SERVICE,),
                        host_apis={}, pool=PoolConfig(1, 4), digests={}, language=None)
    package = load_package(package_bytes(manifest=manifest, wasm=wasm, descriptor_set=descriptor_set()))
    cache = tempfile.TemporaryDirectory()
    runtime = Runtime(RuntimeConfig(engine_options={"cache_dir": cache.name}))
    await runtime.start()
    await runtime.deploy(package)
    invoke = runtime.invoke

    async def counted(*args, **kwargs):
        FullStackCounter.calls += 1
        cpu = time.thread_time()  # an inline call never leaves the loop thread
        try:
            return await invoke(*args, **kwargs)
        finally:
            FullStackCounter.invoke_cpu.append(time.thread_time() - cpu)

    runtime.invoke = counted
    transport = GrpcTransport()
    _, port = await transport.start(runtime, "127.0.0.1", 0)
    return runtime, transport, port, cache


async def start_plain_server() -> tuple[grpc.aio.Server, int]:
    async def echo(request: bytes, context) -> bytes:
        PlainCounter.calls += 1
        return request

    # The same channel options as the transport's, so only the handler path differs.
    server = grpc.aio.server(options=[
        ("grpc.max_receive_message_length", DEFAULT_MAX_MESSAGE_SIZE),
        ("grpc.max_send_message_length", DEFAULT_MAX_MESSAGE_SIZE),
        ("grpc.so_reuseport", 0),
    ])
    handler = grpc.unary_unary_rpc_method_handler(echo)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, {"Echo": handler}),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, port


class _Context:
    """What the transport's handler reads from grpc's ServicerContext on a call."""

    _metadata = (("user-agent", "grpc-python-asyncio/1.85 grpc-c/58.0.0 (linux; chttp2)"),
                 ("x-request-id", "0123456789"))

    def invocation_metadata(self):
        return self._metadata

    def time_remaining(self):
        return 29.9


class _Details:
    method = PATH
    invocation_metadata = _Context._metadata


def handler_cost(runtime: EchoRuntime, payload: bytes, n: int = 200_000) -> tuple[float, float]:
    """Microseconds per call spent in the transport's own Python code (handler lookup,
    metadata filter, deadline, invoke) and in a plain echo handler, run without grpc."""
    from okra_plugins.transport_grpc._router import DynamicRouter

    router = DynamicRouter(runtime)
    context, details = _Context(), _Details()

    async def plain(request, context):
        return request

    def run(lookup) -> float:
        started = time.perf_counter()
        for _ in range(n):
            coroutine = lookup(details).unary_unary(payload, context)
            try:
                coroutine.send(None)
            except StopIteration:
                pass
        return (time.perf_counter() - started) / n * 1e6

    plain_handler = grpc.unary_unary_rpc_method_handler(plain)
    generic = grpc.method_handlers_generic_handler(SERVICE, {"Echo": plain_handler})
    run(router.service), run(generic.service)  # warm up
    return run(router.service), run(generic.service)


# -- load (runs in a child process) ------------------------------------------------------


def grpcio_load(port: int, seconds: float, concurrency: int, payload: bytes) -> float:
    async def run() -> float:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = channel.unary_unary(PATH)
            assert await call(payload) == payload, "echo returned something else"
            stop_warmup = time.perf_counter() + min(0.5, seconds / 4)
            while time.perf_counter() < stop_warmup:
                await call(payload)
            done = 0
            end = time.perf_counter() + seconds

            async def worker() -> None:
                nonlocal done
                while time.perf_counter() < end:
                    await call(payload)
                    done += 1

            started = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(concurrency)))
            return done / (time.perf_counter() - started)

    return asyncio.run(run())


def _child(queue, port, seconds, concurrency, payload) -> None:
    queue.put(grpcio_load(port, seconds, concurrency, payload))


async def grpcio_rate(port: int, seconds: float, concurrency: int, payload: bytes) -> float:
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_child, args=(queue, port, seconds, concurrency, payload))
    process.start()
    try:
        return await asyncio.to_thread(queue.get, True, seconds + 60)
    finally:
        await asyncio.to_thread(process.join, 10)


async def h2load_rate(h2load: str, port: int, seconds: float, concurrency: int, body_file: str) -> float:
    process = await asyncio.create_subprocess_exec(
        h2load, "-c", "1", "-m", str(concurrency), "-D", str(max(1, round(seconds))), "--warm-up-time", "1",
        "-H", "content-type: application/grpc", "-H", "te: trailers", "-d", body_file,
        f"http://127.0.0.1:{port}{PATH}",
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    out, err = await process.communicate()
    text = out.decode()
    for line in text.splitlines():
        if line.startswith("finished in"):  # "finished in 3.00s, 12345.67 req/s, ..."
            return float(line.split(",")[1].split()[0])
    raise RuntimeError(f"h2load gave no rate:\n{text}\n{err.decode()}")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=3.0, help="per measurement")
    parser.add_argument("--concurrency", type=int, default=16, help="calls in flight")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds per server")
    parser.add_argument("--size", type=int, default=100, help="request message bytes")
    parser.add_argument("--no-h2load", action="store_true")
    parser.add_argument("--wasm", action="store_true", help="also the full stack with a wasm echo guest")
    args = parser.parse_args()

    runtime = EchoRuntime()
    blob = runtime.schema(SERVICE).methods["Echo"].input_class
    payload = blob(data=b"x" * max(args.size - 3, 0)).SerializeToString()
    plain, plain_port = await start_plain_server()
    okra = GrpcTransport()
    _, okra_port = await okra.start(runtime, "127.0.0.1", 0)
    targets = {"plain grpc.aio": plain_port, "okra transport": okra_port}
    if args.wasm:
        full_runtime, full, full_port, cache = await start_full_stack()
        targets["okra + wasm echo"] = full_port
    results: dict[str, dict[str, list[float]]] = {"grpcio": {t: [] for t in targets}}

    counters = {"plain grpc.aio": lambda: PlainCounter.calls, "okra transport": lambda: runtime.calls,
                "okra + wasm echo": lambda: FullStackCounter.calls}
    h2load = None if args.no_h2load else shutil.which("h2load")
    body = tempfile.NamedTemporaryFile(suffix=".grpc", delete=False)
    body.write(struct.pack(">BI", 0, len(payload)) + payload)
    body.close()
    if h2load:
        results["h2load"] = {t: [] for t in targets}
    cpu_per_call = {client: {t: [] for t in targets} for client in results}
    try:
        for _ in range(args.rounds):
            for name, port in targets.items():
                for client in results:
                    calls, cpu = counters[name](), time.process_time()
                    if client == "grpcio":
                        rate = await grpcio_rate(port, args.seconds, args.concurrency, payload)
                        seconds = args.seconds
                    else:
                        rate = await h2load_rate(h2load, port, args.seconds, args.concurrency, body.name)
                        seconds = max(1, round(args.seconds))
                    served = counters[name]() - calls
                    # h2load sees HTTP 200 even for a failed gRPC call: check that the
                    # server really answered the calls it counted.
                    if served < rate * seconds * 0.9:
                        raise RuntimeError(f"{name}: {client} reports {rate:.0f}/s but the server handled {served} calls")
                    results[client][name].append(rate)
                    cpu_per_call[client][name].append((time.process_time() - cpu) / served * 1e6)
    finally:
        Path(body.name).unlink()
        await okra.stop(0)
        await plain.stop(0)
        if args.wasm:
            await full.stop(0)
            await full_runtime.close(1)
            cache.cleanup()

    print(f"unary echo, {len(payload)}-byte request, {args.concurrency} in flight, "
          f"{args.rounds} x {args.seconds:g} s per server; medians of calls/s and of the "
          "serving process's CPU time per call (all its threads, warm-up included)")
    for client, by_target in results.items():
        plain_rate = statistics.median(by_target["plain grpc.aio"])
        plain_cpu = statistics.median(cpu_per_call[client]["plain grpc.aio"])
        print(f"  {client}: {'plain grpc.aio':16s} {plain_rate:7.0f}/s {plain_cpu:5.0f} us CPU/call")
        for name in list(targets)[1:]:
            rate = statistics.median(by_target[name])
            cpu = statistics.median(cpu_per_call[client][name])
            print(f"  {client}: {name:16s} {rate:7.0f}/s {cpu:5.0f} us CPU/call   "
                  f"ratio to plain {rate / plain_rate:.2f} (rate), {cpu / plain_cpu:.2f} (CPU)")
    if args.wasm:
        print(f"  okra + wasm echo: Runtime.invoke under load, median "
              f"{statistics.median(FullStackCounter.invoke_cpu) * 1e6:.1f} us CPU of the loop thread")
    okra_us, plain_us = handler_cost(runtime, payload)
    print(f"  handler code alone, no grpc: plain {plain_us:.2f} us/call, okra transport {okra_us:.2f} us/call "
          f"(+{okra_us - plain_us:.2f} us)")


if __name__ == "__main__":
    asyncio.run(main())
