# Test plan: the worker pool (okra_core.pool.InstancePool), engine-agnostic, so its
# instances here are small Python objects that record how they are used.
# - start warms `min` instances; acquire grows the pool up to `max`, never beyond.
# - when all are busy, callers wait in arrival order and get the released instance.
# - a waiting caller whose timeout passes gets DEADLINE_EXCEEDED and loses its place;
#   the instance released later goes to the next caller, not into the void.
# - a discarded instance is closed, never lent again, and replaced (up to min).
# - a failing factory gives UNAVAILABLE with the reason, and frees its slot.
# - close fails waiters with UNAVAILABLE, waits for lent instances, closes everything.
# - stateful (hypothesis): under any sequence of acquire/release/discard, an instance is
#   never lent twice at once, a discarded one never comes back, size stays <= max.
import asyncio
import itertools

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from okra_core.pool import InstancePool
from okra_core.status import RpcError, StatusCode


class FakeInstance:
    ids = itertools.count()

    def __init__(self):
        self.id = next(self.ids)
        self.closed = False

    def abi_version(self):
        return 1

    def handle(self, request):
        return request

    def close(self):
        self.closed = True


async def run_inline(fn):
    return fn()


def make_pool(min_size=0, max_size=2, factory=FakeInstance, run_blocking=run_inline):
    created = []

    def create():
        instance = factory()
        created.append(instance)
        return instance

    pool = InstancePool(create, min_size=min_size, max_size=max_size, run_blocking=run_blocking, name="test.Svc")
    return pool, created


async def test_start_warms_min_and_acquire_grows_to_max():
    pool, created = make_pool(min_size=2, max_size=3)
    await pool.start()
    assert len(created) == 2 and pool.stats.idle == 2
    lent = [await pool.acquire(1) for _ in range(3)]
    assert len({i.id for i in lent}) == 3 and len(created) == 3
    with pytest.raises(RpcError) as info:
        await pool.acquire(0.01)
    assert info.value.code == StatusCode.DEADLINE_EXCEEDED
    assert "all 3 busy" in info.value.message
    assert len(created) == 3


async def test_waiters_are_served_in_arrival_order():
    pool, _ = make_pool(max_size=1)
    first = await pool.acquire(1)
    order = []

    async def wait(n):
        instance = await pool.acquire(5)
        order.append(n)
        pool.release(instance)

    tasks = [asyncio.create_task(wait(n)) for n in range(5)]
    await asyncio.sleep(0.01)
    assert pool.stats.waiting == 5
    pool.release(first)
    await asyncio.gather(*tasks)
    assert order == [0, 1, 2, 3, 4]


async def test_timed_out_waiter_does_not_swallow_the_next_released_instance():
    pool, _ = make_pool(max_size=1)
    held = await pool.acquire(1)
    with pytest.raises(RpcError):
        await pool.acquire(0.01)
    later = asyncio.create_task(pool.acquire(5))
    await asyncio.sleep(0.01)
    pool.release(held)
    assert (await later) is held


async def test_cancelled_waiter_passes_its_instance_on():
    pool, _ = make_pool(max_size=1)
    held = await pool.acquire(1)
    doomed = asyncio.create_task(pool.acquire(5))
    await asyncio.sleep(0.01)
    pool.release(held)  # handed to `doomed`...
    doomed.cancel()  # ...which is cancelled before it runs
    try:
        got = await doomed  # Python 3.11's wait_for may deliver instead of cancelling
    except asyncio.CancelledError:
        got = None
    if got is not None:
        assert got is held
        pool.release(got)
    assert (await pool.acquire(0.1)) is held


async def test_discarded_instance_is_closed_replaced_and_never_lent_again():
    pool, created = make_pool(min_size=1, max_size=1)
    await pool.start()
    bad = await pool.acquire(1)
    pool.release(bad, discard=True)
    assert bad.closed
    await asyncio.sleep(0.01)  # replacement runs in the background
    fresh = await pool.acquire(1)
    assert fresh is not bad and not fresh.closed
    assert pool.stats.discarded == 1 and len(created) == 2


async def test_discard_lets_a_waiter_create_a_fresh_instance():
    pool, _ = make_pool(max_size=1)
    bad = await pool.acquire(1)
    waiter = asyncio.create_task(pool.acquire(5))
    await asyncio.sleep(0.01)
    pool.release(bad, discard=True)
    fresh = await waiter
    assert fresh is not bad and not fresh.closed


async def test_factory_failure_is_unavailable_and_frees_the_slot():
    attempts = []

    def flaky():
        attempts.append(1)
        if len(attempts) == 1:
            raise RuntimeError("module traps in _initialize")
        return FakeInstance()

    pool, _ = make_pool(max_size=1, factory=flaky)
    with pytest.raises(RpcError) as info:
        await pool.acquire(1)
    assert info.value.code == StatusCode.UNAVAILABLE
    assert "module traps in _initialize" in info.value.message
    assert isinstance(await pool.acquire(1), FakeInstance)


async def test_close_fails_waiters_and_waits_for_lent_instances():
    pool, created = make_pool(min_size=1, max_size=1)
    await pool.start()
    lent = await pool.acquire(1)
    waiter = asyncio.create_task(pool.acquire(5))
    await asyncio.sleep(0.01)
    closing = asyncio.create_task(pool.close(grace=5))
    await asyncio.sleep(0.01)
    with pytest.raises(RpcError) as info:
        await waiter
    assert info.value.code == StatusCode.UNAVAILABLE
    assert not closing.done()  # still waiting for the lent instance
    pool.release(lent)
    await closing
    assert all(i.closed for i in created)
    with pytest.raises(RpcError):
        await pool.acquire(1)


async def test_close_gives_up_after_grace():
    pool, _ = make_pool(max_size=1)
    await pool.acquire(1)
    await asyncio.wait_for(pool.close(grace=0.02), 1)


class PoolMachine(RuleBasedStateMachine):
    """Drive the pool with any interleaving of acquire, release and discard."""

    def __init__(self):
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.max_size = 3
        self.pool, self.created = make_pool(min_size=1, max_size=self.max_size)
        self.loop.run_until_complete(self.pool.start())
        self.lent = []
        self.discarded = set()

    def teardown(self):
        for instance in self.lent:
            self.pool.release(instance)
        self.loop.run_until_complete(self.pool.close(grace=1))
        self.loop.close()

    @precondition(lambda self: len(self.lent) < self.max_size)
    @rule()
    def acquire(self):
        instance = self.loop.run_until_complete(self.pool.acquire(1))
        assert instance not in self.lent, "instance lent twice"
        assert instance.id not in self.discarded, "discarded instance lent again"
        assert not instance.closed
        self.lent.append(instance)

    @precondition(lambda self: len(self.lent) == self.max_size)
    @rule()
    def acquire_when_full_times_out(self):
        with pytest.raises(RpcError):
            self.loop.run_until_complete(self.pool.acquire(0.001))

    @precondition(lambda self: self.lent)
    @rule(index=st.integers(0, 10), discard=st.booleans())
    def release(self, index, discard):
        instance = self.lent.pop(index % len(self.lent))
        self.pool.release(instance, discard=discard)
        if discard:
            self.discarded.add(instance.id)
        self.loop.run_until_complete(asyncio.sleep(0))

    @invariant()
    def bounded(self):
        alive = [i for i in self.created if not i.closed]
        assert len(alive) <= self.max_size
        assert self.pool.stats.busy == len(self.lent)


TestPoolStateMachine = PoolMachine.TestCase
TestPoolStateMachine.settings = settings(max_examples=60, stateful_step_count=30, deadline=None)
