# Test plan: where guest calls run (okra_core._workers).
# WorkerThreads:
# - run returns the function's result / raises its exception, on a worker thread.
# - close lets queued calls finish; submitting after close is refused.
# - a result that comes after its waiter was cancelled goes to `abandoned` (so an
#   instance started for a caller that gave up is closed); an awaited one does not.
# CallRunner (inline once proven short):
# - a service whose host functions may block is never run inline, however fast.
# - after `promote_after` consecutive fast calls on threads, calls run inline (on the
#   loop thread); a slow call in between resets the streak. "Fast" is the CPU the worker
#   spent: a call that waits briefly (as a worker does for the GIL on a busy loop) still
#   counts, one that burns CPU or waits past `max_wall` does not.
# - two inline calls over `slow` of CPU (or `max_wall` of waiting; brief waits, as for
#   the GIL, do not count) within 16 calls send the service back to threads
#   and double the number of fast calls needed for the next promotion; one alone does
#   not (it may be a pause of the loop's own).
# - exceptions reach `done` in both modes.
# - an inline call gets at most `inline_budget` (its deadline is clipped); a guest stopped
#   there raises InlineOverrun (to be run again on a thread) and demotes the service;
#   stopped at its own, earlier deadline it stays a GuestTimeout.
# Through the runtime:
# - a short guest (echo.wat) goes inline after its first calls; a guest granted a host
#   function that may block never does; RuntimeConfig(inline_calls=False) turns it off.
# - a call that overruns the inline budget is stopped, run again on a thread and
#   answered normally; the service goes back to threads.
# - a guest that never returns is stopped at the call's deadline: DEADLINE_EXCEEDED,
#   instance discarded, the service keeps serving (and its pool does not fill up).
import asyncio
import threading
import time

import pytest

from okra_core._workers import CallRunner, InlineOverrun, WorkerThreads
from okra_core.engine import GuestTimeout


async def call(runner, fn, *args, deadline=None):
    """Run `fn(*args)` as the runner runs a guest call (instance, request, deadline)."""
    loop = asyncio.get_running_loop()
    future = loop.create_future()

    def done(result, exc):
        if exc is None:
            future.set_result(result)
        else:
            future.set_exception(exc)

    def guest(instance, request, budget):
        return fn(*args)

    runner.call(loop, done, guest, None, None, deadline or time.monotonic() + 30)
    return await future


def where():
    return threading.current_thread() is threading.main_thread()


def burn(seconds):
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass
    return threading.current_thread() is threading.main_thread()


async def test_worker_threads_run_off_the_loop_and_deliver_errors():
    threads = WorkerThreads(2, "t")
    assert await threads.run(where) is False
    with pytest.raises(ZeroDivisionError):
        await threads.run(lambda: 1 / 0)
    threads.close()
    with pytest.raises(RuntimeError, match="closed"):
        await threads.run(where)


async def test_close_lets_queued_calls_finish():
    threads = WorkerThreads(1, "t")
    first = asyncio.ensure_future(threads.run(time.sleep, 0.02))
    second = asyncio.ensure_future(threads.run(lambda: "second"))
    await asyncio.sleep(0)
    threads.close()
    assert await second == "second"
    await first


async def test_blocking_services_are_never_inline():
    runner = CallRunner(WorkerThreads(1, "t"), inline_allowed=False, promote_after=3)
    for _ in range(10):
        assert await call(runner, where) is False
    assert not runner.inline


async def test_fast_calls_are_promoted_inline_and_a_slow_one_resets_the_streak():
    runner = CallRunner(WorkerThreads(1, "t"), inline_allowed=True, promote_after=5, fast=0.005)
    for _ in range(4):
        assert await call(runner, where) is False
    await call(runner, burn, 0.01)  # slow: the streak starts again
    for _ in range(4):
        await call(runner, where)
    assert not runner.inline
    await call(runner, where)
    assert runner.inline
    assert await call(runner, where) is True  # ran on the loop thread


async def test_fast_means_little_cpu_within_a_wall_time_bound():
    runner = CallRunner(WorkerThreads(1, "t"), inline_allowed=True, promote_after=3, fast=0.002, max_wall=0.05)
    for _ in range(2):
        await call(runner, time.sleep, 0.01)  # waits 10 ms, spends no CPU: short
    await call(runner, burn, 0.01)  # 10 ms of CPU: not short, the streak starts again
    for _ in range(2):
        await call(runner, time.sleep, 0.01)
    assert not runner.inline
    await call(runner, time.sleep, 0.1)  # past max_wall: not short either
    for _ in range(2):
        await call(runner, time.sleep, 0.01)
    assert not runner.inline
    await call(runner, time.sleep, 0.01)
    assert runner.inline


