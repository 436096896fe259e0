# Test plan: the worker pool (okra_core.pool.InstancePool) under any interleaving of its
# operations, as a hypothesis state machine driving the real pool on a real asyncio loop.
# The loop's clock is virtual (time moves only when a rule advances it, firing every
# timer on the way in order), and instance creation can be gated (an instance starts
# only when a rule lets it, or fails), so each rule is one event and the loop is run until
# nothing more can happen before the next one.
# Rules: a caller arrives (acquire, with or without a deadline); a quick call (lent an
# instance and giving it back at once, then time passes); a holder releases or discards
# its instance (alone, or with a new caller arriving in the same loop turn); a pending
# instance start succeeds or fails; a caller is cancelled; time advances; passivate();
# close(grace).
# Checked at each arrival (against a model of who holds, waits and creates):
# - an idle instance is lent at once, the most recently returned one first (LIFO);
# - a free slot starts an instance at once; otherwise the caller waits, unless `queue`
#   callers already wait: then it fails at once with RESOURCE_EXHAUSTED;
# - after passivation the next caller gets a fresh instance; after close, UNAVAILABLE.
# Checked after every step:
# - never more than `max` instances alive or starting; busy <= max;
# - an instance is lent to one holder at a time, and a closed one is never lent;
# - waiting callers are served (lent an instance, or let start one) in arrival order,
#   and never while an instance is idle or a slot is free; they never exceed `queue`;
# - idle + busy == instances alive (+ starting == the pool's size); stats.waiting ==
#   callers waiting;
# - passivation by the idle timer only after `idle_seconds` without a call, with nothing
#   busy or waiting, and then nothing is idle; a quiet pool does passivate;
# - after close (and the last holder's release) every instance is closed.
import asyncio
import itertools

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from okra_core.pool import InstancePool
import stateful_support
from stateful_support import VirtualClockLoop, quiet
from okra_core.status import RpcError, StatusCode

EPS = 1e-9


class FakeInstance:
    def __init__(self, id, violations):
        self.id = id
        self.closed = False
        self.violations = violations

    def close(self):
        if self.closed:
            self.violations.append(f"{self} closed twice")
        self.closed = True

    def __repr__(self):
        return f"<instance {self.id}{' closed' if self.closed else ''}>"


class Caller:
    def __init__(self, n, timeout, arrived):
        self.n = n
        self.timeout = timeout
        self.arrived = arrived
        self.task = None
        self.instance = None  # the instance lent to it
        self.served = False  # lent an instance, or let start one
        self.error = None  # the status code it failed with, or "cancelled"
        self.released = False

    @property
    def finished(self):
        return self.error is not None or self.released

    @property
    def waiting(self):
        return not self.served and not self.finished

    @property
    def holding(self):
        return self.instance is not None and not self.released

    def __repr__(self):
        return f"<caller {self.n}>"


class Gate:
    """An instance start, waiting for a rule to let it succeed or fail."""

    def __init__(self, future):
        self.future = future


