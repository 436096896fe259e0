"""Support for the hypothesis state machines of the pool and the activations: an event
loop whose clock only the test moves, so each rule is one event at one instant."""

from __future__ import annotations

import asyncio


class VirtualClockLoop(asyncio.SelectorEventLoop):
    """An event loop whose clock moves only when the test advances it."""

    def __init__(self):
        super().__init__()
        self.now = 1000.0

    def time(self):
        return self.now

    def _busy(self):
        due = [h for h in self._scheduled if not h.cancelled() and h.when() <= self.now]
        return bool(self._ready or due)

    def settle(self):
        """Run the loop until nothing more can happen without time passing."""

        async def turns():
            for _ in range(10_000):
                await asyncio.sleep(0)
                if not self._busy():
                    return
            raise AssertionError("the loop never settles")

        self.run_until_complete(turns())

    def advance(self, seconds):
        """Move time forward, firing every timer on the way at its own time."""
        target = self.now + seconds
        while True:
            pending = sorted(h.when() for h in self._scheduled if not h.cancelled())
            if not pending or pending[0] > target:
                break
            self.now = max(self.now, pending[0])
            self.settle()
        self.now = target
        self.settle()


def quiet(task):
    """A done-callback that retrieves a task's exception: the model checks failures."""
    if not task.cancelled():
        task.exception()


def replay(machine_class, steps, **config):
    """Run one sequence of rules (as hypothesis found it) on a fresh state machine,
    checking every invariant after each step."""
    machine = machine_class()
    try:
        machine.start(**config)
        for name, kwargs in steps:
            getattr(machine, name)(**kwargs)
            machine.check_all()
    finally:
        machine.teardown()
