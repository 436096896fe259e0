# Test plan: a write the sqlite state store acknowledged survives the process being
# killed (SIGKILL: no atexit, no flush, no close) right after the acknowledgment.
# - A real child process opens the store on a file and writes without pause: sets of
#   distinct keys and increments of one counter, printing each acknowledgment (key,
#   version / counter value) as soon as the store call returns.
# - The test reads the acknowledgments and kills the child at a random one (seeded,
#   the seed in the failure message), while it is in the middle of its next write;
#   lines already in the pipe count as acknowledged too.
# - Reopened, the database passes PRAGMA integrity_check, holds every acknowledged set
#   with its value and version, and the counter is at least the last acknowledged value
#   (at most one more: a write may commit and be killed before printing).
# - Both synchronous levels: FULL (the default) and NORMAL, whose docstring claims
#   SIGKILL durability in WAL mode; five kills each.
import os
import pathlib
import random
import signal
import sqlite3
import subprocess
import sys

import pytest

from okra_plugins.store_sqlite import SqliteStore

ROOT = pathlib.Path(__file__).resolve().parent.parent
WRITES = 3000
NAMESPACE = "durability.v1.Test#k"

CHILD = r"""
import sys
from okra_plugins.store_sqlite import SqliteStore

store = SqliteStore(sys.argv[1], synchronous=sys.argv[2])
print("ready", flush=True)
for i in range(int(sys.argv[3])):
    key = b"key-%06d" % i
    version = store.set(sys.argv[4], key, b"value-%06d-" % i + b"x" * 100)
    print("set", i, version, flush=True)
    total = store.increment(sys.argv[4], b"counter", 1)
    print("inc", total, flush=True)
"""


def run_and_kill(path: pathlib.Path, synchronous: str, rng: random.Random) -> list[str]:
    """Start a writer, SIGKILL it right after a random acknowledgment; return every
    acknowledgment it printed."""
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path), synchronous, str(WRITES), NAMESPACE],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert child.stdout.readline() == "ready\n", child.stderr.read()
        kill_after = rng.randrange(1, WRITES)  # acknowledgments, of 2 * WRITES
        lines = []
        for line in child.stdout:
            lines.append(line)
            if len(lines) == kill_after:
                child.send_signal(signal.SIGKILL)
                break
        lines += child.stdout.readlines()  # printed before it died: acknowledged too
    finally:
        child.kill()
        child.wait(30)
        child.stdout.close()
        child.stderr.close()
    assert child.returncode == -signal.SIGKILL, "the writer ended before it was killed"
    return [line for line in lines if line.endswith("\n")]


@pytest.mark.parametrize("synchronous", ["full", "normal"])
def test_acknowledged_writes_survive_sigkill(tmp_path, synchronous):
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    for attempt in range(5):
        path = tmp_path / f"{attempt}.db"
        acknowledged = run_and_kill(path, synchronous, rng)
        assert acknowledged, f"seed {seed}: nothing was acknowledged"

        with sqlite3.connect(path) as check:
            assert check.execute("PRAGMA integrity_check").fetchone() == ("ok",), f"seed {seed}"
        check.close()
        store = SqliteStore(path)
        try:
            counter = 0
            for line in acknowledged:
                kind, *fields = line.split()
                if kind == "set":
                    i, version = map(int, fields)
                    entry = store.get(NAMESPACE, b"key-%06d" % i)
                    assert entry is not None, f"seed {seed}: acknowledged set {i} lost"
                    assert entry.value == b"value-%06d-" % i + b"x" * 100
                    assert entry.version == version
                else:
                    counter = int(fields[0])
            stored = store.get(NAMESPACE, b"counter")
            stored_counter = 0 if stored is None else int(stored.value)
            assert counter <= stored_counter <= counter + 1, (
                f"seed {seed}: counter acknowledged at {counter}, stored {stored_counter}"
            )
        finally:
            store.close()
