"""A real redis-server for tests and benchmarks: started on a free port in a temporary
directory, persistence off, stopped (and waited for) when the block ends.

    with redis_server() as url:   # "redis://127.0.0.1:<port>/0"
        ...

`REDIS_SERVER` is the binary, None when it is not installed (Debian: redis-server).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator

REDIS_SERVER = shutil.which("redis-server")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _answers_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@contextlib.contextmanager
def redis_server(attempts: int = 5) -> Iterator[str]:
    if REDIS_SERVER is None:
        raise RuntimeError("redis-server is not installed (Debian: apt-get install redis-server)")
    with tempfile.TemporaryDirectory(prefix="okra-redis-") as directory:
        for _ in range(attempts):
            port = _free_port()  # another process may take it first: then try again
            log = open(os.path.join(directory, "redis.log"), "wb")
            process = subprocess.Popen(
                [REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--dir", directory,
                 "--save", "", "--appendonly", "no", "--daemonize", "no"],
                stdout=log, stderr=subprocess.STDOUT,
            )
            try:
                deadline = time.monotonic() + 10
                while process.poll() is None and time.monotonic() < deadline:
                    if _answers_ping(port):
                        break
                    time.sleep(0.02)
                if process.poll() is None and _answers_ping(port):
                    yield f"redis://127.0.0.1:{port}/0"
                    return
            finally:
                if process.poll() is None:
                    process.terminate()
                    try:
                        process.wait(10)
                    except subprocess.TimeoutExpired:
                        process.kill()
                        process.wait()
                log.close()
        with open(os.path.join(directory, "redis.log"), errors="replace") as log_file:
            raise RuntimeError(f"redis-server did not start: {log_file.read()[-2000:]}")