class PoolMachine(RuleBasedStateMachine):
    """The real InstancePool against a model of its callers and instances."""

    @initialize(
        sizes=st.tuples(st.integers(0, 3), st.integers(1, 3)).filter(lambda s: s[0] <= s[1]),
        queue=st.sampled_from([None, 0, 1, 2]),
        idle_seconds=st.sampled_from([None, 1.0]),
        gated=st.booleans(),
    )
    def start(self, sizes, queue, idle_seconds, gated):
        self.min_size, self.max_size = sizes
        self.queue = queue
        self.idle_seconds = idle_seconds
        self.gated = gated
        self.loop = VirtualClockLoop()
        self.ids = itertools.count()
        self.created = []
        self.gates = []
        self.callers = []
        self.tasks = {}  # task -> Caller
        self.passivating = False  # inside an explicit passivate()
        # What went wrong inside the loop (where an assertion would only fail a task,
        # or be taken by the pool for a failed instance start).
        self.violations = []
        self.closing = None  # the close() task
        # The model of time: the last call arrival or release leaving nothing busy
        # (the pool's idle clock), and the last event of any kind (for quietness).
        self.last_active = self.loop.now
        self.last_event = self.loop.now
        self.last_idled = None  # the instance most recently returned to the idle stack
        self.fresh_from = None  # after passivation: the next caller's instance id floor
        self.pool = InstancePool(
            self._create,
            min_size=self.min_size,
            max_size=self.max_size,
            run_blocking=self._run_blocking,
            name="test.Svc",
            queue=queue,
            idle_seconds=idle_seconds,
            on_event=self._on_event,
        )
        starting = self.loop.create_task(self.pool.start())
        self.loop.settle()
        for gate in self._pending_gates():
            gate.future.set_result(True)
        self.loop.settle()
        assert starting.done()
        starting.result()
        assert self.pool.stats.idle == self.min_size == len(self.created)

    # -- the pool's collaborators ----------------------------------------------------

    def _create(self):
        instance = FakeInstance(next(self.ids), self.violations)
        self.created.append(instance)
        return instance

    async def _run_blocking(self, fn):
        owner = self.tasks.get(asyncio.current_task())
        if owner is not None:
            self._served(owner)
        if self.gated:
            gate = Gate(self.loop.create_future())
            self.gates.append(gate)
            if not await gate.future:
                raise RuntimeError("the module traps in _initialize")
        return fn()

    def _on_event(self, name, detail):
        if name == "passivated":
            self.fresh_from = len(self.created)
            if not self.passivating:
                # The idle timer: only a pool quiet for idle_seconds passivates.
                quiet = self.loop.now - self.last_active
                if self._holders() or self._waiting():
                    self.violations.append("the idle timer passivated a busy pool")
                elif quiet < self.idle_seconds - EPS:
                    self.violations.append(f"passivated {quiet}s after the last call")

    # -- the model ---------------------------------------------------------------------

    def _pending_gates(self):
        return [g for g in self.gates if not g.future.done()]

    def _alive(self):
        return [i for i in self.created if not i.closed]

    def _holders(self):
        return [c for c in self.callers if c.holding]

    def _waiting(self):
        return [c for c in self.callers if c.waiting]

    def _served(self, caller):
        if caller.served:
            return
        earlier = [c for c in self.callers if c.n < caller.n and c.waiting]
        if earlier:
            self.violations.append(f"{caller} served before {earlier}, who came first")
        caller.served = True

    async def _call(self, caller):
        try:
            instance = await self.pool.acquire(caller.timeout)
        except RpcError as exc:
            caller.error = exc.code
            raise
        except asyncio.CancelledError:
            caller.error = "cancelled"
            raise
        finally:
            self.last_event = self.loop.now
        self._served(caller)
        if instance.closed:
            self.violations.append(f"{caller} was lent the closed {instance}")
        if any(c.instance is instance for c in self._holders()):
            self.violations.append(f"{instance} lent to two holders")
        caller.instance = instance
        return instance

    def _arrive(self, timeout):
        """A caller arrives; returns it and what the model expects of it."""
        caller = Caller(len(self.callers), timeout, self.loop.now)
        alive = len(self._alive())
        idle = alive - len(self._holders())
        starting = len(self._pending_gates())
        if self.closing is not None:
            expect = StatusCode.UNAVAILABLE
        elif idle > 0:
            expect = "lent"
        elif alive + starting < self.max_size:
            expect = "served"
        elif self.queue is not None and len(self._waiting()) >= self.queue:
            expect = StatusCode.RESOURCE_EXHAUSTED
        else:
            expect = "waiting"
        self.callers.append(caller)
        caller.task = self.loop.create_task(self._call(caller))
        caller.task.add_done_callback(quiet)
        self.tasks[caller.task] = caller
        if self.closing is None:
            self.last_active = self.last_event = self.loop.now
        return caller, expect

    def _check_arrival(self, caller, expect, last_idled, fresh_from):
        if isinstance(expect, StatusCode):
            assert caller.error == expect, f"{caller}: expected {expect.name}, got {caller.error}"
            return
        if expect == "waiting":
            assert caller.waiting, f"{caller} should wait ({caller.served=}, {caller.error=})"
            return
        assert caller.served, f"{caller} should be served at once ({expect})"
        if expect == "lent":
            assert caller.instance is not None, f"{caller} should be lent an idle instance"
            if last_idled is not None:
                assert caller.instance is last_idled, "LIFO: not the instance returned last"
        if fresh_from is not None and caller.instance is not None:
            assert caller.instance.id >= fresh_from, "reused an instance after passivation"

    # -- rules -------------------------------------------------------------------------

    @rule(timeout=st.sampled_from([None, 0.5, 2.0]))
    def acquire(self, timeout):
        last_idled, fresh_from = self.last_idled, self.fresh_from
        if last_idled is not None and (
            last_idled.closed or any(c.instance is last_idled for c in self._holders())
        ):
            last_idled = None
        caller, expect = self._arrive(timeout)
        self.loop.settle()
        self._check_arrival(caller, expect, last_idled, fresh_from)
        if caller.served:
            self.last_idled = None
            self.fresh_from = None

    @rule(timeout=st.sampled_from([None, 0.5]), then=st.sampled_from([0, 0.3, 0.6]))
    def quick_call(self, timeout, then):
        """A caller arrives and, if lent an instance at once, gives it back at once; then
        time passes."""
        self.acquire(timeout)
        caller = self.callers[-1]
        if caller.holding:
            self._release(self._holders().index(caller), False)
            self.loop.settle()
        self.loop.advance(then)

    def _release(self, index, discard):
        caller = self._holders()[index % len(self._holders())]
        instance = caller.instance
        had_waiters = bool(self._waiting())
        caller.released = True
        self.pool.release(instance, discard=discard)
        self.last_event = self.loop.now
        if not self._holders():
            self.last_active = self.loop.now
        if discard:
            assert instance.closed, "a discarded instance is not closed"
            self.last_idled = None  # its replacement may be the newest idle one
        elif self.closing is not None:
            assert instance.closed, "an instance released after close is not closed"
        elif not had_waiters and self.closing is None:
            self.last_idled = instance
            self.fresh_from = None  # an instance went idle after the passivation
        return caller

    @precondition(lambda self: self._holders())
    @rule(index=st.integers(0, 9), discard=st.booleans())
    def release(self, index, discard):
        self._release(index, discard)
        self.loop.settle()

    @precondition(lambda self: self._holders())
    @rule(index=st.integers(0, 9), discard=st.booleans(), timeout=st.sampled_from([None, 2.0]))
    def release_as_a_caller_arrives(self, index, discard, timeout):
        """The release and a new caller in one loop turn: a woken waiter keeps its turn."""
        self._release(index, discard)
        self._arrive(timeout)
        self.loop.settle()

    @precondition(lambda self: self._pending_gates())
    @rule(index=st.integers(0, 9), ok=st.booleans())
    def instance_starts(self, index, ok):
        gates = self._pending_gates()
        gates[index % len(gates)].future.set_result(ok)
        self.last_event = self.loop.now
        self.last_idled = None
        self.loop.settle()

    @precondition(lambda self: any(not c.task.done() for c in self.callers))
    @rule(index=st.integers(0, 9))
    def cancel_a_caller(self, index):
        pending = [c for c in self.callers if not c.task.done()]
        caller = pending[index % len(pending)]
        caller.task.cancel()
        self.loop.settle()
        # Python 3.11's wait_for may still deliver the instance handed to it: then the
        # caller holds it (and must release it) like any other.
        assert caller.task.done()

    @rule(seconds=st.sampled_from([0.3, 0.6, 1.0, 2.5]))
    def advance_time(self, seconds):
        self.loop.advance(seconds)

    @rule()
    def passivate(self):
        self.passivating = True
        try:
            self.pool.passivate()
        finally:
            self.passivating = False
        self.loop.settle()
        assert self.pool.stats.idle == 0, "idle instances left after passivate()"

    @precondition(lambda self: self.closing is None)
    @rule(grace=st.sampled_from([0, 1.0]))
    def close(self, grace):
        self.closing = self.loop.create_task(self.pool.close(grace))
        self.loop.settle()
        assert not self._waiting(), "close left callers waiting"

    # -- invariants ----------------------------------------------------------------

    @invariant()
    def nothing_went_wrong_inside_the_loop(self):
        assert not self.violations, self.violations

    @invariant()
    def bounded_by_max(self):
        alive = self._alive()
        starting = self._pending_gates()
        assert len(alive) + len(starting) <= self.max_size, (
            f"{len(alive)} alive and {len(starting)} starting, max {self.max_size}"
        )
        assert self.pool.stats.busy <= self.max_size

    @invariant()
    def lent_once_and_never_closed(self):
        held = [c.instance for c in self._holders()]
        assert len({id(i) for i in held}) == len(held), "an instance lent to two holders"
        assert not any(i.closed for i in held), "a holder's instance was closed"
        assert self.pool.stats.busy == len(held)

    @invariant()
    def idle_plus_busy_is_alive(self):
        stats = self.pool.stats
        alive, starting = len(self._alive()), len(self._pending_gates())
        assert stats.idle + stats.busy == alive
        # The pool's own count (what it compares with max): alive or starting, no more.
        assert self.pool._size == alive + starting, f"size {self.pool._size}"

    @invariant()
    def waiters_bounded_and_only_when_full(self):
        waiting = self._waiting()
        assert self.pool.stats.waiting == len(waiting)
        if self.queue is not None:
            assert len(waiting) <= self.queue
        if waiting:
            assert self.pool.stats.idle == 0, f"{waiting} wait while an instance is idle"
            assert len(self._alive()) + len(self._pending_gates()) == self.max_size, (
                f"{waiting} wait while a slot is free"
            )

    @invariant()
    def quiet_pool_passivates(self):
        if self.idle_seconds is None or self.closing is not None:
            return
        if self._holders() or self._waiting() or self._pending_gates():
            return
        if self.loop.now - self.last_event > self.idle_seconds + EPS:
            assert self.pool.stats.idle == 0, (
                f"{self.pool.stats.idle} instances idle {self.loop.now - self.last_event}s "
                f"after the last event (idle_seconds={self.idle_seconds})"
            )

    @invariant()
    def closed_pool_closes_everything(self):
        if self.closing is None or not self.closing.done():
            return
        self.closing.result()
        assert self.pool.stats.idle == 0
        if not self._holders() and not self._pending_gates():
            assert not self._alive(), f"{self._alive()} alive after close"

    def check_all(self):
        for name, value in vars(PoolMachine).items():
            if getattr(value, "hypothesis_stateful_invariant", None) is not None:
                getattr(self, name)()

    def teardown(self):
        if not hasattr(self, "loop"):
            return
        try:
            for _ in range(100):
                for caller in self._holders():
                    caller.released = True
                    self.pool.release(caller.instance)
                for gate in self._pending_gates():
                    gate.future.set_result(True)
                self.loop.advance(10)
                if not (self._holders() or self._pending_gates()):
                    break
            if self.closing is None:
                self.closing = self.loop.create_task(self.pool.close(0))
            self.loop.advance(10)
            for gate in self._pending_gates():
                gate.future.set_result(True)
            self.loop.advance(10)
        finally:
            for task in asyncio.all_tasks(self.loop):
                task.cancel()
            self.loop.run_until_complete(asyncio.sleep(0))
            self.loop.close()


