# Actor semantics of the runtime, end to end: singletons, keyed activations,
# passivation, supervision, per-service limits, wait queues, call chains and shutdown.
# Every test deploys a real package built from tests/fixtures/actor_guest.wat (a counter
# in a wasm global, and a guest that misbehaves on request) into a real Runtime with the
# wasmtime engine. A test host API, okra.test (`Probe` below), lets the test steer the
# guest: `work` records when each call ran (and for which key), sleeps, calls other
# services (as a blocking host function on the worker thread), and tells the guest what
# to do; `init` counts instance starts and can make `_initialize` trap.
#
# Test plan
# Singleton:
# - state (the counter) survives across calls.
# - concurrent calls are served one at a time, in arrival order, by one instance
#   (recorded intervals never overlap; `started` counts the deploy probe and one more).
# - Runtime.passivate releases the instance: the counter restarts from zero, stats
#   count passivated and reactivated.
# - redeploy: the counter restarts in the new version; an in-flight call of the old
#   version finishes successfully, and the new version's first call waits for it (the
#   two never run at once).
# - a full wait queue (pool.queue) refuses the next caller at once.
# Keyed (by metadata and by request field, each test run for both):
# - each key has its own counter.
# - one call at a time per key; calls of different keys overlap in time.
# - a missing or empty key -> INVALID_ARGUMENT, the guest never runs.
# - max_activations: a new key passivates the least recently used idle key (whose
#   counter restarts); with every activation busy a new key -> RESOURCE_EXHAUSTED.
# - idle_seconds: idle activations passivate; the next call reactivates.
# - deploy keyed by a field one method's input lacks -> DeployError naming it.
# Regular services:
# - idle_seconds: the pool scales to zero (stats: passivated, no idle instance), the
#   service stays listed, the next call is served; several concurrent first calls
#   after passivation all succeed. A service never called scales to zero too.
# Supervision:
# - a trap -> INTERNAL with the trap message; the instance is discarded, the next call
#   runs on a fresh one (counter restarts); stats count trapped and replaced.
# - start-up failures back off: while the initializer traps, calls fail at once with
#   UNAVAILABLE naming the reason, and an instance start is attempted once per backoff
#   window (not once per call); after the cause is gone and the backoff has passed,
#   the service recovers.
# Limits:
# - limits.memory_bytes: a memory bomb stops growing exactly at the limit, the
#   instance is kept, the next call works.
# - limits.timeout_seconds: a spinning guest -> DEADLINE_EXCEEDED naming the service
#   limit; the instance is discarded and the next call is served. An operator cap
#   lower than the manifest's value is warned about at deploy and named in the error.
# - pool sizes that do not apply (a singleton's min/max) are reported at deploy.
# - limits.request_bytes / response_bytes -> RESOURCE_EXHAUSTED naming sizes and limit
#   (an oversized request never reaches the guest).
# - pool max=1, queue=1: the 2nd concurrent caller waits and is served, the 3rd fails
#   at once with RESOURCE_EXHAUSTED.
# Guest bugs at the boundary:
# - response outside memory, malformed response envelope -> INTERNAL with a clear
#   message, the instance is discarded, the next call works.
# - a guest that never returns is stopped at the caller's deadline (the only instance
#   is free again right after).
# Call chains:
# - a call of the chain a busy singleton is running fails at once with
#   FAILED_PRECONDITION naming the chain; a call of another chain waits and succeeds;
#   a keyed service checks per key.
# - A -> B -> A through a blocking host function that calls Runtime.invoke with the
#   guest's chain: the inner call fails fast naming "A -> B -> A" (no deadlock until
#   the deadline); without a cycle the same route works.
# Shutdown:
# - close(grace) lets an in-flight call finish; a call still running after the grace
#   period is stopped (the caller hears UNAVAILABLE at once, not at its deadline).
from __future__ import annotations

import asyncio
import dataclasses
import itertools
import threading
import time

import pytest
import wasmtime

from okra_core import abi
from okra_core.callchain import CallChain
from okra_core.config import RuntimeConfig
from okra_core.descriptors import load_descriptor_set, service_schema
from okra_core.errors import DeployError
from okra_core.hookspecs import hookimpl
from okra_core.hostapi import HostError, HostFunction
from okra_core.manifest import (
    KEYED,
    REGULAR,
    SINGLETON,
    ActorConfig,
    KeySource,
    Limits,
    PoolConfig,
)
from okra_core.package import Package
from okra_core.plugins import Registry, make_plugin_manager
from okra_core.runtime import Runtime
from okra_core.status import RpcError, StatusCode
from support import FIXTURES_DIR, compile_protos, make_manifest

