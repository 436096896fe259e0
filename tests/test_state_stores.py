# Test plan: the state stores memory, sqlite and redis (okra_plugins.store_*).
# - The conformance suite (okra_core/testing/state_conformance.py), once per store, each
#   opened through the plugin registry as the runtime opens it: get/set/delete and
#   versions (growing across delete and expiry), arbitrary byte keys and values, list in
#   byte order by prefix (0xff keys, empty prefix) with cursor and limit, compare-and-set
#   (match, mismatch, version 0, threads racing: exactly one wins), TTL on the injected
#   clock (expiry, cleared by a write without ttl), increment (decimal text, 64-bit
#   bounds, NotAnInteger, threads: no lost update), namespace isolation with ':' and '#'.
#   sqlite on a real file in a temp dir; redis on a real redis-server started for the
#   session (skipped, saying why, only when the binary is missing).
# - Registration: each store is a `register_state_stores` plugin with a `clock` option
#   (the runtime passes its clock to factories that take one); unknown options and a
#   missing path/url are ConfigErrors naming the known options.
# - sqlite: state and the version counter survive close and reopen; WAL with
#   synchronous FULL by default, NORMAL on request, anything else refused; a database
#   from a newer schema is refused; expired rows are purged by later writes; every
#   thread's connection is closed by close(), and a store used after close fails; a
#   thread that ends releases its connection; readers on many threads see every
#   committed write.
# - redis: the documented key layout; a TTL also set in Redis (PEXPIRE) on the hash and
#   an index TTL never shorter than a member's; index members whose hash vanished are
#   dropped by list; a namespace full of expired members lists in bounded steps whose
#   cursors still cover everything; two prefixes on one database are separate stores;
#   an unreachable server fails at open; a bad url is a ConfigError; no error (nor the
#   store's repr) shows the url's password; an unknown query parameter and a db path that
#   is not a number are ConfigErrors saying what is accepted (no server needed).
import gc
import sqlite3
import threading

import pytest

from okra_core.clock import FakeClock
from okra_core.errors import ConfigError
from okra_core.plugins import Registry, make_plugin_manager
from okra_core.state import Entry
from okra_core.testing.state_conformance import StateStoreConformance, walk
from okra_core.testing.threads import run_together
from redis_support import REDIS_SERVER, redis_server

STORES = ("memory", "sqlite", "redis")


@pytest.fixture(scope="session")
def registry():
    return Registry(make_plugin_manager(entrypoints=False))


@pytest.fixture(scope="session")
def redis_url():
    if REDIS_SERVER is None:
        pytest.skip("redis-server is not installed (Debian: apt-get install redis-server; .ci/run installs it)")
    with redis_server() as url:
        yield url


@pytest.fixture
def open_store(request, registry, tmp_path):
    """name, **options -> a store from the registry (sqlite in tmp_path, redis on the
    session's server), closed after the test."""
    opened = []

    def open_(name: str, clock=None, **options):
        if name == "sqlite":
            options.setdefault("path", str(tmp_path / "state.db"))
        elif name == "redis":
            options.setdefault("url", request.getfixturevalue("redis_url"))
        store = registry.state_store(name, clock=clock or FakeClock(), **options)
        opened.append(store)
        return store

    yield open_
    for store in opened:
        store.close()


class TestConformance(StateStoreConformance):
    @pytest.fixture(params=STORES)
    def make_store(self, request, open_store):
        return lambda clock: open_store(request.param, clock=clock)


# -- registration --------------------------------------------------------------------


@pytest.mark.parametrize("name", STORES)
def test_each_store_is_a_plugin_taking_the_runtimes_clock(registry, open_store, name):
    import inspect

    factory = registry.get("state_stores", name)
    assert "clock" in inspect.signature(factory).parameters
    store = open_store(name)
    assert store.name == name


@pytest.mark.parametrize(("name", "known"), [
    ("memory", "clock"), ("sqlite", "path, clock, synchronous"), ("redis", "url, clock, prefix, timeout"),
])
def test_an_unknown_option_is_a_config_error_naming_the_known_ones(registry, name, known):
    with pytest.raises(ConfigError, match=f"unknown options for state store {name}: colour .*known: {known}"):
        registry.state_store(name, colour="blue")


def test_sqlite_needs_a_path_and_redis_a_url(registry):
    with pytest.raises(ConfigError, match="sqlite needs a path"):
        registry.state_store("sqlite")
    with pytest.raises(ConfigError, match="redis needs a url"):
        registry.state_store("redis")


# -- sqlite --------------------------------------------------------------------------


def test_sqlite_state_and_versions_survive_reopening(open_store, tmp_path):
    clock = FakeClock()
    store = open_store("sqlite", clock=clock)
    version = store.set("svc", b"k", b"v")
    store.set("svc", b"ttl", b"v", ttl=10)
    store.delete("svc", b"k")
    last = store.set("svc", b"kept", b"v")
    store.close()

    again = open_store("sqlite", clock=clock)
    assert again.get("svc", b"kept") == Entry(b"v", last)
    assert again.get("svc", b"k") is None
    assert again.get("svc", b"ttl") is not None
    assert again.set("svc", b"k", b"v2") > last > version
    clock.advance(11)
    assert again.get("svc", b"ttl") is None