async def test_slow_inline_call_demotes_and_doubles_the_bar():
    runner = CallRunner(WorkerThreads(1, "t"), inline_allowed=True, promote_after=2, fast=0.005, slow=0.005)
    await call(runner, where)
    await call(runner, where)
    assert runner.inline
    await call(runner, burn, 0.02)
    assert runner.inline  # one slow call may be the loop's own pause
    for _ in range(17):  # forgotten after 16 short calls
        await call(runner, where)
    await call(runner, burn, 0.02)
    assert runner.inline
    for _ in range(15):
        await call(runner, where)
    await call(runner, burn, 0.02)  # a second within 16 calls: the guest's
    assert not runner.inline and runner.demotions == 1 and runner.promote_after == 4
    for _ in range(3):
        await call(runner, where)
    assert not runner.inline
    await call(runner, where)
    assert runner.inline


async def test_inline_calls_that_wait_long_demote_too():
    runner = CallRunner(WorkerThreads(1, "t"), inline_allowed=True, promote_after=1, fast=0.005, max_wall=0.02)
    await call(runner, where)
    assert runner.inline
    await call(runner, time.sleep, 0.005)  # waiting, not computing, within max_wall: short
    await call(runner, time.sleep, 0.005)
    assert runner.inline
    await call(runner, time.sleep, 0.03)
    await call(runner, time.sleep, 0.03)
    assert not runner.inline and runner.demotions == 1


async def test_exceptions_reach_done_in_both_modes():
    runner = CallRunner(WorkerThreads(1, "t"), inline_allowed=True, promote_after=1, fast=0.005)
    with pytest.raises(ZeroDivisionError):
        await call(runner, lambda: 1 / 0)
    await call(runner, where)
    assert runner.inline
    with pytest.raises(ZeroDivisionError):
        await call(runner, lambda: 1 / 0)


async def test_inline_call_is_clipped_to_the_budget_and_overrun_is_reported():
    runner = CallRunner(WorkerThreads(1, "t"), inline_allowed=True, promote_after=1, fast=0.005, inline_budget=0.01)
    await call(runner, where)
    assert runner.inline
    loop = asyncio.get_running_loop()
    seen = []

    def guest(instance, request, budget):
        seen.append(budget - time.monotonic())
        raise GuestTimeout("deadline exceeded: the guest was stopped")

    outcomes = []
    runner.call(loop, lambda r, e: outcomes.append(e), guest, None, None, time.monotonic() + 30)
    assert seen[0] <= 0.01
    assert isinstance(outcomes[0], InlineOverrun) and not runner.inline
    # At its own (earlier) deadline a stopped guest is a plain timeout.
    await call(runner, where)
    await call(runner, where)
    assert runner.inline
    outcomes.clear()
    runner.call(loop, lambda r, e: outcomes.append(e), guest, None, None, time.monotonic() + 0.001)
    assert type(outcomes[0]) is GuestTimeout


# -- through the runtime ---------------------------------------------------------------

import wasmtime  # noqa: E402

from okra_core.config import RuntimeConfig  # noqa: E402
from okra_core.hostapi import HostFunction  # noqa: E402
from okra_core.manifest import PoolConfig  # noqa: E402
from okra_core.package import Package  # noqa: E402
from okra_core.plugins import Registry, make_plugin_manager  # noqa: E402
from okra_core.runtime import Runtime  # noqa: E402
from support import FIXTURES_DIR, compile_protos, make_manifest  # noqa: E402

PROTO = 'syntax = "proto3"; package w.v1; message B { bytes data = 1; } service S { rpc Echo(B) returns (B); }'


class SlowLog:
    """A host API like okra.log whose functions may block (the default)."""

    namespace = "okra.log"
    description = "okra.log, but its functions may block"

    def function_names(self):
        return ("write", "enabled")

    def functions(self, config, env=None):
        return (
            HostFunction(self.namespace, "write", ("i32", "i32", "i32"), lambda ctx, level, ptr, n: 0),
            HostFunction(self.namespace, "enabled", ("i32",), lambda ctx, level: 1),
        )