TestPoolStateful = PoolMachine.TestCase
TestPoolStateful.settings = settings(max_examples=500, stateful_step_count=40, deadline=None)


# Sequences hypothesis found (each was a bug), replayed as plain tests so they run every
# time whatever the search happens to try.


def replay(steps, **config):
    stateful_support.replay(PoolMachine, steps, **config)


def test_a_call_after_passivating_a_busy_pool_never_takes_it_past_max():
    # The caller started an instance itself and the background also warmed one to
    # `min`, on top of the one still lent: 3 alive with max 2.
    replay(
        [("acquire", {"timeout": None}), ("passivate", {}), ("acquire", {"timeout": None})],
        sizes=(2, 2), queue=None, idle_seconds=None, gated=False,
    )


def test_a_pool_never_called_passivates_after_idle_seconds():
    replay(
        [("advance_time", {"seconds": 0.6}), ("advance_time", {"seconds": 1.0})],
        sizes=(1, 1), queue=None, idle_seconds=1.0, gated=False,
    )


def test_a_slot_freed_by_a_discard_stays_with_the_first_waiter():
    # A caller arriving in the loop turn of the discard took the slot handed to the
    # waiter, which then went back to the end of the line.
    replay(
        [
            ("acquire", {"timeout": None}),
            ("acquire", {"timeout": 0.5}),
            ("release_as_a_caller_arrives", {"index": 0, "discard": True, "timeout": None}),
        ],
        sizes=(0, 1), queue=None, idle_seconds=None, gated=False,
    )


