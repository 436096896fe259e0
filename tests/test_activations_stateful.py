# Test plan: keyed activations (okra_core._activations.Activations) under any
# interleaving of calls, as a hypothesis state machine driving the real Activations on a
# real asyncio loop. The loop's clock is virtual (time moves only when a rule advances it,
# firing every timer on the way in order), and an instance can be made to start only
# when a rule lets it (or fails), so each rule is one event and the loop is run until
# nothing more can happen before the next one.
# Rules: a call arrives for a key (with a new chain, the chain of the key's running call,
# or the chain of one of its waiting calls; with or without a deadline); a quick call
# (run and ended at once, then time passes); a holder ends its call (keeping or
# discarding the instance; alone, or with a new call arriving in the same loop turn); a
# pending instance start succeeds or fails; a call is cancelled; time advances;
# passivate_idle(); the service is redeployed (a new Activations with the old one as
# `predecessor`, and the old one closed, as the runtime does); close(grace).
# Checked at each arrival (against a model of the calls of every key):
# - a call with the chain of the key's running call fails at once with
#   FAILED_PRECONDITION, one of another chain waits (RESOURCE_EXHAUSTED at once when
#   `queue` calls already wait for the key);
# - a new key takes a free place, or passivates the least recently used idle activation
#   (whose instance is closed), or fails at once with RESOURCE_EXHAUSTED if all are busy;
# - an idle key's call runs at once, on the key's instance if it still has one, on a new
#   one after a passivation or a discard; after close, UNAVAILABLE.
# Checked after every step:
# - never two activations, two live instances or two calls in flight for one key, across
#   versions too; calls of a key get their turn in arrival order;
# - at most max_activations activations (and live instances) per version;
# - a busy or waited-for activation is never evicted or passivated; an activation that
#   is gone has its instance closed;
# - idle passivation only after idle_seconds without a call, and then it does happen;
# - after close (and the last call's end) every instance is closed.
import asyncio
import itertools
import re

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from okra_core._activations import Activations
from okra_core.callchain import CallChain
from okra_core.status import RpcError, StatusCode
import stateful_support
from stateful_support import VirtualClockLoop, quiet

EPS = 1e-9
KEYS = "abcd"


class FakeInstance:
    def __init__(self, id, key, version, violations):
        self.id = id
        self.key = key
        self.version = version
        self.closed = False
        self.violations = violations

    def close(self):
        if self.closed:
            self.violations.append(f"{self} closed twice")
        self.closed = True

    def __repr__(self):
        closed = " closed" if self.closed else ""
        return f"<instance {self.id} of {self.key!r} v{self.version}{closed}>"


class Call:
    def __init__(self, n, version, key, chain, timeout):
        self.n = n
        self.version = version
        self.key = key
        self.chain = chain
        self.timeout = timeout
        self.task = None
        self.served = False  # given its key's turn: its instance started or lent
        self.activation = None
        self.instance = None
        self.error = None  # the status code it failed with, or "cancelled"
        self.released = False

    @property
    def finished(self):
        return self.error is not None or self.released

    @property
    def holding(self):
        return self.instance is not None and not self.released

    def __repr__(self):
        return f"<call {self.n} v{self.version} {self.key!r}>"


class Gate:
    """An instance start, waiting for a rule to let it succeed or fail."""

    def __init__(self, future):
        self.future = future