@pytest.mark.parametrize(("option", "pragma"), [({}, 2), ({"synchronous": "normal"}, 1)])
def test_sqlite_uses_wal_and_the_synchronous_level_asked_for(open_store, option, pragma):
    store = open_store("sqlite", **option)
    store.set("svc", b"k", b"v")
    connection = store._connection()  # the calling thread's, as a store call uses it
    assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert connection.execute("PRAGMA synchronous").fetchone()[0] == pragma


def test_sqlite_refuses_an_unknown_synchronous_level(registry, tmp_path):
    with pytest.raises(ConfigError, match="synchronous must be one of full, normal"):
        registry.state_store("sqlite", path=str(tmp_path / "s.db"), synchronous="off")


def test_sqlite_refuses_a_database_from_a_newer_okra(registry, tmp_path):
    path = tmp_path / "state.db"
    with sqlite3.connect(path) as connection:
        connection.execute("PRAGMA user_version = 99")
    connection.close()
    with pytest.raises(ConfigError, match="schema version 99, newer"):
        registry.state_store("sqlite", path=str(path))


def test_sqlite_a_path_that_cannot_be_opened_fails_at_open(registry, tmp_path):
    with pytest.raises(sqlite3.OperationalError):
        registry.state_store("sqlite", path=str(tmp_path / "missing-dir" / "state.db"))


def test_sqlite_later_writes_purge_expired_rows(open_store, tmp_path):
    clock = FakeClock()
    store = open_store("sqlite", clock=clock)
    for i in range(40):
        store.set(f"svc#{i}", b"k", b"v", ttl=1)  # namespaces nobody reads again
    clock.advance(2)
    rows = lambda: sqlite3.connect(tmp_path / "state.db").execute(  # noqa: E731
        "SELECT count(*) FROM entries").fetchone()[0]
    assert rows() == 40
    for i in range(3):
        store.set("other", b"k%d" % i, b"v")
    assert rows() == 3  # 40 expired, 16 purged per write


def test_sqlite_close_closes_every_threads_connection(open_store):
    store = open_store("sqlite")
    store.set("svc", b"k", b"v")
    opened = threading.Barrier(5)
    closed = threading.Event()
    failed: list[int] = []

    def reader() -> None:
        assert store.get("svc", b"k").value == b"v"
        connection = store._connection()
        opened.wait(10)
        assert closed.wait(10)
        for call in (lambda: connection.execute("SELECT 1"), lambda: store.get("svc", b"k")):
            try:
                call()
            except sqlite3.ProgrammingError:
                failed.append(1)

    threads = [threading.Thread(target=reader) for _ in range(4)]
    for thread in threads:
        thread.start()
    opened.wait(10)
    store.close()
    closed.set()
    for thread in threads:
        thread.join(10)
    assert len(failed) == 8  # each thread's connection closed, and no new one opened
    with pytest.raises(sqlite3.ProgrammingError):
        store.get("svc", b"k")


def test_sqlite_a_finished_threads_connection_is_released(open_store):
    store = open_store("sqlite")
    store.set("svc", b"k", b"v")
    run_together([lambda: store.get("svc", b"k")] * 6)
    gc.collect()
    assert len(store._connections) == 1  # only this thread's is left


def test_sqlite_readers_on_many_threads_see_every_committed_write(open_store):
    store = open_store("sqlite")
    stop = threading.Event()
    written: list[int] = []

    def writer() -> None:
        for i in range(1, 101):
            store.set("svc", b"n", b"%d" % i)
            written.append(i)
        stop.set()

    def reader() -> None:
        while not stop.is_set():
            floor = written[-1] if written else 0  # committed before this read began
            entry = store.get("svc", b"n")
            assert entry is None and floor == 0 or int(entry.value) >= floor

    run_together([writer, reader, reader, reader])
    assert store.get("svc", b"n").value == b"100"


# -- redis ---------------------------------------------------------------------------


@pytest.fixture
def redis_client(redis_url):
    import redis

    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


def test_redis_key_layout_is_the_documented_one(open_store, redis_client):
    store = open_store("redis", prefix="layout:")
    namespace = "shop.v1.Cart#user:7"
    encoded = namespace.encode()
    version = store.set(namespace, b"item#1", b"v", ttl=30)
    base = b"layout:%d:%s:" % (len(encoded), encoded)
    assert sorted(redis_client.keys(b"layout:*")) == sorted(
        [b"layout:version", base + b"i", base + b"e:item#1"]
    )
    assert redis_client.hgetall(base + b"e:item#1") == {
        b"v": b"v", b"n": str(version).encode(), b"x": str(store._now_ms() + 30_000).encode(),
    }
    assert redis_client.zrange(base + b"i", 0, -1, withscores=True) == [(b"item#1", 0.0)]
    assert int(redis_client.get(b"layout:version")) == version