def test_an_instance_started_for_callers_that_gave_up_still_passivates():
    # The idle check ran while a caller waited for an instance being started and
    # stopped checking; the caller gave up, so no release followed to check again, and
    # the started instance stayed idle for good.
    replay(
        [
            ("acquire", {"timeout": None}),
            ("release", {"index": 0, "discard": True}),  # its replacement is starting
            ("advance_time", {"seconds": 0.6}),
            ("acquire", {"timeout": 2.0}),  # waits for it
            ("advance_time", {"seconds": 0.6}),  # the idle check runs
            ("cancel_a_caller", {"index": 0}),
            ("instance_starts", {"index": 0, "ok": True}),
            ("advance_time", {"seconds": 2.5}),
        ],
        sizes=(1, 1), queue=None, idle_seconds=1.0, gated=True,
    )


def test_a_pool_woken_by_a_call_that_gave_up_passivates_again():
    # A call woke the passivated pool (warming it back to `min`) and was cancelled
    # while its own instance started: nothing was ever lent and released, so nothing
    # scheduled the idle check, and the warmed instance stayed idle for good.
    replay(
        [
            ("advance_time", {"seconds": 1.0}),  # passivates the warm instances
            ("acquire", {"timeout": None}),  # starts one; one more warms in the background
            ("cancel_a_caller", {"index": 0}),
            ("instance_starts", {"index": 0, "ok": True}),
            ("advance_time", {"seconds": 2.5}),
        ],
        sizes=(2, 2), queue=None, idle_seconds=1.0, gated=True,
    )