class ActivationsMachine(RuleBasedStateMachine):
    """The real Activations (and their successors) against a model of the calls."""

    @initialize(
        max_activations=st.integers(1, 3),
        queue=st.sampled_from([None, 0, 1, 2]),
        idle_seconds=st.sampled_from([None, 1.0]),
        gated=st.booleans(),
    )
    def start(self, max_activations, queue, idle_seconds, gated):
        self.max_activations = max_activations
        self.queue = queue
        self.idle_seconds = idle_seconds
        self.gated = gated
        self.loop = VirtualClockLoop()
        self.ids = itertools.count()
        self.chains = itertools.count()
        self.created = []
        self.gates = []
        self.calls = []
        self.tasks = {}  # task -> Call
        # What went wrong inside the loop (where an assertion would only fail a task).
        self.violations = []
        self.versions = []
        self.closing = {}  # version -> its close() task
        #: Per version, the keys least recently used first (the model of the LRU order).
        self.lru = []
        #: (version, key) -> when its last call ended (it became idle).
        self.freed_at = {}
        #: (version, key) -> the instance its calls ran on last.
        self.current = {}
        self._deploy()

    def _deploy(self):
        version = len(self.versions)
        activations = Activations(
            "svc",
            lambda: self._start_instance(version),
            max_activations=self.max_activations,
            queue=self.queue,
            idle_seconds=self.idle_seconds,
            on_event=lambda name, detail: self._on_event(version, name, detail),
            predecessor=self.versions[-1] if self.versions else None,
        )
        self.versions.append(activations)
        self.lru.append([])
        return activations

    # -- the collaborators -------------------------------------------------------------

    async def _start_instance(self, version):
        call = self.tasks.get(asyncio.current_task())
        if call is None:
            self.violations.append("an instance started outside a call")
            raise RuntimeError("no call")
        self._served(call)
        alive = [i for i in self._alive() if i.key == call.key]
        if alive:
            self.violations.append(f"{call} starts an instance while {alive} is alive")
        if self.gated:
            gate = Gate(self.loop.create_future())
            self.gates.append(gate)
            if not await gate.future:
                raise RpcError(StatusCode.UNAVAILABLE, "the module traps in _initialize")
        instance = FakeInstance(next(self.ids), call.key, version, self.violations)
        self.created.append(instance)
        return instance

    def _on_event(self, version, name, detail):
        if name != "passivated" or "idle" not in detail:
            return
        found = re.search(r"key '(.)'", detail)
        if found is None:
            self.violations.append(f"a passivation event names no key: {detail!r}")
            return
        key = found.group(1)
        if self._line(version, key):
            self.violations.append(f"v{version} {key!r} passivated while busy")
        idle = self.loop.now - self.freed_at.get((version, key), -1e9)
        if idle < self.idle_seconds - EPS:
            self.violations.append(f"v{version} {key!r} passivated after {idle}s idle")

    # -- the model ---------------------------------------------------------------------

    def _alive(self):
        return [i for i in self.created if not i.closed]

    def _holders(self):
        return [c for c in self.calls if c.holding]

    def _line(self, version, key):
        """The unfinished calls of a key, in arrival order: the first has the turn."""
        return [c for c in self.calls if c.version == version and c.key == key and not c.finished]

    def _pending_gates(self):
        return [g for g in self.gates if not g.future.done()]

    def _touch(self, version, key):
        lru = self.lru[version]
        if key in lru:
            lru.remove(key)
        lru.append(key)

    def _served(self, call):
        if call.served:
            return
        line = self._line(call.version, call.key)
        if line[:1] != [call]:
            self.violations.append(f"{call} given the turn of {call.key!r} before {line}")
        others = [c for c in self._holders() if c.key == call.key]
        if others:
            self.violations.append(f"{call} given the turn of {call.key!r} while {others} hold it")
        call.served = True

    def _ended(self, call):
        """A call ended: if it was the last of its key, the key became idle."""
        if not self._line(call.version, call.key):
            self.freed_at[call.version, call.key] = self.loop.now
            if self.versions[call.version]._live.get(call.key) is not None:
                self._touch(call.version, call.key)

    async def _call(self, call):
        activations = self.versions[call.version]
        try:
            activation = await activations.acquire(call.key, CallChain(call.chain), call.timeout)
        except RpcError as exc:
            call.error = exc.code
            self._ended(call)
            raise
        except asyncio.CancelledError:
            call.error = "cancelled"
            self._ended(call)
            raise
        self._served(call)
        instance = activation.instance
        if activation.key != call.key or instance is None or instance.closed:
            self.violations.append(f"{call} was lent {activation.key!r} with {instance}")
        elif instance.key != call.key:
            self.violations.append(f"{call} was lent the instance of {instance.key!r}")
        previous = self.current.get((call.version, call.key))
        if previous is not None and not previous.closed and instance is not previous:
            self.violations.append(f"{call} was lent {instance}, not its key's {previous}")
        if previous is not None and previous.closed and instance is previous:
            self.violations.append(f"{call} was lent its key's closed {previous}")
        self.current[call.version, call.key] = instance
        call.activation, call.instance = activation, instance
        return activation

    def _chain_for(self, version, key, choice):
        line = self._line(version, key)
        if choice == "running" and line:
            return line[0].chain
        if choice == "waiting" and len(line) > 1:
            return line[-1].chain
        return f"chain-{next(self.chains)}"

    def _arrive(self, key, choice, timeout):
        """A call arrives at the newest version; returns it and what the model expects."""
        version = len(self.versions) - 1
        activations = self.versions[version]
        call = Call(len(self.calls), version, key, self._chain_for(version, key, choice), timeout)
        line = self._line(version, key)
        live = activations.keys()
        victim = None
        if version in self.closing:
            expect = StatusCode.UNAVAILABLE
        elif line:
            if call.chain == line[0].chain:
                expect = StatusCode.FAILED_PRECONDITION
            elif self.queue is not None and len(line) - 1 >= self.queue:
                expect = StatusCode.RESOURCE_EXHAUSTED
            else:
                expect = "waiting"
        elif key in live or len(live) < self.max_activations:
            expect = "turn"
        else:
            idle = [k for k in self.lru[version] if k in live and not self._line(version, k)]
            if idle:
                expect, victim = "turn", idle[0]
            else:
                expect = StatusCode.RESOURCE_EXHAUSTED
        if version not in self.closing and (key in live or expect == "turn"):
            self._touch(version, key)
        self.calls.append(call)
        call.task = self.loop.create_task(self._call(call))
        call.task.add_done_callback(quiet)
        self.tasks[call.task] = call
        return call, expect, victim

    def _check_arrival(self, call, expect, victim, instance_before):
        if isinstance(expect, StatusCode):
            assert call.error == expect, f"{call}: expected {expect.name}, got {call.error}"
            return
        if expect == "waiting":
            assert not call.served and not call.finished, f"{call} should wait"
            return
        if victim is not None:
            activations = self.versions[call.version]
            assert victim not in activations.keys(), f"LRU: {victim!r} should make room"
            evicted = self.current.get((call.version, victim))
            assert evicted is None or evicted.closed, f"the evicted {victim!r} kept {evicted}"
        # The turn at once, unless an earlier version still runs calls for the key.
        if any(self._line(v, call.key) for v in range(call.version)):
            return
        assert call.served, f"{call} should have its key's turn at once"
        if instance_before is not None:
            assert call.instance is instance_before, f"{call} not run on {instance_before}"

    # -- rules -------------------------------------------------------------------------

    @rule(
        key=st.sampled_from(KEYS),
        chain=st.sampled_from(["new", "running", "waiting"]),
        timeout=st.sampled_from([None, 0.5, 2.0]),
    )
    def call(self, key, chain, timeout):
        version = len(self.versions) - 1
        before = self.current.get((version, key))
        if before is not None and (before.closed or key not in self.versions[version].keys()):
            before = None
        call, expect, victim = self._arrive(key, chain, timeout)
        self.loop.settle()
        self._check_arrival(call, expect, victim, before)

    @rule(key=st.sampled_from(KEYS), then=st.sampled_from([0, 0.3, 0.6]))
    def quick_call(self, key, then):
        """A call arrives and, if it runs at once, ends at once; then time passes."""
        self.call(key, "new", None)
        call = self.calls[-1]
        if call.holding:
            self._release(self._holders().index(call), False)
            self.loop.settle()
        self.loop.advance(then)

    def _release(self, index, discard):
        call = self._holders()[index % len(self._holders())]
        call.released = True
        self.versions[call.version].release(call.activation, discard=discard)
        self._ended(call)
        if discard:
            assert call.instance.closed, "a discarded instance is not closed"
        return call

    @precondition(lambda self: self._holders())
    @rule(index=st.integers(0, 9), discard=st.booleans())
    def release(self, index, discard):
        self._release(index, discard)
        self.loop.settle()

    @precondition(lambda self: self._holders())
    @rule(
        index=st.integers(0, 9),
        discard=st.booleans(),
        same_key=st.booleans(),
        key=st.sampled_from(KEYS),
    )
    def release_as_a_call_arrives(self, index, discard, same_key, key):
        """The end of a call and a new call in one loop turn."""
        call = self._release(index, discard)
        self._arrive(call.key if same_key else key, "new", None)
        self.loop.settle()

    @precondition(lambda self: self._pending_gates())
    @rule(index=st.integers(0, 9), ok=st.booleans())
    def instance_starts(self, index, ok):
        gates = self._pending_gates()
        gates[index % len(gates)].future.set_result(ok)
        self.loop.settle()

    @precondition(lambda self: any(not c.task.done() for c in self.calls))
    @rule(index=st.integers(0, 9))
    def cancel_a_call(self, index):
        pending = [c for c in self.calls if not c.task.done()]
        call = pending[index % len(pending)]
        call.task.cancel()
        self.loop.settle()
        assert call.task.done()

    @rule(seconds=st.sampled_from([0.3, 0.6, 1.0, 2.5]))
    def advance_time(self, seconds):
        self.loop.advance(seconds)

    @rule()
    def passivate_idle(self):
        activations = self.versions[-1]
        version = len(self.versions) - 1
        idle = [k for k in activations.keys() if not self._line(version, k)]
        assert activations.passivate_idle() == len(idle)
        self.loop.settle()
        for key in idle:
            assert key not in activations.keys()
            instance = self.current.get((version, key))
            assert instance is None or instance.closed

    def _open(self):
        return len(self.versions) - 1 not in self.closing

    @precondition(lambda self: len(self.versions) < 3 and self._open())
    @rule(grace=st.sampled_from([0, 1.0, 5.0]))
    def redeploy(self, grace):
        old = len(self.versions) - 1
        self._deploy()
        self.closing[old] = self.loop.create_task(self.versions[old].close(grace))
        self.loop.settle()

    @precondition(lambda self: self._open())
    @rule(grace=st.sampled_from([0, 1.0]))
    def close(self, grace):
        version = len(self.versions) - 1
        self.closing[version] = self.loop.create_task(self.versions[version].close(grace))
        self.loop.settle()

    # -- invariants ----------------------------------------------------------------

    @invariant()
    def nothing_went_wrong_inside_the_loop(self):
        assert not self.violations, self.violations

    @invariant()
    def one_of_everything_per_key(self):
        for key in KEYS:
            alive = [i for i in self._alive() if i.key == key]
            assert len(alive) <= 1, f"{key!r} has live instances {alive}"
            holders = [c for c in self._holders() if c.key == key]
            assert len(holders) <= 1, f"{key!r} has calls in flight {holders}"
            for version in range(len(self.versions)):
                served = [c for c in self._line(version, key) if c.served]
                assert len(served) <= 1, f"{key!r} has calls in flight {served}"

    @invariant()
    def bounded_by_max_activations(self):
        for version, activations in enumerate(self.versions):
            assert len(activations) <= self.max_activations
            alive = [i for i in self._alive() if i.version == version]
            assert len(alive) <= self.max_activations, f"v{version}: {alive}"

    @invariant()
    def busy_activations_stay(self):
        for version, activations in enumerate(self.versions):
            live = activations.keys()
            busy = {k for k in KEYS if self._line(version, k)}
            assert busy <= set(live), f"v{version}: busy {busy}, live {live}"
            assert activations.busy == len(busy)
            for call in self._holders():
                if call.version == version:
                    assert activations._live.get(call.key) is call.activation
                    assert call.activation.instance is call.instance
                    assert not call.instance.closed

    @invariant()
    def gone_activations_closed_their_instance(self):
        for (version, key), instance in self.current.items():
            if key not in self.versions[version].keys():
                assert instance.closed, f"v{version} {key!r} is gone but {instance} is alive"

    @invariant()
    def idle_activations_passivate(self):
        if self.idle_seconds is None:
            return
        for version, activations in enumerate(self.versions):
            if version in self.closing:
                continue
            for key in activations.keys():
                idle = self.loop.now - self.freed_at.get((version, key), self.loop.now)
                if not self._line(version, key) and idle > self.idle_seconds + EPS:
                    raise AssertionError(f"v{version} {key!r} still active after {idle}s idle")

    @invariant()
    def closed_versions_close_everything(self):
        for version, closing in self.closing.items():
            if not closing.done():
                continue
            closing.result()
            if not any(self._line(version, k) for k in KEYS):
                alive = [i for i in self._alive() if i.version == version]
                assert not alive, f"v{version} closed, but {alive} alive"
                assert len(self.versions[version]) == 0

    def check_all(self):
        for name, value in vars(ActivationsMachine).items():
            if getattr(value, "hypothesis_stateful_invariant", None) is not None:
                getattr(self, name)()

    def teardown(self):
        if not hasattr(self, "loop"):
            return
        try:
            for _ in range(100):
                for call in self._holders():
                    call.released = True
                    self.versions[call.version].release(call.activation)
                for gate in self._pending_gates():
                    gate.future.set_result(True)
                self.loop.advance(10)
                if not (self._holders() or self._pending_gates()):
                    break
            for version, activations in enumerate(self.versions):
                if version not in self.closing:
                    self.closing[version] = self.loop.create_task(activations.close(0))
            self.loop.advance(10)
        finally:
            for task in asyncio.all_tasks(self.loop):
                task.cancel()
            self.loop.run_until_complete(asyncio.sleep(0))
            self.loop.close()


TestActivationsStateful = ActivationsMachine.TestCase
TestActivationsStateful.settings = settings(max_examples=500, stateful_step_count=40, deadline=None)


# Sequences hypothesis found (each was a bug), replayed as plain tests so they run every
# time whatever the search happens to try.


def replay(steps, **config):
    stateful_support.replay(ActivationsMachine, steps, **config)


def test_a_key_waits_for_every_older_version_after_two_quick_redeploys():
    # The middle version never saw the key, so it looked idle, and the newest version
    # started the key while the oldest was still running a call for it.
    replay(
        [
            ("call", {"key": "a", "chain": "new", "timeout": None}),
            ("redeploy", {"grace": 0}),
            ("redeploy", {"grace": 0}),
            ("instance_starts", {"index": 0, "ok": True}),
            ("call", {"key": "a", "chain": "new", "timeout": None}),
            ("release", {"index": 0, "discard": False}),
        ],
        max_activations=1, queue=None, idle_seconds=None, gated=True,
    )