def test_redis_ttls_reclaim_memory_in_redis_too(open_store, redis_client):
    store = open_store("redis", prefix="reclaim:")
    base = b"reclaim:3:svc:"
    store.set("svc", b"a", b"v", ttl=30)
    assert 29_000 < redis_client.pttl(base + b"e:a") <= 30_000
    assert 29_000 < redis_client.pttl(base + b"i") <= 30_000
    store.set("svc", b"b", b"v", ttl=60)
    assert 59_000 < redis_client.pttl(base + b"i") <= 60_000  # never shorter than a member
    store.set("svc", b"c", b"v", ttl=10)
    assert 59_000 < redis_client.pttl(base + b"i") <= 60_000
    store.increment("svc", b"n", 1)  # a member that never expires: neither does the index
    assert redis_client.pttl(base + b"i") == -1
    assert redis_client.pttl(base + b"e:n") == -1
    store.set("svc", b"a", b"v")  # a write without ttl clears Redis's TTL too
    assert redis_client.pttl(base + b"e:a") == -1


def test_redis_list_drops_members_whose_hash_vanished(open_store, redis_client):
    store = open_store("redis", prefix="stale:")
    for key in (b"a", b"b", b"c"):
        store.set("svc", key, b"v")
    redis_client.delete(b"stale:3:svc:e:b")  # as Redis's own expiry would
    assert [k for k, _ in store.list("svc").entries] == [b"a", b"c"]
    assert redis_client.zrange(b"stale:3:svc:i", 0, -1) == [b"a", b"c"]
    assert store.get("svc", b"b") is None


def test_redis_list_goes_through_many_expired_members_in_bounded_steps(open_store, monkeypatch):
    import okra_plugins.store_redis as store_redis

    monkeypatch.setattr(store_redis, "LIST_SCAN_BUDGET", 10)
    clock = FakeClock()
    store = open_store("redis", clock=clock, prefix="budget:")
    for i in range(60):
        store.set("svc", b"%02d" % i, b"v", ttl=None if i % 20 == 19 else 5)
    clock.advance(6)
    first = store.list("svc", limit=2)
    assert first.entries == [] and first.cursor is not None  # stopped short, moved on
    assert sum(walk(store, "svc", limit=2), []) == [b"19", b"39", b"59"]


def test_redis_prefixes_separate_stores_on_one_database(open_store):
    one = open_store("redis", prefix="one:")
    two = open_store("redis", prefix="two:")
    one.set("svc", b"k", b"1")
    assert two.get("svc", b"k") is None
    assert two.list("svc").entries == []


def test_redis_an_unreachable_server_fails_at_open(registry):
    import redis

    with pytest.raises(redis.ConnectionError):
        registry.state_store("redis", url="redis://127.0.0.1:1/0", timeout=2)


def test_redis_a_bad_url_is_a_config_error(registry):
    with pytest.raises(ConfigError, match="bad url"):
        registry.state_store("redis", url="http://localhost/")


@pytest.mark.parametrize(("url", "shown"), [
    ("redis://:s3cret@[::1", "redis://:***@[::1"),
    ("redis://user:s3cret@host:6379/x", "redis://user:***@host:6379/x"),
    ("rediss://:s3cret@host:6379/0?foo=bar", "rediss://:***@host:6379/0?foo=bar"),
    ("unix:///run/redis.sock?password=s3cret&db=x", "unix:///run/redis.sock?password=***&db=x"),
])
def test_redis_errors_never_show_the_password(registry, url, shown):
    with pytest.raises(ConfigError) as info:
        registry.state_store("redis", url=url)
    assert "s3cret" not in str(info.value) and shown in str(info.value)


def test_redis_repr_hides_the_password():
    from okra_plugins.store_redis import redact_url

    assert redact_url("redis://:s3cret@host:6379/0") == "redis://:***@host:6379/0"
    assert redact_url("redis://user@host:6379/0") == "redis://user@host:6379/0"
    assert redact_url("redis://a:b@c@host/0") == "redis://a:***@host/0"


@pytest.mark.parametrize(("url", "fragment"), [
    ("redis://localhost:6379/0?foo=bar",
     "unknown query parameter foo in the url 'redis://localhost:6379/0?foo=bar' (known: db, username, password,"),
    ("redis://localhost:6379/notanumber",
     "the path of a redis url is the database number, e.g. redis://localhost:6379/0; got '/notanumber'"),
    ("redis://localhost:6379/0?db=x", "db must be a whole number, got 'x'"),
    ("redis://localhost:6379/0?socket_timeout=soon", "socket_timeout"),
    ("redis://localhost:6379/0?ssl_certfile=c.pem", "unknown query parameter ssl_certfile"),
])
def test_redis_url_mistakes_are_config_errors_saying_what_is_accepted(registry, url, fragment):
    with pytest.raises(ConfigError) as info:
        registry.state_store("redis", url=url)
    assert fragment in str(info.value)
