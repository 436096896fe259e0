# okra.state end to end: a real Runtime (wasmtime) runs state_counter.wat, a guest whose
# every call increments the counter "n" through okra.state.increment and answers with
# the new value (or the call's error code and message).
#
# Test plan
# - the runtime links okra.state with the spec's wasm types (the deploy type-checks the
#   guest's i64 imports) and opens its sqlite store in data_dir/state.db; a regular
#   service counts in its own namespace there.
# - a keyed service (key: the request field `name`) counts per key: namespace
#   <service>#<key>, as the runtime sets the key of each call.
# - state outlives the runtime: a new runtime on the same data_dir goes on counting.
# - read_only in the manifest: the guest gets PERMISSION_DENIED naming the setting,
#   and the denial is audited (Runtime.stats denials).
# - read_only from an operator policy rule: the message names the rule.
# - the memory store (`state_store="memory"`) and the redis store (a real
#   redis-server; skipped only without the binary) behind the same guest.
import sqlite3

import pytest
import wasmtime

from okra_core.config import RuntimeConfig
from okra_core.manifest import KEYED, ActorConfig, KeySource, PoolConfig
from okra_core.package import Package
from okra_core.policy import Policy
from okra_core.runtime import Runtime
from okra_core.status import RpcError, StatusCode
from redis_support import REDIS_SERVER, redis_server
from support import FIXTURES_DIR, compile_protos, make_manifest

PROTO = """
syntax = "proto3";
package counter.v1;
message HitRequest { string name = 1; }
message Count { sfixed64 n = 1; }
service Counter { rpc Hit(HitRequest) returns (Count); }
service KeyedCounter { rpc Hit(HitRequest) returns (Count); }
"""
COUNTER, KEYED_COUNTER = "counter.v1.Counter", "counter.v1.KeyedCounter"


@pytest.fixture(scope="module")
def descriptors(tmp_path_factory):
    return compile_protos(tmp_path_factory.mktemp("protos"), {"counter/v1/counter.proto": PROTO})


@pytest.fixture(scope="module")
def messages(descriptors):
    from okra_core.descriptors import load_descriptor_set, service_schema

    pool = load_descriptor_set(descriptors)
    method = service_schema(pool, descriptors, COUNTER).methods["Hit"]
    return method.input_class, method.output_class


@pytest.fixture(scope="module")
def wasm():
    return wasmtime.wat2wasm((FIXTURES_DIR / "state_counter.wat").read_text())


@pytest.fixture
def package(descriptors, wasm):
    def make(service=COUNTER, settings=None, **fields) -> Package:
        name = "keyed" if service == KEYED_COUNTER else "counter"
        if service == KEYED_COUNTER:
            fields.setdefault("actor", ActorConfig(KEYED, KeySource(field="name")))
        manifest = make_manifest(
            name=name, services=(service,), host_apis={"okra.state": settings or {}},
            pool=PoolConfig(1, 2), abi_version=1, **fields,
        )
        return Package.from_parts(manifest=manifest, wasm=wasm, descriptor_set=descriptors)

    return make


@pytest.fixture
async def start(tmp_path):
    runtimes = []

    async def start_(**config) -> Runtime:
        config.setdefault("data_dir", str(tmp_path / "data"))
        runtime = Runtime(RuntimeConfig(engine_options={"cache_dir": str(tmp_path / "cache")}, **config))
        await runtime.start()
        runtimes.append(runtime)
        return runtime

    yield start_
    for runtime in runtimes:
        await runtime.close(grace=0)


async def hit(runtime, messages, service=COUNTER, name="") -> int:
    Hit, Count = messages
    out = await runtime.invoke(service, "Hit", Hit(name=name).SerializeToString(), timeout=10)
    return Count.FromString(out).n