def registry_with(api):
    pm = make_plugin_manager(entrypoints=False)
    pm.unregister(name="okra_plugins.hostapi_log")

    class Plugin:
        from okra_core.hookspecs import hookimpl

        @hookimpl
        def register_host_apis(self, register):
            register(api)

    pm.register(Plugin(), name="slowlog")
    return Registry(pm)


def package(tmp_path, guest, host_apis):
    return Package.from_parts(
        manifest=make_manifest(name="w", services=("w.v1.S",), host_apis=host_apis, pool=PoolConfig(1, 1)),
        wasm=wasmtime.wat2wasm((FIXTURES_DIR / f"{guest}.wat").read_text()),
        descriptor_set=compile_protos(tmp_path, {"w/v1/w.proto": PROTO}),
    )


async def calls(runtime, n):
    for _ in range(n):
        await runtime.invoke("w.v1.S", "Echo", b"")
    return runtime.deployments()[0].actors["w.v1.S"].runner


@pytest.mark.parametrize("inline_calls", [True, False])
async def test_short_guest_goes_inline_unless_turned_off(tmp_path, inline_calls):
    config = RuntimeConfig(engine_options={"cache_dir": str(tmp_path)}, inline_calls=inline_calls)
    async with Runtime(config) as runtime:
        await runtime.deploy(package(tmp_path, "echo", {}))
        runner = await calls(runtime, 1000)  # 100 fast calls in a row suffice; slack for noise
        assert runner.inline is inline_calls


async def test_guest_with_a_blocking_host_function_never_goes_inline(tmp_path):
    config = RuntimeConfig(engine_options={"cache_dir": str(tmp_path)})
    async with Runtime(config, registry=registry_with(SlowLog())) as runtime:
        await runtime.deploy(package(tmp_path, "log", {"okra.log": {}}))
        runner = await calls(runtime, 300)
        assert not runner.inline_allowed and not runner.inline


async def test_inline_overrun_is_run_again_on_a_thread_and_answered(tmp_path):
    config = RuntimeConfig(engine_options={"cache_dir": str(tmp_path)})
    async with Runtime(config) as runtime:
        await runtime.deploy(package(tmp_path, "busy", {}))
        runner = await calls(runtime, 1000)  # input ends in 0: instant
        assert runner.inline
        pool = runtime.deployments()[0].actors["w.v1.S"].pool
        # 20 x 10^7 iterations: far over the 50 ms inline budget, well within 30 s.
        assert await runtime.invoke("w.v1.S", "Echo", b"\x0a\x01\x14", timeout=30) == b""
        assert not runner.inline and runner.demotions == 1
        await asyncio.sleep(0.05)
        assert pool.stats.discarded == 1


async def test_guest_that_never_returns_is_stopped_at_its_deadline(tmp_path):
    from okra_core.status import RpcError, StatusCode

    config = RuntimeConfig(engine_options={"cache_dir": str(tmp_path)})
    async with Runtime(config) as runtime:
        await runtime.deploy(package(tmp_path, "forever", {}))
        pool = runtime.deployments()[0].actors["w.v1.S"].pool
        for _ in range(3):  # more calls than the pool has instances: none stays stuck
            began = time.monotonic()
            with pytest.raises(RpcError) as info:
                await runtime.invoke("w.v1.S", "Echo", b"", timeout=0.2)
            assert info.value.code == StatusCode.DEADLINE_EXCEEDED
            assert time.monotonic() - began < 2
        await asyncio.sleep(0.2)
        assert pool.stats.discarded == 3 and pool.stats.busy == 0


async def test_a_result_nobody_waits_for_any_more_is_handed_to_abandoned():
    # An instance started for a caller that was cancelled meanwhile must still be closed.
    threads = WorkerThreads(1, name="t-abandon")
    started, release = threading.Event(), threading.Event()
    disposed = []

    def slow_start():
        started.set()
        release.wait(5)
        return "instance"

    try:
        task = asyncio.ensure_future(threads.run(slow_start, abandoned=disposed.append))
        await asyncio.to_thread(started.wait, 5)
        task.cancel()
        release.set()
        for _ in range(200):
            if disposed:
                break
            await asyncio.sleep(0.01)
        assert disposed == ["instance"]
        assert await threads.run(lambda: 1, abandoned=disposed.append) == 1
        assert disposed == ["instance"]  # a result that was awaited is not disposed of
    finally:
        threads.close()
