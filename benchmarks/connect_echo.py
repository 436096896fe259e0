"""Requests per second and latency of the greeter over Connect, OKRA vs a plain connectrpc app.

Servers side by side in this process, on one event loop, each a uvicorn (httptools)
server started the same way (`okra_plugins.transport_connect._server.AsgiServer`, the
transport's own):

* plain connectrpc: a `ConnectASGIApplication` with a hand-written `SayHello` in Python
  (google.protobuf messages and connectrpc's google.protobuf codecs), no WASM: the
  baseline;
* OKRA transport, Python runtime: the Connect transport over a runtime whose `invoke`
  answers in Python (the transport's own cost: dynamic routing, pass-through and JSON
  transcoding, metadata, deadline);
* OKRA transport + Go greeter: the whole stack, the transport over the real runtime
  running examples/greeter (built here unless `--package` is given).

Load comes from `wrk` (Debian `wrk`) in another process, POSTing `{"name": "Ada"}` as
binary protobuf (application/proto) and as JSON (application/json). Rounds alternate
between the servers so drift hits all alike; the medians are reported, with the serving
process's CPU time per request. Every response is checked once before the load, and a
run with non-2xx responses fails.

    python benchmarks/connect_echo.py [--seconds 4] [--rounds 2] [--connections 16] [--uvloop] [--package PKG]
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from connectrpc.compat import google_protobuf_codecs  # noqa: E402
from connectrpc.method import IdempotencyLevel, MethodInfo, StreamType  # noqa: E402
from connectrpc.server import ConnectASGIApplication, Endpoint  # noqa: E402

from okra_core.config import RuntimeConfig  # noqa: E402
from okra_core.package import Package, load_package  # noqa: E402
from okra_core.runtime import Runtime  # noqa: E402
from okra_plugins.transport_connect._server import AsgiServer  # noqa: E402
from okra_plugins.transport_connect._transport import ConnectTransport  # noqa: E402

SERVICE = "greeter.v1.Greeter"
PATH = f"/{SERVICE}/SayHello"
PLAIN, PYTHON, WASM = "plain connectrpc", "okra, Python runtime", "okra + Go greeter"


def greeting(name: str, times: int) -> tuple[str, list[str]]:
    """SayHello as examples/greeter/main.go answers it (English, valid input)."""
    message = f"Hello, {name.strip()}!"
    return message, [f"{i}. {message}" for i in range(1, (times or 1) + 1)]


# -- the servers --------------------------------------------------------------------------


class _PlainGreeter(ConnectASGIApplication):
    path = f"/{SERVICE}"


def plain_app(package: Package) -> ConnectASGIApplication:
    method = package.schema(SERVICE).methods["SayHello"]
    HelloReply = method.output_class
    info = MethodInfo(name="SayHello", service_name=SERVICE, input=method.input_class, output=HelloReply,
                      idempotency_level=IdempotencyLevel.UNKNOWN, stream_type=StreamType.UNARY)

    async def say_hello(request, ctx):
        message, greetings = greeting(request.name, request.times)
        return HelloReply(message=message, greetings=greetings)

    return _PlainGreeter(service=None, endpoints=lambda _: {PATH: Endpoint.unary(info, say_hello)},
                         codecs=google_protobuf_codecs())


class PythonRuntime:
    """A runtime that answers SayHello in Python: only the transport is measured."""

    def __init__(self, package: Package):
        self._schema = package.schema(SERVICE)
        method = self._schema.methods["SayHello"]
        self._request, self._reply = method.input_class, method.output_class

    def services(self):
        return [SERVICE]

    def schema(self, service):
        return self._schema if service == SERVICE else None

    def subscribe(self, listener):
        pass

    async def invoke(self, service, method, payload, *, metadata=(), timeout=None):
        request = self._request.FromString(payload)
        message, greetings = greeting(request.name, request.times)
        return self._reply(message=message, greetings=greetings).SerializeToString()


def build_greeter(workdir: Path) -> Path:
    from okra_core.build import build_project

    project = workdir / "greeter"
    shutil.copytree(ROOT / "examples" / "greeter", project, ignore=shutil.ignore_patterns("dist", ".okra", "gen"))
    return build_project(project).path


# -- load ---------------------------------------------------------------------------------


def lua_string(data: bytes) -> str:
    return '"' + "".join(f"\\{byte}" for byte in data) + '"'


def wrk_script(path: Path, content_type: str, body: bytes) -> Path:
    path.write_text(
        'wrk.method = "POST"\n'
        f'wrk.headers["Content-Type"] = "{content_type}"\n'
        f"wrk.body = {lua_string(body)}\n"
    )
    return path


_UNITS = {"us": 1.0, "ms": 1e3, "s": 1e6}


def _micros(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    if match is None:
        raise RuntimeError(f"wrk printed a latency this script cannot read: {text!r}")
    value, unit = match.groups()
    return float(value) * _UNITS[unit]


async def wrk(url: str, script: Path, seconds: float, connections: int) -> dict[str, float]:
    process = await asyncio.create_subprocess_exec(
        "wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--latency", "-s", str(script), url,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    out, err = await process.communicate()
    text = out.decode()
    if process.returncode != 0 or "Requests/sec" not in text:
        raise RuntimeError(f"wrk failed:\n{text}\n{err.decode()}")
    if "Non-2xx" in text or "Socket errors" in text:
        raise RuntimeError(f"wrk saw failed requests:\n{text}")
    latency = re.search(r"Latency\s+(\S+)", text)[1]
    p50 = re.search(r"^\s*50%\s+(\S+)", text, re.M)[1]
    p99 = re.search(r"^\s*99%\s+(\S+)", text, re.M)[1]
    return {
        "rate": float(re.search(r"Requests/sec:\s+([\d.]+)", text)[1]),
        "requests": int(re.search(r"(\d+) requests in", text)[1]),
        "avg": _micros(latency),
        "p50": _micros(p50),
        "p99": _micros(p99),
    }


def check(port: int, content_type: str, body: bytes, expected: bytes) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("POST", PATH, body=body, headers={"Content-Type": content_type})
        response = connection.getresponse()
        got = response.read()
    finally:
        connection.close()
    if response.status != 200:
        raise RuntimeError(f"port {port}: HTTP {response.status}: {got!r}")
    if content_type == "application/json":
        got, expected = json.loads(got), json.loads(expected)
    if got != expected:
        raise RuntimeError(f"port {port}: answered {got!r}, expected {expected!r}")


# -- main -----------------------------------------------------------------------------------


async def main(args: argparse.Namespace) -> None:
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed: apt-get install wrk")
    workdir = Path(tempfile.mkdtemp(prefix="connect-echo-"))
    try:
        package = load_package(args.package or build_greeter(workdir))
        await run(args, package, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


async def run(args: argparse.Namespace, package: Package, workdir: Path) -> None:
    runtime = Runtime(RuntimeConfig(engine_options={"cache_dir": str(workdir / "cache")}))
    await runtime.start()
    await runtime.deploy(package)
    plain = AsgiServer(plain_app(package))
    python_transport, wasm_transport = ConnectTransport(), ConnectTransport()
    ports = {
        PLAIN: await plain.start("127.0.0.1", 0),
        PYTHON: (await python_transport.start(PythonRuntime(package), "127.0.0.1", 0))[1],
        WASM: (await wasm_transport.start(runtime, "127.0.0.1", 0))[1],
    }

    method = package.schema(SERVICE).methods["SayHello"]
    request = method.input_class(name="Ada")
    message, greetings = greeting("Ada", 0)
    reply = method.output_class(message=message, greetings=greetings)
    encodings = {
        "binary": ("application/proto", request.SerializeToString(), reply.SerializeToString()),
        "JSON": ("application/json", b'{"name":"Ada"}',
                 json.dumps({"message": message, "greetings": greetings}).encode()),
    }
    results = {enc: {name: [] for name in ports} for enc in encodings}
    try:
        for encoding, (content_type, body, expected) in encodings.items():
            script = wrk_script(workdir / f"{encoding}.lua", content_type, body)
            for port in ports.values():
                await asyncio.to_thread(check, port, content_type, body, expected)
                await wrk(f"http://127.0.0.1:{port}{PATH}", script, 1, args.connections)  # warm up
            for _ in range(args.rounds):
                for name, port in ports.items():
                    cpu = time.process_time()
                    result = await wrk(f"http://127.0.0.1:{port}{PATH}", script, args.seconds, args.connections)
                    result["cpu"] = (time.process_time() - cpu) / result["requests"] * 1e6
                    results[encoding][name].append(result)
    finally:
        await plain.stop(0)
        await python_transport.stop(0)
        await wasm_transport.stop(0)
        await runtime.close(1)

    loop = "uvloop" if args.uvloop else "asyncio"
    print(f"greeter SayHello over Connect (HTTP/1.1, uvicorn + httptools, {loop} loop), wrk -t1 "
          f"-c{args.connections}, {args.rounds} x {args.seconds:g} s per server; medians")
    print(f"  {'encoding':8s} {'server':22s} {'req/s':>8s} {'avg':>8s} {'p50':>8s} {'p99':>8s} "
          f"{'CPU/req':>8s}  ratio to plain")
    for encoding, by_server in results.items():
        base = statistics.median(r["rate"] for r in by_server[PLAIN])
        for name, runs in by_server.items():
            med = {key: statistics.median(r[key] for r in runs) for key in ("rate", "avg", "p50", "p99", "cpu")}
            ratio = "" if name == PLAIN else f"{med['rate'] / base:.2f}x"
            print(f"  {encoding:8s} {name:22s} {med['rate']:8.0f} {med['avg']:6.0f}us {med['p50']:6.0f}us "
                  f"{med['p99']:6.0f}us {med['cpu']:6.0f}us  {ratio}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=4.0, help="per measurement")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds per server")
    parser.add_argument("--connections", type=int, default=16, help="wrk connections (requests in flight)")
    parser.add_argument("--uvloop", action="store_true", help="run the servers on uvloop")
    parser.add_argument("--package", type=Path, help="a built greeter package (default: build examples/greeter)")
    arguments = parser.parse_args()
    if arguments.uvloop:
        import uvloop

        uvloop.run(main(arguments))
    else:
        asyncio.run(main(arguments))