PROTO = """
syntax = "proto3";
package act.v1;
message Msg {
  string user = 1;           // the key of keyed-by-field services
  uint32 action = 2;         // what the guest does (tests/fixtures/actor_guest.wat)
  uint32 sleep_ms = 3;       // okra.test.work sleeps this long first
  bytes data = 4;
  fixed64 n = 5;             // the guest's counter, in answers
  repeated string route = 6; // okra.test.work calls route[0] with the rest of the route
  string tag = 7;            // names the call in the probe's records
  uint32 pad = 8;            // answer with this many bytes of data
}
message NoUser { uint32 action = 2; }
service Counter { rpc Call(Msg) returns (Msg); }
service A { rpc Call(Msg) returns (Msg); }
service B { rpc Call(Msg) returns (Msg); }
service Mixed {
  rpc Call(Msg) returns (Msg);
  rpc Bare(NoUser) returns (Msg);
}
"""
COUNTER, SVC_A, SVC_B, MIXED = "act.v1.Counter", "act.v1.A", "act.v1.B", "act.v1.Mixed"
PATH = f"/{COUNTER}/Call"

# Actions of the guest (see the fixture).
TRAP, BAD_POINTER, MALFORMED, FOREVER, MEMORY_BOMB = 1, 2, 3, 4, 5
#: How long a call that keeps an instance or activation busy sleeps (milliseconds), and
#: how soon an answer "at once" must come (seconds): well apart, so a loaded machine
#: does not blur them.
BUSY_MS = 500
AT_ONCE = 0.2
#: RuntimeConfig.restart_backoff of every runtime here.
BACKOFF = 0.5

BY_METADATA = KeySource(metadata="x-user")
BY_FIELD = KeySource(field="user")
KEY_SOURCES = pytest.mark.parametrize("source", [BY_METADATA, BY_FIELD], ids=["metadata", "field"])


# -- the test host API ------------------------------------------------------------------


@dataclasses.dataclass
class Entry:
    """One call as okra.test.work saw it."""

    service: str
    hop: str  # the chain's last hop: the service, and the key of a keyed one
    tag: str
    start: float
    end: float | None = None
    error: RpcError | None = None


