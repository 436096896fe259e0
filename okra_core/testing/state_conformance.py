"""The StateStore conformance suite: what every state store must do, as pytest tests.

The built-in stores run it (tests/test_state_stores.py); a third-party store runs it by
subclassing `StateStoreConformance` in a test module of its own and giving a
`make_store` fixture, a callable that opens the store on a clock it is handed:

    import pytest
    from okra_core.testing.state_conformance import StateStoreConformance

    class TestMyStore(StateStoreConformance):
        @pytest.fixture
        def make_store(self, tmp_path):
            return lambda clock: MyStore(tmp_path / "db", clock=clock)

The suite moves that clock (an okra_core.clock.FakeClock) to test expiry, so the store
must take its time from it. Every test works in namespaces of its own (random names),
so the store need not start empty: a shared server is fine. Stores must be
thread-safe; some tests write from several threads at once.

What it holds a store to is okra_core/state.py's contract, made precise where the
runtime depends on the detail (docs/state.md):

* versions: > 0, larger at every write of a key, even across delete and expiry;
* `ttl` > 0 seconds (ValueError otherwise) expires a value on the store's clock; a
  write without `ttl` clears an earlier one;
* counters: an optional "-" then ASCII digits (leading zeros allowed) within the signed
  64-bit range; anything else is NotAnInteger; a result outside that range is
  OverflowError; neither changes the stored value;
* `list`: byte order, `limit` from 1 to MAX_LIST_LIMIT (ValueError otherwise), a page's
  cursor None when nothing is left, else the last key it returned (or a later key it
  examined, if it stopped short); a cursor is a key: `cursor=k` lists what follows k;
* namespaces share nothing, whatever characters their names hold.
"""

from __future__ import annotations

import math
import threading
import uuid
from collections.abc import Callable

import pytest

from okra_core.clock import FakeClock
from okra_core.state import MAX_LIST_LIMIT, Entry, NotAnInteger, Page, StateStore
from okra_core.testing.threads import run_together

INT64_MAX = 2**63 - 1
INT64_MIN = -(2**63)

#: Keys whose byte order a store might get wrong: NUL, 0xff, a prefix and its
#: extensions, non-UTF-8 bytes.
AWKWARD_KEYS = [
    b"", b"\x00", b"\x00\x00", b"\x01", b"a", b"a\x00", b"a\x7f", b"a\x80", b"a\xff",
    b"a\xff\x00", b"a\xff\xff", b"ab", b"b", b"\x7f", b"\x80", b"\xfe\xff", b"\xff",
    b"\xff\x00", b"\xff\xff", b"\xff\xff\xff",
]


def walk(store: StateStore, namespace: str, prefix: bytes = b"", limit: int = 100) -> list[list[bytes]]:
    """Every page of a listing, as lists of keys; fails if a cursor goes backwards or
    falls behind the page it ends (a page may stop short, even empty, as long as its
    cursor moves on: a store may bound the work one call does)."""
    pages: list[list[bytes]] = []
    cursor = None
    while True:
        page = store.list(namespace, prefix, cursor=cursor, limit=limit)
        assert isinstance(page, Page)
        keys = [key for key, _ in page.entries]
        assert len(keys) <= limit
        pages.append(keys)
        if page.cursor is None:
            return pages
        assert isinstance(page.cursor, bytes)
        assert cursor is None or page.cursor > cursor, "the cursor went backwards"
        assert not keys or page.cursor >= keys[-1], "the cursor is before the page's last key"
        cursor = page.cursor
        assert len(pages) < 10_000, "the listing does not end"