def stored(tmp_path, namespace: str) -> bytes | None:
    with sqlite3.connect(tmp_path / "data" / "state.db") as db:
        row = db.execute(
            "SELECT value FROM entries WHERE namespace = ? AND key = ?", (namespace, b"n")
        ).fetchone()
    db.close()
    return None if row is None else row[0]


async def test_a_regular_service_counts_in_its_namespace_of_the_sqlite_store(start, package, messages, tmp_path):
    runtime = await start()
    await runtime.deploy(package())
    assert [await hit(runtime, messages) for _ in range(3)] == [1, 2, 3]
    assert stored(tmp_path, COUNTER) == b"3"


async def test_each_key_of_a_keyed_service_counts_for_itself(start, package, messages, tmp_path):
    runtime = await start()
    await runtime.deploy(package(KEYED_COUNTER))
    assert await hit(runtime, messages, KEYED_COUNTER, "alice") == 1
    assert await hit(runtime, messages, KEYED_COUNTER, "alice") == 2
    assert await hit(runtime, messages, KEYED_COUNTER, "bob#x") == 1
    assert await hit(runtime, messages, KEYED_COUNTER, "alice") == 3
    assert stored(tmp_path, f"{KEYED_COUNTER}#alice") == b"3"
    assert stored(tmp_path, f"{KEYED_COUNTER}#bob#x") == b"1"
    assert stored(tmp_path, KEYED_COUNTER) is None


async def test_state_outlives_the_runtime(start, package, messages):
    first = await start()
    await first.deploy(package())
    assert await hit(first, messages) == 1
    await first.close(grace=0)
    second = await start()
    await second.deploy(package())
    assert await hit(second, messages) == 2


async def test_read_only_in_the_manifest_is_denied_audited_and_explained(start, package, messages):
    runtime = await start()
    await runtime.deploy(package(settings={"read_only": True}))
    with pytest.raises(RpcError) as caught:
        await hit(runtime, messages)
    assert caught.value.code == StatusCode.PERMISSION_DENIED
    assert "okra.state.increment refused" in caught.value.message
    assert 'read_only = true in [host_apis."okra.state"]' in caught.value.message
    assert runtime.stats(COUNTER)["denials"] == {"okra.state": 1}


async def test_read_only_from_policy_names_the_rule(start, package, messages):
    policy = Policy.parse({"rule": [{
        "name": "freeze", "services": ["counter.v1.*"],
        "host_apis": {"okra.state": {"read_only": True}},
    }]}, source="policy.toml")
    runtime = await start(policy=policy)
    await runtime.deploy(package())
    with pytest.raises(RpcError) as caught:
        await hit(runtime, messages)
    assert caught.value.code == StatusCode.PERMISSION_DENIED
    assert "operator policy rule 'freeze'" in caught.value.message


async def test_the_memory_store_behind_the_same_guest(start, package, messages, tmp_path):
    runtime = await start(state_store="memory")
    await runtime.deploy(package(KEYED_COUNTER))
    assert [await hit(runtime, messages, KEYED_COUNTER, "k") for _ in range(2)] == [1, 2]
    assert not (tmp_path / "data" / "state.db").exists()


async def test_the_redis_store_behind_the_same_guest(start, package, messages):
    if REDIS_SERVER is None:
        pytest.skip("redis-server is not installed (Debian: apt-get install redis-server; .ci/run installs it)")
    import redis

    with redis_server() as url:
        runtime = await start(state_store="redis", state_options={"url": url})
        await runtime.deploy(package(KEYED_COUNTER))
        assert [await hit(runtime, messages, KEYED_COUNTER, "alice") for _ in range(2)] == [1, 2]
        assert await hit(runtime, messages, KEYED_COUNTER, "bob") == 1
        namespace = f"{KEYED_COUNTER}#alice".encode()
        client = redis.Redis.from_url(url)
        try:
            assert client.hget(b"okra:state:%d:%s:e:n" % (len(namespace), namespace), b"v") == b"2"
        finally:
            client.close()
        await runtime.close(grace=0)