class Probe:
    """Host API okra.test: `init(0)` (from `_initialize`) and `work(ptr, len)` (from
    `okra_handle`, with the request envelope).

    `init` takes an argument it ignores: the wasmtime engine's all-i32 fast path passed a
    spurious argument to host functions without parameters when this was written."""

    namespace = "okra.test"
    description = "test probe of the actor tests"

    def __init__(self, message_class):
        self.Msg = message_class
        self.fail_init = False
        self.inits = 0
        self.entries: list[Entry] = []
        self.lock = threading.Lock()
        self.runtime: Runtime | None = None
        self.loop: asyncio.AbstractEventLoop | None = None

    def function_names(self):
        return ("init", "work")

    def functions(self, config, env=None):
        return (
            HostFunction(self.namespace, "init", ("i32",), self.init),
            HostFunction(self.namespace, "work", ("i32", "i32"), self.work, blocking=True),
        )

    def init(self, ctx, _unused: int) -> int:
        with self.lock:
            self.inits += 1
        return 1 if self.fail_init else 0

    def work(self, ctx, ptr: int, length: int) -> int:
        service, _, payload, _ = abi.decode_request(ctx.memory.read(ptr, length))
        msg = self.Msg.FromString(payload)
        chain = ctx.chain
        hop = chain.hops[-1] if chain is not None and chain.hops else service
        entry = Entry(service, hop, msg.tag, time.monotonic())
        with self.lock:
            self.entries.append(entry)
        if msg.sleep_ms:
            time.sleep(msg.sleep_ms / 1000)
        if msg.route:
            # A call to another service from inside a guest, as okra.call would make it:
            # on this worker thread, with the calling guest's chain.
            forward = self.Msg(route=msg.route[1:], tag=msg.tag).SerializeToString()
            call = self.runtime.invoke(msg.route[0], "Call", forward, timeout=5, chain=chain)
            try:
                asyncio.run_coroutine_threadsafe(call, self.loop).result(10)
            except RpcError as exc:
                entry.error = exc
                entry.end = time.monotonic()
                raise HostError(exc.code, exc.message) from None
        entry.end = time.monotonic()
        return 1000 + msg.pad if msg.pad else msg.action

    def entry(self, tag: str) -> Entry:
        [entry] = [e for e in self.entries if e.tag == tag]
        return entry

    async def started(self, tag: str, timeout: float = 5.0) -> Entry:
        """Wait until the call tagged `tag` is running in its guest."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for entry in self.entries:
                if entry.tag == tag:
                    return entry
            await asyncio.sleep(0.002)
        raise AssertionError(f"call {tag!r} never reached its guest")


def registry_with(api) -> Registry:
    class TestPlugin:
        @hookimpl
        def register_host_apis(self, register):
            register(api)

    pm = make_plugin_manager(entrypoints=False)
    pm.register(TestPlugin(), name="okra-actor-tests")
    return Registry(pm)


# -- fixtures ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def descriptors(tmp_path_factory):
    return compile_protos(tmp_path_factory.mktemp("protos"), {"act/v1/act.proto": PROTO})


@pytest.fixture(scope="module")
def message_class(descriptors):
    schema = service_schema(load_descriptor_set(descriptors), descriptors, COUNTER)
    return schema.methods["Call"].input_class


@pytest.fixture(scope="module")
def wasm():
    return wasmtime.wat2wasm((FIXTURES_DIR / "actor_guest.wat").read_text())


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("cache"))


class Harness:
    def __init__(self, runtime: Runtime, probe: Probe, wasm: bytes, descriptors: bytes):
        self.runtime = runtime
        self.probe = probe
        self.Msg = probe.Msg
        self.wasm = wasm
        self.descriptors = descriptors
        self.key_source: KeySource | None = None

    def package(
        self,
        *,
        name="act",
        version="1.0.0",
        services=(COUNTER,),
        kind=REGULAR,
        key=None,
        max_activations=None,
        idle=None,
        pool=None,
        limits=None,
    ) -> Package:
        manifest = make_manifest(
            name=name,
            version=version,
            services=services,
            host_apis={"okra.test": {}},
            pool=pool or PoolConfig(1, 2),
            actor=ActorConfig(kind, key, max_activations, idle),
            limits=limits or Limits(),
        )
        return Package.from_parts(manifest=manifest, wasm=self.wasm, descriptor_set=self.descriptors)

    async def deploy(self, **fields) -> list[str]:
        if fields.get("key") is not None:
            self.key_source = fields["key"]
        return await self.runtime.deploy(self.package(**fields))

    async def call(self, service=COUNTER, *, key=None, timeout=10.0, chain=None, **fields):
        """Call service/Call with a Msg of `fields` (and `key` where the deployed keyed
        service looks for it); the answer, decoded."""
        metadata = ()
        if key is not None:
            if self.key_source.metadata:
                metadata = ((self.key_source.metadata, key),)
            else:
                fields["user"] = key
        payload = self.Msg(**fields).SerializeToString()
        output = await self.runtime.invoke(
            service, "Call", payload, metadata=metadata, timeout=timeout, chain=chain
        )
        return self.Msg.FromString(output)

    async def n(self, service=COUNTER, **fields) -> int:
        """The counter after one counted call."""
        return (await self.call(service, **fields)).n

    async def fails(self, service=COUNTER, **fields) -> RpcError:
        with pytest.raises(RpcError) as info:
            await self.call(service, **fields)
        return info.value

    def events(self, service=COUNTER) -> dict[str, int]:
        return self.runtime.stats(service).get("events", {})


@pytest.fixture
async def h(message_class, wasm, descriptors, cache_dir):
    probe = Probe(message_class)
    config = RuntimeConfig(
        engine_options={"cache_dir": cache_dir}, restart_backoff=BACKOFF, max_restart_backoff=5.0
    )
    runtime = Runtime(config, registry=registry_with(probe))
    await runtime.start()
    probe.runtime, probe.loop = runtime, asyncio.get_running_loop()
    yield Harness(runtime, probe, wasm, descriptors)
    await runtime.close(grace=2)


def overlap(a: Entry, b: Entry) -> bool:
    return a.start < b.end and b.start < a.end


# -- singletons -------------------------------------------------------------------------


async def test_singleton_keeps_its_state_across_calls(h):
    await h.deploy(kind=SINGLETON)
    assert [await h.n() for _ in range(3)] == [1, 2, 3]
    assert h.runtime.stats(COUNTER)["kind"] == SINGLETON


async def test_singleton_serves_concurrent_calls_one_at_a_time_in_arrival_order(h):
    await h.deploy(kind=SINGLETON, pool=PoolConfig(1, 4))
    answers = await asyncio.gather(*(h.n(tag=str(i), sleep_ms=40) for i in range(5)))
    assert answers == [1, 2, 3, 4, 5]  # each call saw the one before it
    entries = sorted(h.probe.entries, key=lambda e: e.start)
    assert [e.tag for e in entries] == ["0", "1", "2", "3", "4"]
    for earlier, later in itertools.pairwise(entries):
        assert later.start >= earlier.end, f"calls {earlier.tag} and {later.tag} overlapped"
    # One instance: the deploy's probe (closed) and the one that served every call.
    assert h.probe.inits == 2
    stats = h.runtime.stats(COUNTER)
    assert stats["events"]["started"] == 2
    assert (stats["activations"], stats["busy"]) == (1, 0)


async def test_passivated_singleton_restarts_from_zero_and_counts_the_events(h):
    await h.deploy(kind=SINGLETON)
    assert [await h.n(), await h.n()] == [1, 2]
    assert h.runtime.passivate(COUNTER) == 1
    assert h.runtime.stats(COUNTER)["activations"] == 0
    assert h.events()["passivated"] == 1
    assert "reactivated" not in h.events()
    assert [await h.n(), await h.n()] == [1, 2]
    assert h.events()["reactivated"] == 1
    assert h.runtime.services() == [COUNTER]


async def test_redeployed_singleton_restarts_and_never_runs_two_versions_at_once(h):
    await h.deploy(kind=SINGLETON, version="1.0.0")
    assert [await h.n(), await h.n()] == [1, 2]
    old = asyncio.create_task(h.n(tag="old", sleep_ms=300))
    await h.probe.started("old")
    await h.deploy(kind=SINGLETON, version="2.0.0")
    assert [d.version for d in h.runtime.deployments()] == ["2.0.0"]
    new = await h.n(tag="new")
    assert new == 1  # a fresh instance of the new version
    assert await old == 3  # the old version finished its call, with its state
    first, second = h.probe.entry("old"), h.probe.entry("new")
    assert second.start >= first.end, "the new version ran while the old one was busy"


async def test_singleton_wait_queue_refuses_the_caller_beyond_it_at_once(h):
    await h.deploy(kind=SINGLETON, pool=PoolConfig(1, 1, queue=1))
    first = asyncio.create_task(h.n(tag="first", sleep_ms=BUSY_MS))
    await h.probe.started("first")
    second = asyncio.create_task(h.n(tag="second"))
    await asyncio.sleep(0.02)
    start = time.monotonic()
    error = await h.fails(tag="third")
    assert time.monotonic() - start < AT_ONCE
    assert error.code == StatusCode.RESOURCE_EXHAUSTED
    assert error.message == (
        f"{COUNTER} is busy and 1 calls are already waiting for it; try again later"
    )
    assert (await first, await second) == (1, 2)
    assert [e.tag for e in h.probe.entries] == ["first", "second"]


# -- keyed services ---------------------------------------------------------------------


@KEY_SOURCES
async def test_each_key_has_its_own_counter(h, source):
    await h.deploy(kind=KEYED, key=source, pool=PoolConfig(1, 4))
    answers = [await h.n(key=k) for k in ("ada", "ada", "bob", "ada", "bob", "cy")]
    assert answers == [1, 2, 1, 3, 2, 1]
    stats = h.runtime.stats(COUNTER)
    assert (stats["kind"], stats["activations"], stats["busy"]) == (KEYED, 3, 0)
    assert {e.hop for e in h.probe.entries} == {
        f"{COUNTER}['ada']", f"{COUNTER}['bob']", f"{COUNTER}['cy']"
    }


@KEY_SOURCES
async def test_keys_run_concurrently_but_one_key_runs_one_call_at_a_time(h, source):
    await h.deploy(kind=KEYED, key=source, pool=PoolConfig(1, 4))
    assert await asyncio.gather(
        h.n(key="ada", tag="a1", sleep_ms=250), h.n(key="bob", tag="b1", sleep_ms=250)
    ) == [1, 1]
    assert overlap(h.probe.entry("a1"), h.probe.entry("b1")), "different keys did not overlap"
    assert await asyncio.gather(
        h.n(key="ada", tag="a2", sleep_ms=150), h.n(key="ada", tag="a3", sleep_ms=150)
    ) == [2, 3]
    assert not overlap(h.probe.entry("a2"), h.probe.entry("a3")), "one key ran two calls at once"
    assert h.probe.entry("a3").start >= h.probe.entry("a2").end


@KEY_SOURCES
async def test_call_without_its_key_is_invalid_argument(h, source):
    await h.deploy(kind=KEYED, key=source)
    if source.metadata:
        error = await h.fails()
        assert error.message == (
            f"{COUNTER} is a keyed service: send its key in metadata 'x-user' "
            "(e.g. okra call -H 'x-user: ...')"
        )
    else:
        error = await h.fails(user="")
        assert error.message == (
            f"request field 'user' is empty, but it is the key of {COUNTER}: every call needs a key"
        )
    assert error.code == StatusCode.INVALID_ARGUMENT
    assert h.probe.entries == []  # refused before any guest ran
    assert await h.n(key="ada") == 1


@KEY_SOURCES
async def test_max_activations_passivates_the_least_recently_used_idle_key(h, source):
    await h.deploy(kind=KEYED, key=source, max_activations=2, pool=PoolConfig(1, 4))
    assert [await h.n(key="ada"), await h.n(key="bob"), await h.n(key="ada")] == [1, 1, 2]
    # A third key: bob is the least recently used, so bob goes, ada stays.
    assert await h.n(key="cy") == 1
    assert h.runtime.stats(COUNTER)["activations"] == 2
    assert h.events()["passivated"] == 1
    assert await h.n(key="ada") == 3
    assert await h.n(key="bob") == 1  # restarted (cy made room this time)
    assert await h.n(key="ada") == 4
    assert h.events()["passivated"] == 2
    assert h.events()["reactivated"] == 1  # bob's return


async def test_new_key_with_every_activation_busy_is_resource_exhausted(h):
    await h.deploy(kind=KEYED, key=BY_FIELD, max_activations=2, pool=PoolConfig(1, 4))
    busy = [asyncio.create_task(h.n(key=k, tag=k, sleep_ms=BUSY_MS)) for k in ("ada", "bob")]
    await h.probe.started("ada")
    await h.probe.started("bob")
    start = time.monotonic()
    error = await h.fails(user="cy")
    assert time.monotonic() - start < AT_ONCE
    assert error.code == StatusCode.RESOURCE_EXHAUSTED
    assert error.message == (
        f"{COUNTER}: all 2 activations are busy; try again later (or raise actor.max_activations)"
    )
    assert await asyncio.gather(*busy) == [1, 1]
    assert await h.n(key="cy") == 1


@KEY_SOURCES
async def test_idle_activations_passivate_and_the_next_call_reactivates(h, source):
    await h.deploy(kind=KEYED, key=source, idle=0.2, pool=PoolConfig(1, 4))
    assert [await h.n(key="ada"), await h.n(key="ada"), await h.n(key="bob")] == [1, 2, 1]
    assert h.runtime.stats(COUNTER)["activations"] == 2
    await asyncio.sleep(0.5)
    assert h.runtime.stats(COUNTER)["activations"] == 0
    assert h.events()["passivated"] == 2
    assert await h.n(key="ada") == 1
    assert h.events()["reactivated"] == 1
    assert h.runtime.stats(COUNTER)["activations"] == 1


async def test_deploy_keyed_by_a_field_missing_from_a_method_input_fails(h):
    with pytest.raises(DeployError) as info:
        await h.deploy(kind=KEYED, key=BY_FIELD, services=(MIXED,))
    assert str(info.value) == (
        f"actor.key.field 'user': /{MIXED}/Bare takes act.v1.NoUser, which has no field 'user'; "
        "every method of a keyed service needs the key field in its request"
    )
    assert h.runtime.services() == []
    assert h.probe.inits == 0  # refused before any instance started


# -- passivation of regular services ----------------------------------------------------


async def test_idle_regular_service_scales_to_zero_and_serves_the_next_calls(h):
    await h.deploy(pool=PoolConfig(1, 2), idle=0.2)
    assert await h.n() == 1
    await asyncio.sleep(0.5)
    pool = h.runtime.stats(COUNTER)["pool"]
    assert (pool["idle"], pool["busy"], pool["passivated"]) == (0, 0, True)
    assert h.events()["passivated"] == 1
    assert h.runtime.services() == [COUNTER]
    assert await h.n() == 1  # served, by a fresh instance
    assert h.events()["reactivated"] == 1
    # Passivated again; several first calls at once are all buffered and served.
    await asyncio.sleep(0.5)
    assert h.runtime.stats(COUNTER)["pool"]["passivated"] is True
    answers = await asyncio.gather(*(h.n(sleep_ms=20) for _ in range(6)))
    assert len(answers) == 6 and all(n >= 1 for n in answers)
    assert h.events()["reactivated"] == 2
    assert h.runtime.stats(COUNTER)["pool"]["created"] <= 1 + 1 + 2  # never over max


async def test_regular_service_never_called_scales_to_zero_after_idle_seconds(h):
    await h.deploy(pool=PoolConfig(1, 2), idle=0.2)
    await asyncio.sleep(0.5)
    pool = h.runtime.stats(COUNTER)["pool"]
    assert (pool["idle"], pool["passivated"]) == (0, True)
    assert await h.n() == 1


# -- supervision ------------------------------------------------------------------------


@pytest.mark.parametrize("kind", [REGULAR, SINGLETON])
async def test_trap_discards_the_instance_and_the_next_call_gets_a_fresh_one(h, kind):
    await h.deploy(kind=kind, pool=PoolConfig(1, 1))
    assert [await h.n(), await h.n()] == [1, 2]
    error = await h.fails(action=TRAP)
    assert error.code == StatusCode.INTERNAL
    assert error.message.startswith(f"guest trapped in {PATH}: ")
    assert "unreachable" in error.message
    assert await h.n() == 1  # a fresh instance
    events = h.events()
    assert (events["trapped"], events["replaced"]) == (1, 1)
    # Regular: the deploy's probe (kept warm) and the replacement. Singleton: the probe
    # (closed at once), the activation's instance and the replacement.
    assert events["started"] == (2 if kind == REGULAR else 3)
    if kind == REGULAR:
        assert h.runtime.stats(COUNTER)["pool"]["discarded"] == 1


@pytest.mark.parametrize("kind", [REGULAR, SINGLETON])
async def test_start_failures_back_off_instead_of_restarting_on_every_call(h, kind):
    await h.deploy(kind=kind, pool=PoolConfig(1, 1))
    assert await h.n() == 1
    h.runtime.passivate(COUNTER)
    h.probe.fail_init = True
    before = h.probe.inits
    start = time.monotonic()
    error = await h.fails()
    assert error.code == StatusCode.UNAVAILABLE
    assert error.message.startswith(f"{COUNTER}: an instance failed to start: ")
    assert "traps while starting" in error.message
    for _ in range(10):  # inside the backoff: no new attempt, an answer at once
        error = await h.fails()
        assert error.code == StatusCode.UNAVAILABLE
        assert "instances fail to start" in error.message
        assert "traps while starting" in error.message
        assert "1 failed in a row, next attempt in" in error.message
    assert time.monotonic() - start < BACKOFF - 0.05, "too slow to test inside the backoff"
    assert h.probe.inits == before + 1
    assert h.events()["start_failed"] == 1
    # Past the backoff: one more attempt (still failing), and the backoff doubles.
    await asyncio.sleep(BACKOFF + 0.05)
    assert (await h.fails()).code == StatusCode.UNAVAILABLE
    error = await h.fails()
    assert "2 failed in a row" in error.message
    assert h.probe.inits == before + 2
    assert h.events()["start_failed"] == 2
    # The cause is gone; after the (doubled) backoff the service recovers.
    h.probe.fail_init = False
    await asyncio.sleep(2 * BACKOFF + 0.05)
    assert await h.n() == 1
    assert await h.n() == 2
    assert h.probe.inits == before + 3


# -- limits -----------------------------------------------------------------------------


@pytest.mark.parametrize("mib", [1, 3])
async def test_memory_bomb_stops_growing_at_the_memory_limit(h, mib):
    await h.deploy(pool=PoolConfig(1, 1), limits=Limits(memory_bytes=mib * 1024 * 1024))
    assert await h.n(action=MEMORY_BOMB) == mib * 16  # pages of 64 KiB
    assert await h.n() == 1  # the same instance goes on serving
    assert await h.n(action=MEMORY_BOMB) == mib * 16
    assert "trapped" not in h.events()


async def test_pool_sizes_that_do_not_apply_are_reported_at_deploy(h, caplog):
    with caplog.at_level("WARNING"):
        await h.deploy(kind=SINGLETON, pool=PoolConfig(2, 3))
    assert "pool.min and pool.max do not apply to a singleton" in caplog.text
    assert h.runtime.stats(COUNTER)["activations"] == 0  # still one instance, on first use
    assert await h.n() == 1


async def test_operator_time_cap_is_named_as_the_operators(h, caplog):
    h.runtime.config = dataclasses.replace(h.runtime.config, max_call_seconds=0.3)
    with caplog.at_level("WARNING"):
        await h.deploy(pool=PoolConfig(1, 1), limits=Limits(timeout_seconds=60))
    assert "limits.timeout_seconds = 60, above the operator's cap: using 0.3" in caplog.text
    error = await h.fails(action=FOREVER, timeout=10)
    assert error.code == StatusCode.DEADLINE_EXCEEDED
    assert "time limit of 0.3s (the operator's max_call_seconds, okra serve --max-call-time)" in (
        error.message
    )


async def test_service_time_limit_stops_a_spinning_guest(h):
    await h.deploy(pool=PoolConfig(1, 1), limits=Limits(timeout_seconds=0.3))
    assert await h.n() == 1
    start = time.monotonic()
    error = await h.fails(action=FOREVER, timeout=10)
    elapsed = time.monotonic() - start
    assert error.code == StatusCode.DEADLINE_EXCEEDED
    assert error.message.startswith(f"{PATH}: the ")
    assert "the service's time limit of 0.3s (limits.timeout_seconds)" in error.message
    assert 0.25 < elapsed < 2
    assert await h.n(timeout=2) == 1  # served, on a fresh instance
    assert h.events()["trapped"] == 1


async def test_request_over_the_limit_is_refused_before_the_guest(h):
    await h.deploy(limits=Limits(request_bytes=100))
    error = await h.fails(data=b"x" * 200)
    assert error.code == StatusCode.RESOURCE_EXHAUSTED
    assert error.message == (
        f"{PATH}: the request is 203 bytes, over the service's limit of 100 (limits.request_bytes)"
    )
    assert h.probe.entries == []
    assert await h.n(data=b"x" * 90) == 1


async def test_response_over_the_limit_is_resource_exhausted(h):
    await h.deploy(limits=Limits(response_bytes=100))
    answer = await h.call(pad=80)
    assert (answer.n, len(answer.data)) == (1, 80)
    error = await h.fails(pad=200)
    assert error.code == StatusCode.RESOURCE_EXHAUSTED
    assert error.message == (
        f"{PATH}: the response is 212 bytes, over the service's limit of 100 (limits.response_bytes)"
    )
    assert await h.n() == 3


async def test_full_pool_queue_refuses_the_third_caller_at_once(h):
    await h.deploy(pool=PoolConfig(1, 1, queue=1))
    first = asyncio.create_task(h.n(tag="first", sleep_ms=BUSY_MS))
    await h.probe.started("first")
    second = asyncio.create_task(h.n(tag="second"))
    await asyncio.sleep(0.02)
    assert h.runtime.stats(COUNTER)["pool"]["waiting"] == 1
    start = time.monotonic()
    error = await h.fails(tag="third")
    assert time.monotonic() - start < AT_ONCE
    assert error.code == StatusCode.RESOURCE_EXHAUSTED
    assert error.message == (
        f"{COUNTER}: all 1 instances are busy and 1 calls are already waiting; try again later"
    )
    assert (await first, await second) == (1, 2)
    assert [e.tag for e in h.probe.entries] == ["first", "second"]


# -- guest bugs at the boundary ---------------------------------------------------------


@pytest.mark.parametrize(
    "action, explanation",
    [(BAD_POINTER, "outside"), (MALFORMED, "malformed response envelope")],
    ids=["pointer-outside-memory", "malformed-envelope"],
)
async def test_guest_breaking_the_abi_is_internal_and_its_instance_discarded(h, action, explanation):
    await h.deploy(kind=SINGLETON)
    assert await h.n() == 1
    error = await h.fails(action=action)
    assert error.code == StatusCode.INTERNAL
    assert error.message.startswith(f"guest broke the ABI in {PATH}: ")
    assert explanation in error.message
    assert await h.n() == 1  # a fresh instance
    assert h.events()["trapped"] == 1


async def test_guest_that_never_returns_is_stopped_at_the_deadline(h):
    await h.deploy(pool=PoolConfig(1, 1))
    start = time.monotonic()
    error = await h.fails(action=FOREVER, timeout=0.3)
    assert error.code == StatusCode.DEADLINE_EXCEEDED
    assert "deadline exceeded" in error.message
    assert time.monotonic() - start < 1.5
    # The only instance was stopped: the next call gets one (a fresh one) at once.
    start = time.monotonic()
    assert await h.n(timeout=2) == 1
    assert time.monotonic() - start < 1
    assert h.events()["trapped"] == 1


# -- call chains ------------------------------------------------------------------------


async def test_call_of_a_busy_singletons_own_chain_fails_at_once(h):
    await h.deploy(kind=SINGLETON)
    chain = CallChain.new()
    first = asyncio.create_task(h.n(tag="first", sleep_ms=BUSY_MS, chain=chain))
    await h.probe.started("first")
    start = time.monotonic()
    error = await h.fails(tag="again", chain=chain)
    assert time.monotonic() - start < AT_ONCE
    assert error.code == StatusCode.FAILED_PRECONDITION
    assert error.message.startswith(
        f"call chain {COUNTER} comes back into {COUNTER} while it is busy with an earlier "
        "call of the same chain"
    )
    other = await h.n(tag="other", chain=CallChain.new())  # waits its turn
    assert (await first, other) == (1, 2)
    assert h.probe.entry("other").start >= h.probe.entry("first").end
    assert [e.tag for e in h.probe.entries] == ["first", "other"]


async def test_keyed_service_checks_the_chain_per_key(h):
    await h.deploy(kind=KEYED, key=BY_METADATA, pool=PoolConfig(1, 4))
    chain = CallChain.new()
    first = asyncio.create_task(h.n(key="ada", tag="first", sleep_ms=BUSY_MS, chain=chain))
    await h.probe.started("first")
    assert await h.n(key="bob", chain=chain) == 1  # another activation: no cycle
    error = await h.fails(key="ada", chain=chain)
    assert error.code == StatusCode.FAILED_PRECONDITION
    assert f"call chain {COUNTER}['ada'] comes back into {COUNTER}['ada']" in error.message
    assert await first == 1


async def test_call_back_into_a_busy_singleton_through_another_service_fails_fast(h):
    await h.deploy(name="a", services=(SVC_A,), kind=SINGLETON)
    await h.deploy(name="b", services=(SVC_B,), kind=REGULAR)
    # Without a cycle, a guest's call through the host function works.
    assert await h.n(SVC_A, tag="ab", route=[SVC_B]) == 1
    start = time.monotonic()
    error = await h.fails(SVC_A, tag="aba", route=[SVC_B, SVC_A], timeout=10)
    assert time.monotonic() - start < 1, "the cycle waited instead of failing"
    assert error.code == StatusCode.FAILED_PRECONDITION
    cycle = f"{SVC_A} -> {SVC_B} -> {SVC_A}"
    assert error.message.startswith(f"call chain {cycle} comes back into {SVC_A} while it is busy")
    # The inner call (B's host function calling A) is the one refused.
    inner = [e for e in h.probe.entries if e.tag == "aba" and e.service == SVC_B]
    assert inner[0].error.code == StatusCode.FAILED_PRECONDITION
    assert await h.n(SVC_A) == 2  # A is free again, its state intact


# -- shutdown ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", [REGULAR, SINGLETON])
async def test_close_lets_an_inflight_call_finish(h, kind):
    await h.deploy(kind=kind)
    inflight = asyncio.create_task(h.n(tag="inflight", sleep_ms=300))
    await h.probe.started("inflight")
    start = time.monotonic()
    await h.runtime.close(grace=5)
    assert await inflight == 1
    assert time.monotonic() - start < 2


@pytest.mark.parametrize("kind", [REGULAR, SINGLETON])
async def test_close_stops_a_call_still_running_after_the_grace_period(h, kind):
    await h.deploy(kind=kind)
    stuck = asyncio.create_task(h.n(tag="stuck", action=FOREVER, timeout=6))
    await h.probe.started("stuck")
    start = time.monotonic()
    await h.runtime.close(grace=0.3)
    assert time.monotonic() - start < 1.5
    try:
        await asyncio.wait_for(stuck, 1.5)
    except RpcError as exc:
        assert exc.code == StatusCode.UNAVAILABLE, exc
        assert "shutting down" in exc.message
    except TimeoutError:
        pytest.fail("the call still runs after close(grace=0.3): its guest was not stopped")
    else:
        pytest.fail("a guest that never returns answered")