class StateStoreConformance:
    """Subclass it (as `Test...`) and give a `make_store` fixture: see the module doc."""

    @pytest.fixture
    def make_store(self) -> Callable[[FakeClock], StateStore]:
        raise NotImplementedError("give a make_store fixture: clock -> StateStore")

    @pytest.fixture
    def clock(self) -> FakeClock:
        return FakeClock()

    @pytest.fixture
    def store(self, make_store, clock):
        store = make_store(clock)
        try:
            yield store
        finally:
            store.close()

    @pytest.fixture
    def ns(self) -> str:
        return f"conformance.v1.Store#{uuid.uuid4().hex}"

    # -- get, set, delete, versions ---------------------------------------------------

    def test_the_store_has_a_name_and_the_protocol(self, store):
        assert isinstance(store, StateStore)
        assert isinstance(store.name, str) and store.name

    def test_a_missing_key_reads_as_none(self, store, ns):
        assert store.get(ns, b"nothing") is None

    def test_a_value_set_reads_back_with_its_version(self, store, ns):
        version = store.set(ns, b"k", b"v")
        assert isinstance(version, int) and version > 0
        assert store.get(ns, b"k") == Entry(b"v", version)

    def test_every_write_of_a_key_gives_it_a_larger_version(self, store, ns):
        versions = [store.set(ns, b"k", b"1")]
        versions.append(store.set(ns, b"k", b"2"))
        versions.append(store.compare_and_set(ns, b"k", b"3", version=versions[-1]))
        store.increment(ns, b"k", 1)
        versions.append(store.get(ns, b"k").version)
        versions.append(store.set(ns, b"k", b"2"))  # the same value again is a write too
        assert versions == sorted(set(versions)), versions
        assert store.get(ns, b"k") == Entry(b"2", versions[-1])

    def test_versions_keep_growing_after_delete_and_expiry(self, store, ns, clock):
        first = store.set(ns, b"k", b"v")
        assert store.delete(ns, b"k")
        second = store.set(ns, b"k", b"v", ttl=5)
        assert second > first
        clock.advance(6)
        assert store.get(ns, b"k") is None
        third = store.compare_and_set(ns, b"k", b"v", version=0)
        assert third is not None and third > second
        assert store.delete(ns, b"k")
        assert store.increment(ns, b"k", 1) == 1
        assert store.get(ns, b"k").version > third

    def test_delete_says_whether_the_key_existed(self, store, ns):
        assert store.delete(ns, b"k") is False
        store.set(ns, b"k", b"v")
        assert store.delete(ns, b"k") is True
        assert store.get(ns, b"k") is None
        assert store.delete(ns, b"k") is False

    @pytest.mark.parametrize("key", [b"", b"\x00", b"\xff\xfe", "ключ 🔑".encode(), b"k" * 1024, b"a:b#c"])
    def test_keys_are_any_bytes(self, store, ns, key):
        version = store.set(ns, key, b"v:" + key)
        assert store.get(ns, key) == Entry(b"v:" + key, version)
        assert [k for k, _ in store.list(ns).entries] == [key]
        assert store.delete(ns, key)

    @pytest.mark.parametrize("value", [b"", b"\x00" * 10, bytes(range(256)), b"\xff" * 3, b"x" * (1 << 20)])
    def test_values_are_any_bytes(self, store, ns, value):
        version = store.set(ns, b"k", value)
        assert store.get(ns, b"k") == Entry(value, version)
        assert store.list(ns).entries == [(b"k", Entry(value, version))]

    def test_bytearray_arguments_are_copied(self, store, ns):
        key, value = bytearray(b"k"), bytearray(b"value")
        store.set(ns, key, value)
        key[0], value[0] = ord("x"), ord("X")
        assert store.get(ns, b"k").value == b"value"
        assert store.get(ns, b"x") is None

    # -- list -----------------------------------------------------------------------

    def test_list_returns_every_key_in_byte_order(self, store, ns):
        for key in reversed(AWKWARD_KEYS):
            store.set(ns, key, b"=" + key)
        page = store.list(ns, limit=MAX_LIST_LIMIT)
        assert [key for key, _ in page.entries] == sorted(AWKWARD_KEYS)
        assert all(entry.value == b"=" + key for key, entry in page.entries)
        assert page.cursor is None

    @pytest.mark.parametrize("prefix", [b"", b"a", b"a\xff", b"\xff", b"\xff\xff", b"\x00", b"a\x80", b"zz"])
    def test_list_by_prefix_returns_exactly_the_keys_that_start_with_it(self, store, ns, prefix):
        for key in AWKWARD_KEYS:
            store.set(ns, key, b"v")
        expected = sorted(k for k in AWKWARD_KEYS if k.startswith(prefix))
        assert sum(walk(store, ns, prefix, limit=2), []) == expected
        assert [k for k, _ in store.list(ns, prefix, limit=MAX_LIST_LIMIT).entries] == expected

    @pytest.mark.parametrize("limit", [1, 2, 3, 5, 7, 20, 21])
    def test_pages_cover_every_key_once_and_the_last_has_no_cursor(self, store, ns, limit):
        keys = sorted(AWKWARD_KEYS + [b"p/%03d" % i for i in range(20)])
        for key in keys:
            store.set(ns, key, b"v")
        pages = walk(store, ns, limit=limit)
        assert sum(pages, []) == keys
        assert all(len(page) == limit for page in pages[:-1])
        assert pages[-1] or len(pages) == 1, "an empty last page after a full one"
        assert len(pages) == math.ceil(len(keys) / limit)

    def test_an_empty_namespace_lists_nothing(self, store, ns):
        page = store.list(ns)
        assert page.entries == [] and page.cursor is None

    @pytest.mark.parametrize("limit", [0, -1, MAX_LIST_LIMIT + 1])
    def test_a_limit_out_of_range_is_refused(self, store, ns, limit):
        with pytest.raises(ValueError):
            store.list(ns, limit=limit)

    def test_the_largest_limit_lists_that_many(self, store, ns):
        for i in range(MAX_LIST_LIMIT + 1):
            store.set(ns, b"%04d" % i, b"")
        page = store.list(ns, limit=MAX_LIST_LIMIT)
        assert len(page.entries) == MAX_LIST_LIMIT and page.cursor == b"0999"
        rest = store.list(ns, cursor=page.cursor, limit=MAX_LIST_LIMIT)
        assert [k for k, _ in rest.entries] == [b"1000"] and rest.cursor is None

    def test_a_cursor_is_a_key_and_lists_what_follows_it(self, store, ns):
        for key in (b"a", b"a\x00", b"a\xff", b"b", b"c"):
            store.set(ns, key, b"v")
        keys = lambda **kw: [k for k, _ in store.list(ns, **kw).entries]  # noqa: E731
        assert keys(cursor=b"a") == [b"a\x00", b"a\xff", b"b", b"c"]
        assert keys(cursor=b"a\x01") == [b"a\xff", b"b", b"c"]  # not a stored key
        assert keys(cursor=b"") == [b"a", b"a\x00", b"a\xff", b"b", b"c"]
        assert keys(prefix=b"a", cursor=b"\x00") == [b"a", b"a\x00", b"a\xff"]  # before the prefix
        assert keys(prefix=b"a", cursor=b"a\xff") == []
        assert keys(prefix=b"a", cursor=b"zzz") == []
        assert store.list(ns, cursor=b"\xff\xff\xff").cursor is None

    def test_list_skips_expired_entries(self, store, ns, clock):
        for i in range(10):
            store.set(ns, b"k%d" % i, b"v", ttl=5 if i % 2 else None)
        store.set(ns, b"later", b"v", ttl=50)
        clock.advance(6)
        assert sum(walk(store, ns, limit=2), []) == [b"k0", b"k2", b"k4", b"k6", b"k8", b"later"]
        clock.advance(50)
        assert sum(walk(store, ns, limit=3), []) == [b"k0", b"k2", b"k4", b"k6", b"k8"]

    def test_list_returns_entries_with_versions(self, store, ns):
        one = store.set(ns, b"one", b"1")
        two = store.increment(ns, b"two", 2)
        assert two == 2
        page = store.list(ns)
        assert page.entries[0] == (b"one", Entry(b"1", one))
        assert page.entries[1][0] == b"two" and page.entries[1][1].value == b"2"
        assert page.entries[1][1] == store.get(ns, b"two")

    # -- compare-and-set ---------------------------------------------------------------

    def test_compare_and_set_writes_over_the_expected_version(self, store, ns):
        version = store.set(ns, b"k", b"old")
        new = store.compare_and_set(ns, b"k", b"new", version=version)
        assert new is not None and new > version
        assert store.get(ns, b"k") == Entry(b"new", new)

    def test_compare_and_set_on_another_version_changes_nothing(self, store, ns):
        version = store.set(ns, b"k", b"old")
        for wrong in (version - 1, version + 1, 0, 10**12):
            assert store.compare_and_set(ns, b"k", b"new", version=wrong) is None
        assert store.get(ns, b"k") == Entry(b"old", version)

    def test_compare_and_set_version_zero_creates_only_if_absent(self, store, ns, clock):
        created = store.compare_and_set(ns, b"k", b"first", version=0)
        assert created is not None and created > 0
        assert store.compare_and_set(ns, b"k", b"second", version=0) is None
        assert store.get(ns, b"k") == Entry(b"first", created)
        assert store.compare_and_set(ns, b"missing", b"x", version=created) is None
        assert store.get(ns, b"missing") is None
        store.delete(ns, b"k")
        assert store.compare_and_set(ns, b"k", b"again", version=0) is not None
        store.set(ns, b"short", b"x", ttl=1)
        clock.advance(2)
        assert store.compare_and_set(ns, b"short", b"y", version=0) is not None

    def test_compare_and_set_refuses_a_negative_version(self, store, ns):
        with pytest.raises(ValueError):
            store.compare_and_set(ns, b"k", b"v", version=-1)
        assert store.get(ns, b"k") is None

    def test_concurrent_compare_and_set_exactly_one_wins(self, store, ns):
        base = store.set(ns, b"k", b"base")
        results: dict[int, int | None] = {}

        def contender(n: int) -> Callable[[], None]:
            def run() -> None:
                results[n] = store.compare_and_set(ns, b"k", b"writer %d" % n, version=base)
            return run

        run_together([contender(n) for n in range(8)])
        winners = [n for n, version in results.items() if version is not None]
        assert len(results) == 8 and len(winners) == 1, results
        assert store.get(ns, b"k") == Entry(b"writer %d" % winners[0], results[winners[0]])

    def test_concurrent_creates_with_version_zero_exactly_one_wins(self, store, ns):
        results: list[int | None] = []
        run_together([lambda: results.append(store.compare_and_set(ns, b"k", b"v", version=0))] * 8)
        assert sum(r is not None for r in results) == 1, results

    # -- TTL --------------------------------------------------------------------------

    def test_a_value_expires_after_its_ttl(self, store, ns, clock):
        version = store.set(ns, b"k", b"v", ttl=10)
        clock.advance(9)
        assert store.get(ns, b"k") == Entry(b"v", version)
        clock.advance(2)
        assert store.get(ns, b"k") is None
        assert store.delete(ns, b"k") is False

    def test_a_fractional_ttl_counts(self, store, ns, clock):
        store.set(ns, b"k", b"v", ttl=0.25)
        clock.advance(0.2)
        assert store.get(ns, b"k") is not None
        clock.advance(0.1)
        assert store.get(ns, b"k") is None

    def test_a_write_without_ttl_clears_the_expiry(self, store, ns, clock):
        store.set(ns, b"set", b"v", ttl=5)
        store.set(ns, b"set", b"v")
        store.set(ns, b"cas", b"v", ttl=5)
        store.compare_and_set(ns, b"cas", b"w", version=store.get(ns, b"cas").version)
        store.increment(ns, b"counter", 1, ttl=5)
        store.increment(ns, b"counter", 1)
        clock.advance(3600)
        assert store.get(ns, b"set").value == b"v"
        assert store.get(ns, b"cas").value == b"w"
        assert store.get(ns, b"counter").value == b"2"

    def test_a_new_ttl_replaces_the_old_one(self, store, ns, clock):
        store.set(ns, b"longer", b"v", ttl=5)
        store.set(ns, b"longer", b"v", ttl=100)
        store.set(ns, b"shorter", b"v", ttl=100)
        store.set(ns, b"shorter", b"v", ttl=5)
        store.increment(ns, b"counter", 1, ttl=5)
        store.increment(ns, b"counter", 1, ttl=100)
        clock.advance(10)
        assert store.get(ns, b"longer") is not None
        assert store.get(ns, b"shorter") is None
        assert store.get(ns, b"counter").value == b"2"
        clock.advance(100)
        assert store.get(ns, b"longer") is None and store.get(ns, b"counter") is None

    def test_an_expired_counter_starts_again_from_zero(self, store, ns, clock):
        assert store.increment(ns, b"hits", 5, ttl=60) == 5
        assert store.increment(ns, b"hits", 1, ttl=60) == 6
        clock.advance(61)
        assert store.increment(ns, b"hits", 1, ttl=60) == 1

    def test_an_expired_value_of_any_kind_does_not_block_increment(self, store, ns, clock):
        store.set(ns, b"k", b"not a number", ttl=1)
        clock.advance(2)
        assert store.increment(ns, b"k", 3) == 3

    @pytest.mark.parametrize("ttl", [0, -1, -0.001, math.nan, math.inf])
    def test_a_ttl_that_is_not_positive_is_refused(self, store, ns, ttl):
        for write in (
            lambda: store.set(ns, b"k", b"v", ttl=ttl),
            lambda: store.compare_and_set(ns, b"k", b"v", version=0, ttl=ttl),
            lambda: store.increment(ns, b"k", 1, ttl=ttl),
        ):
            with pytest.raises(ValueError):
                write()
        assert store.get(ns, b"k") is None

    def test_expiry_follows_the_wall_clock_not_the_monotonic_one(self, store, ns, clock):
        store.set(ns, b"k", b"v", ttl=10)
        clock.set(clock.time_ns() + 11 * 10**9)  # NTP steps the wall clock forward
        assert store.get(ns, b"k") is None

    # -- increment --------------------------------------------------------------------

    def test_increment_counts_from_zero_and_stores_decimal_text(self, store, ns):
        assert store.increment(ns, b"n", 5) == 5
        assert store.increment(ns, b"n", -7) == -2
        assert store.increment(ns, b"n", 0) == -2
        entry = store.get(ns, b"n")
        assert entry.value == b"-2"
        assert store.increment(ns, b"n", 2) == 0
        assert store.get(ns, b"n").value == b"0"
        assert store.get(ns, b"n").version > entry.version

    @pytest.mark.parametrize(
        ("stored", "delta", "total"),
        [
            (b"41", 1, 42), (b"007", 1, 8), (b"-0", 1, 1), (b"-012", 2, -10), (b"0", 0, 0),
            (b"00000000000000000000000000042", 0, 42),
            (str(INT64_MAX).encode(), 0, INT64_MAX), (str(INT64_MIN).encode(), 1, INT64_MIN + 1),
            (str(INT64_MAX - 1).encode(), 1, INT64_MAX), (b"0", INT64_MIN, INT64_MIN),
        ],
    )
    def test_increment_reads_any_decimal_integer(self, store, ns, stored, delta, total):
        store.set(ns, b"n", stored)
        assert store.increment(ns, b"n", delta) == total
        assert store.get(ns, b"n").value == str(total).encode()

    @pytest.mark.parametrize(
        "stored",
        [b"", b"abc", b" 1", b"1 ", b"1\n", b"+1", b"1.5", b"1e3", b"1_000", b"0x10", b"--1", b"-",
         b"12a", b"\xff", "٣".encode(), b"\x00", b"9223372036854775808", b"-9223372036854775809",
         b"1" * 5000],
    )
    def test_increment_refuses_a_value_that_is_not_a_64_bit_decimal_integer(self, store, ns, stored):
        version = store.set(ns, b"n", stored)
        with pytest.raises(NotAnInteger):
            store.increment(ns, b"n", 1)
        assert store.get(ns, b"n") == Entry(stored, version)

    @pytest.mark.parametrize(
        ("stored", "delta"),
        [(str(INT64_MAX).encode(), 1), (str(INT64_MIN).encode(), -1), (b"1", INT64_MAX),
         (b"-2", INT64_MIN), (b"0", INT64_MAX + 1), (b"0", INT64_MIN - 1)],
    )
    def test_increment_past_64_bits_overflows_and_changes_nothing(self, store, ns, stored, delta):
        version = store.set(ns, b"n", stored)
        with pytest.raises(OverflowError):
            store.increment(ns, b"n", delta)
        assert store.get(ns, b"n") == Entry(stored, version)

    def test_concurrent_increments_lose_no_update(self, store, ns):
        threads, each = 8, 40
        seen: list[int] = []
        lock = threading.Lock()

        def count() -> None:
            for _ in range(each):
                value = store.increment(ns, b"hits", 1)
                with lock:
                    seen.append(value)

        run_together([count] * threads)
        assert sorted(seen) == list(range(1, threads * each + 1))
        assert store.get(ns, b"hits").value == str(threads * each).encode()

    # -- namespaces -------------------------------------------------------------------

    def test_namespaces_are_isolated(self, store, ns):
        other = ns + "-other"
        mine = store.set(ns, b"k", b"mine")
        assert store.get(other, b"k") is None
        assert store.list(other).entries == []
        assert store.delete(other, b"k") is False
        assert store.compare_and_set(other, b"k", b"x", version=mine) is None
        assert store.increment(other, b"k", 1) == 1  # its own counter, not "mine"
        assert store.get(ns, b"k") == Entry(b"mine", mine)
        assert store.delete(other, b"k")
        assert store.get(ns, b"k") == Entry(b"mine", mine)

    @pytest.mark.parametrize(
        ("first", "second"),
        [
            (("a", b"b:c"), ("a:b", b"c")),
            (("a", b"b#c"), ("a#b", b"c")),
            (("a", b":e:x"), ("a:", b"x")),
            (("a#1", b"x"), ("a#12", b"x")),
            (("a", b"x"), ("A", b"x")),
            (("ns:i", b""), ("ns", b"i")),
            (("a", b"b:e:c"), ("a:e:b", b"c")),
            (("a", b"i"), ("a:e", b"x")),
            (("a", b"x:i"), ("a:e:x", b"i")),
            (("1:a:", b"x"), ("1", b"a::x")),
            (("ключ", b"x"), ("ключ#", b"x")),
        ],
    )
    def test_namespace_and_key_never_run_into_each_other(self, store, ns, first, second):
        (ns1, key1), (ns2, key2) = (ns + first[0], first[1]), (ns + second[0], second[1])
        store.set(ns1, key1, b"first")
        store.set(ns2, key2, b"second")
        assert store.get(ns1, key1).value == b"first"
        assert store.get(ns2, key2).value == b"second"
        assert [k for k, _ in store.list(ns1).entries] == [key1]
        assert [k for k, _ in store.list(ns2).entries] == [key2]
        assert store.delete(ns1, key1)
        assert store.get(ns2, key2).value == b"second"

    def test_a_namespace_lists_none_of_a_namespace_it_prefixes(self, store, ns):
        store.set(ns, b"k", b"v")
        store.set(ns + "#key", b"k2", b"v")
        store.set(ns + ":x", b"k3", b"v")
        assert [k for k, _ in store.list(ns).entries] == [b"k"]
        assert [k for k, _ in store.list(ns + "#key").entries] == [b"k2"]
