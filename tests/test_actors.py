# Test plan: the local actor system (okra_core.actors / _local_actors).
# - ask returns the actor's answer; an exception in receive reaches the asker, and the
#   actor keeps serving afterwards.
# - a classic actor (concurrency 1) handles messages one at a time, in arrival order.
# - a concurrent actor handles messages at once, bounded by its concurrency.
# - lookup finds actors by address; an unknown address raises ActorNotFound.
# - stop drains in-flight and queued messages, calls on_stop once, and refuses new ones.
# - stop with a short grace fails the messages that could not finish, never hangs.
# - spawn(replace=True) routes new messages to the new actor while the old one finishes.
# - an unbounded actor is asked directly; stop waits for those calls too, refuses new
#   ones, and gives up waiting after the grace period without hanging.
# - shutdown stops every actor.
import asyncio

import pytest

from okra_core.actors import ActorNotFound, ActorStopped, local_actor_system


class Recorder:
    def __init__(self, concurrency=1, delay=0.0):
        self.concurrency = concurrency
        self.delay = delay
        self.seen = []
        self.running = 0
        self.max_running = 0
        self.stopped = 0

    async def receive(self, message):
        self.running += 1
        self.max_running = max(self.max_running, self.running)
        try:
            if message == "boom":
                raise ValueError("boom")
            await asyncio.sleep(self.delay)
            self.seen.append(message)
            return f"got {message}"
        finally:
            self.running -= 1

    async def on_stop(self, grace):
        assert grace >= 0
        self.stopped += 1


async def test_ask_returns_the_answer_and_errors_reach_the_asker():
    system = local_actor_system()
    ref = await system.spawn("a", Recorder())
    assert await ref.ask(1) == "got 1"
    with pytest.raises(ValueError, match="boom"):
        await ref.ask("boom")
    assert await ref.ask(2) == "got 2"
    await system.shutdown()


async def test_classic_actor_handles_messages_one_at_a_time_in_order():
    system = local_actor_system()
    actor = Recorder(concurrency=1, delay=0.001)
    ref = await system.spawn("a", actor)
    answers = await asyncio.gather(*(ref.ask(i) for i in range(20)))
    assert answers == [f"got {i}" for i in range(20)]
    assert actor.seen == list(range(20))
    assert actor.max_running == 1
    await system.shutdown()


async def test_concurrent_actor_runs_messages_at_once_up_to_its_limit():
    system = local_actor_system()
    actor = Recorder(concurrency=3, delay=0.01)
    ref = await system.spawn("a", actor)
    await asyncio.gather(*(ref.ask(i) for i in range(9)))
    assert actor.max_running == 3
    unbounded = Recorder(concurrency=None, delay=0.01)
    ref = await system.spawn("b", unbounded)
    await asyncio.gather(*(ref.ask(i) for i in range(9)))
    assert unbounded.max_running == 9
    await system.shutdown()


async def test_lookup_finds_actors_by_address():
    system = local_actor_system()
    await system.spawn("pkg.Svc", Recorder())
    assert await system.lookup("pkg.Svc").ask("x") == "got x"
    assert system.addresses() == ["pkg.Svc"]
    with pytest.raises(ActorNotFound):
        system.lookup("pkg.Other")
    with pytest.raises(ValueError, match="already registered"):
        await system.spawn("pkg.Svc", Recorder())
    await system.shutdown()


async def test_stop_drains_queued_messages_then_refuses_new_ones():
    system = local_actor_system()
    actor = Recorder(concurrency=1, delay=0.005)
    ref = await system.spawn("a", actor)
    pending = [asyncio.ensure_future(ref.ask(i)) for i in range(5)]
    await asyncio.sleep(0)
    await system.stop("a", grace=5)
    assert [p.result() for p in pending] == [f"got {i}" for i in range(5)]
    assert actor.stopped == 1
    with pytest.raises(ActorStopped):
        await ref.ask("late")
    with pytest.raises(ActorNotFound):
        system.lookup("a")


async def test_stop_with_short_grace_fails_unfinished_messages_without_hanging():
    system = local_actor_system()
    actor = Recorder(concurrency=2, delay=10)
    ref = await system.spawn("a", actor)
    pending = asyncio.ensure_future(ref.ask("slow"))
    await asyncio.sleep(0.01)
    await asyncio.wait_for(system.stop("a", grace=0.05), 2)
    with pytest.raises((ActorStopped, asyncio.CancelledError)):
        await pending
    assert actor.stopped == 1


async def test_replace_routes_new_messages_to_the_new_actor_while_old_finishes():
    system = local_actor_system()
    old = Recorder(concurrency=None, delay=0.05)
    ref_old = await system.spawn("svc", old)
    inflight = asyncio.ensure_future(ref_old.ask("old-call"))
    await asyncio.sleep(0.01)
    new = Recorder(concurrency=None)
    await system.spawn("svc", new, replace=True)
    assert await system.lookup("svc").ask("new-call") == "got new-call"
    assert await inflight == "got old-call"
    assert new.seen == ["new-call"] and old.seen == ["old-call"]
    await system.shutdown()
    assert old.stopped == 1 and new.stopped == 1


async def test_shutdown_stops_every_actor():
    system = local_actor_system()
    actors = [Recorder() for _ in range(3)]
    for i, actor in enumerate(actors):
        await system.spawn(f"a{i}", actor)
    await system.shutdown()
    assert [a.stopped for a in actors] == [1, 1, 1]
    assert system.addresses() == []


async def test_unbounded_actor_stop_waits_for_direct_calls_then_refuses_new_ones():
    system = local_actor_system()
    actor = Recorder(concurrency=None, delay=0.05)
    ref = await system.spawn("a", actor)
    inflight = asyncio.ensure_future(ref.ask("first"))
    await asyncio.sleep(0.01)
    await system.stop("a", grace=5)
    assert inflight.done() and inflight.result() == "got first"
    with pytest.raises(ActorStopped):
        await ref.ask("late")


async def test_unbounded_actor_stop_gives_up_after_grace():
    system = local_actor_system()
    actor = Recorder(concurrency=None, delay=10)
    ref = await system.spawn("a", actor)
    inflight = asyncio.ensure_future(ref.ask("slow"))
    await asyncio.sleep(0.01)
    await asyncio.wait_for(system.stop("a", grace=0.05), 2)
    assert actor.stopped == 1 and not inflight.done()
    inflight.cancel()
