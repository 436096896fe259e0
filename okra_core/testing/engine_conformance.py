"""The Engine conformance suite: what every WebAssembly engine plugin must do, as pytest
tests.

The built-in engines run it (tests/test_engine_conformance.py, once per registered
engine); a third-party engine runs it by subclassing `EngineConformance` in a test
module of its own and giving a `make_engine` fixture, a callable that returns a fresh
engine:

    import pytest
    from okra_core.testing.engine_conformance import EngineConformance

    class TestMyEngine(EngineConformance):
        @pytest.fixture
        def make_engine(self):
            return lambda: MyEngine(cache_dir=None)

The suite calls `make_engine()` once per test. Its guests are small WebAssembly modules
written by hand, shipped compiled (`engine_fixtures/*.wasm`, next to their `.wat`
sources), so running it needs pytest and the engine, nothing else.

What it holds an engine to is okra_core/engine.py's and okra_core/hostapi.py's
contract and the guest ABI (docs/abi.md), and only that; where those are silent
(the exact text of a trap message, which exception a refused call raises) it accepts
any answer they allow:

* the request path: envelopes of 0 B to 1 MiB round-trip (the request buffer is
  regrown through `okra_buffer`), `abi_version()` calls the export;
* host functions, in every call shape (i32 parameters and result, no parameters; i64
  and f64 when the engine links them, else skipped), by the HostFunction contract:
  results that fit are written, others stay pending for `okra.abi.take`, HostError is
  `-code` with its message pending, a bug is `-INTERNAL` and logged, a result that is
  not an int traps the guest (never the process), each instance's functions get its
  own HostContext, whose `memory` is a bounds-checked GuestMemory;
* traps (unreachable, out-of-bounds access, stack overflow, division by zero, WASI
  proc_exit, a trap in `_initialize`) are GuestTraps, ABI breaches (a response outside
  memory, `okra_buffer` returning 0 for a request) GuestFaults, and an instance that
  failed refuses later calls; a new instance of the same module serves;
* instances in several threads at once, and one instance moving between threads;
* WASI: fd 1 and 2 reach the stdio sink, other fds are EBADF, no environment, no
  arguments, no preopened directories;
* instantiation and compilation errors: an import nothing provides is a DeployError
  naming it, a module without the ABI's exports (or whose `okra_buffer` fails at
  start) an AbiError, bytes that are not a valid module a PackageError;
* `close()` is idempotent; `interrupt()` is sticky; `describe()` and `capabilities()`
  return what they document.

Capabilities gate what an engine may not have (`Engine.capabilities()`): a call's
deadline and `InstanceLimits.start_seconds` stopping a spinning guest (`deadline`), `interrupt()` stopping a running call
(`interrupt`), `InstanceLimits.memory_bytes` (`memory_limit`). Without one, its tests
are skipped saying which capability is missing; an engine that claims one is held to
it. The runtime refuses to deploy a service that needs a capability its engine lacks.
"""

from __future__ import annotations

import functools
import importlib.resources
import logging
import os
import re
import struct
import threading
import time
from collections.abc import Callable, Sequence

import pytest

from okra_core import abi
from okra_core.engine import (
    CompiledModule,
    Engine,
    EngineCapabilities,
    ExportSpec,
    GuestFault,
    GuestInterrupted,
    GuestTimeout,
    GuestTrap,
    ImportSpec,
    Instance,
    InstanceLimits,
)
from okra_core.errors import AbiError, DeployError, PackageError
from okra_core.hostapi import GuestMemory, HostContext, HostError, HostFunction
from okra_core.status import StatusCode
from okra_core.testing.threads import run_together

SERVICE = "test.v1.Echo"
PAGE = 65536
ERRNO_BADF = 8
#: How long a guest is given to be stopped (an interrupt, a deadline) before the suite
#: calls the engine broken: generous, for slow machines; the protocol gives no bound.
STOP_WITHIN = 5.0
#: (module (func (result i32) (i32.const 1))), by hand.
SMALLEST = (
    b"\0asm\x01\0\0\0\x01\x05\x01\x60\x00\x01\x7f\x03\x02\x01\x00"
    b"\x0a\x06\x01\x04\x00\x41\x01\x0b"
)
#: SMALLEST with i64.const for its i32.const: well-formed, but it does not type-check.
TYPE_INVALID = SMALLEST.replace(b"\x41\x01\x0b", b"\x42\x01\x0b")


@functools.cache
def guest_wasm(name: str) -> bytes:
    """The compiled guest `engine_fixtures/<name>.wasm`."""
    return (importlib.resources.files(__package__) / "engine_fixtures" / f"{name}.wasm").read_bytes()


def request(payload: bytes, method: str = "Echo") -> bytes:
    """A request envelope for SERVICE."""
    return abi.encode_request(abi.request_prefix(SERVICE, method), payload)


def output_of(response: bytes) -> bytes:
    """The output of a successful response envelope."""
    output, code, message = abi.decode_response(response)
    assert (code, message) == (0, ""), (code, message)
    return output


def new_context(service: str = SERVICE) -> HostContext:
    return HostContext(service, logging.getLogger(f"okra.service.{service}"))


class Sink:
    """A stdio sink that remembers what it got."""

    def __init__(self) -> None:
        self.chunks: list[tuple[int, bytes]] = []
        self._lock = threading.Lock()

    def __call__(self, fd: int, data: bytes) -> None:
        with self._lock:
            self.chunks.append((fd, bytes(data)))

    def stream(self, fd: int) -> bytes:
        """Everything written to `fd`, joined (chunking is the engine's business)."""
        return b"".join(data for f, data in self.chunks if f == fd)


def call_in_thread(instance: Instance, req: bytes, deadline: float | None = None):
    """Run `instance.handle` on a new (daemon) thread; returns (thread, outcome), where
    outcome gets "result" or "error", then "ended" (monotonic time)."""
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["result"] = instance.handle(req, deadline)
        except BaseException as exc:  # reported by the test
            outcome["error"] = exc
        outcome["ended"] = time.monotonic()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


# -- host functions the guests import ---------------------------------------------------


def repeat(ctx: HostContext, ptr: int, length: int, out_ptr: int, out_cap: int) -> int:
    """okra.test.repeat (hostcall.wat): the request's input three times, by the
    pending-result convention; methods Error, Crash and Bad misbehave on purpose."""
    assert ctx.memory is not None
    _, method, payload, _ = abi.decode_request(ctx.memory.read(ptr, length))
    if method == "Error":
        raise HostError(StatusCode.NOT_FOUND, "no such thing")
    if method == "Crash":
        raise RuntimeError("boom")
    if method == "Bad":
        return None  # type: ignore[return-value]
    return ctx.return_data(payload * 3, out_ptr, out_cap)


REPEAT = HostFunction("okra.test", "repeat", ("i32", "i32", "i32", "i32"), repeat)


def capability_skip(engine: Engine, name: str) -> None:
    """Skip the test unless the engine claims capability `name`."""
    if not getattr(engine.capabilities(), name):
        pytest.skip(
            f"engine {engine.name} lacks capability {name!r} "
            f"(EngineCapabilities.{name} is False)"
        )


class EngineConformance:
    """Subclass it (as `Test...`) and give a `make_engine` fixture: see the module doc."""

    @pytest.fixture
    def make_engine(self) -> Callable[[], Engine]:
        raise NotImplementedError("give a make_engine fixture: () -> Engine")

    @pytest.fixture
    def engine(self, make_engine) -> Engine:
        return make_engine()

    @pytest.fixture
    def start(self, engine):
        """start(guest, functions=None, *, stdio=None, context=None, limits=None): an
        instance of `engine_fixtures/<guest>.wasm` (functions default to okra.abi),
        closed after the test."""
        started: list[Instance] = []

        def start_(
            name: str,
            functions: Sequence[HostFunction] | None = None,
            *,
            stdio=None,
            context: HostContext | None = None,
            limits: InstanceLimits | None = None,
        ) -> Instance:
            module = engine.compile(guest_wasm(name))
            if functions is None:
                functions = abi.abi_functions()
            instance = module.instantiate(
                functions, stdio or Sink(), context or new_context(), limits=limits
            )
            started.append(instance)
            return instance

        yield start_
        for instance in started:
            instance.close()

    def assert_refuses_calls(self, instance: Instance, selector: bytes = b"k") -> None:
        """A failed instance refuses later calls (and so never enters the guest, which
        would answer `selector`): which error it raises the protocol leaves open."""
        with pytest.raises((GuestTrap, GuestFault)):
            instance.handle(request(selector))
        with pytest.raises((GuestTrap, GuestFault)):
            instance.abi_version()

    # -- the engine ---------------------------------------------------------------------

    def test_engine_is_an_engine_with_a_name(self, engine):
        assert isinstance(engine, Engine)
        assert isinstance(engine.name, str) and engine.name

    def test_describe_is_a_dict_of_strings(self, engine):
        described = engine.describe()
        assert isinstance(described, dict)
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in described.items())

    def test_capabilities_are_engine_capabilities(self, engine):
        capabilities = engine.capabilities()
        assert isinstance(capabilities, EngineCapabilities)
        for name in ("deadline", "interrupt", "memory_limit", "parallel", "component_model"):
            assert isinstance(getattr(capabilities, name), bool), name
        assert isinstance(capabilities.wasi, str) and capabilities.wasi
        assert capabilities.to_json()["wasi"] == capabilities.wasi

    # -- compilation --------------------------------------------------------------------

    def test_compiled_module_lists_imports_and_exports_with_types(self, engine):
        module = engine.compile(guest_wasm("hostcall"))
        assert isinstance(module, CompiledModule)
        assert all(isinstance(imp, ImportSpec) for imp in module.imports)
        assert all(isinstance(exp, ExportSpec) for exp in module.exports)
        imports = {imp.qualified_name: imp for imp in module.imports}
        assert set(imports) == {"okra.test.repeat", "okra.abi.take"}
        repeat_import = imports["okra.test.repeat"]
        assert (repeat_import.kind, repeat_import.params, repeat_import.results) == (
            "func", ("i32", "i32", "i32", "i32"), ("i32",)
        )
        exports = {exp.name: exp for exp in module.exports}
        assert exports["memory"].kind == "memory"
        for name, signature in abi.REQUIRED_EXPORTS.items():
            if signature is not None:
                assert exports[name].kind == "func"
                assert (exports[name].params, exports[name].results) == signature, name

    def test_compile_takes_bytes_like_objects(self, engine):
        module = engine.compile(bytearray(guest_wasm("echo")))
        instance = module.instantiate(abi.abi_functions(), Sink(), new_context())
        try:
            assert output_of(instance.handle(request(b"hi"))) == b"hi"
        finally:
            instance.close()

    @pytest.mark.parametrize(
        "data",
        [
            b"",
            b"PK\x03\x04 this is a zip file",
            b"\0asm\x01\0\0\0\x05\xff\xff",  # a truncated section
            TYPE_INVALID,
            b"\0asm\x0d\x00\x01\x00",  # a component's header
        ],
        ids=["empty", "not-wasm", "truncated", "type-invalid", "component"],
    )
    def test_invalid_bytes_are_a_package_error(self, engine, data):
        with pytest.raises(PackageError):
            engine.compile(data)

    def test_the_smallest_valid_module_compiles(self, engine):
        # (the "type-invalid" case above is this module with one byte changed)
        assert isinstance(engine.compile(SMALLEST), CompiledModule)

    # -- the request path ---------------------------------------------------------------

    @pytest.mark.parametrize("size", [0, 100, 64 * 1024, 1024 * 1024])
    def test_echo_round_trips_every_size(self, start, size):
        instance = start("echo")
        assert isinstance(instance, Instance)
        payload = os.urandom(size)
        assert abi.decode_response(instance.handle(request(payload))) == (payload, 0, "")
        # the buffer is reused (or was regrown) without disturbing later requests
        assert output_of(instance.handle(request(b"small"))) == b"small"
        assert output_of(instance.handle(request(payload[::-1]))) == payload[::-1]
        assert output_of(instance.handle(request(b""))) == b""

    def test_small_requests_work_after_big_ones(self, start):
        instance = start("echo")
        for size in (1024 * 1024, 10, 200 * 1024, 0, 64 * 1024 + 1, 3):
            payload = os.urandom(size)
            assert output_of(instance.handle(request(payload))) == payload

    def test_guest_error_envelope_comes_back_as_is(self, start):
        response = start("echo").handle(request(b"ignored", method="Fail"))
        assert abi.decode_response(response) == (b"", 9, "requested failure")

    def test_abi_version_calls_the_export(self, start):
        assert start("echo").abi_version() == 1
        assert start("version2").abi_version() == 2

    def test_request_the_guest_cannot_make_room_for_is_a_guest_fault(self, start):
        instance = start("echo")  # its memory may grow to 4 MiB, no further
        with pytest.raises(GuestFault):
            instance.handle(request(b"x" * (5 * 1024 * 1024)))
        self.assert_refuses_calls(instance)

    def test_response_outside_memory_is_a_guest_fault(self, start):
        instance = start("bad_pointer")
        with pytest.raises(GuestFault):
            instance.handle(request(b"hello"))
        self.assert_refuses_calls(instance)

    def test_generous_deadline_does_not_disturb_calls_or_outlive_its_call(self, start):
        instance = start("echo")
        for _ in range(3):
            assert output_of(instance.handle(request(b"a"), time.monotonic() + 30)) == b"a"
        assert output_of(instance.handle(request(b"b"), time.monotonic() + 0.2)) == b"b"
        time.sleep(0.25)  # that deadline has passed: it was the last call's only
        assert output_of(instance.handle(request(b"c"))) == b"c"
        assert instance.abi_version() == 1

    # -- traps --------------------------------------------------------------------------

    @pytest.mark.parametrize(
        "selector",
        [b"u", b"m", b"e", b"s", b"d"],
        ids=[
            "unreachable",
            "out-of-bounds-load",
            "load-straddling-the-end-of-memory",
            "stack-overflow",
            "division-by-zero",
        ],
    )
    def test_trap_is_a_guest_trap_and_the_instance_refuses_further_calls(self, start, selector):
        instance = start("traps")
        assert output_of(instance.handle(request(b"k"))) == b""  # serves until it traps
        with pytest.raises(GuestTrap) as caught:
            instance.handle(request(selector))
        assert not isinstance(caught.value, (GuestTimeout, GuestInterrupted))
        self.assert_refuses_calls(instance)

    def test_new_instance_of_a_module_serves_after_another_trapped(self, engine, start):
        trapped = start("traps")
        with pytest.raises(GuestTrap):
            trapped.handle(request(b"u"))
        module = engine.compile(guest_wasm("traps"))
        for _ in range(2):
            fresh = module.instantiate(abi.abi_functions(), Sink(), new_context())
            try:
                assert output_of(fresh.handle(request(b"k"))) == b""
                with pytest.raises(GuestTrap):
                    fresh.handle(request(b"s"))  # and traps again, as it should
            finally:
                fresh.close()

    def test_trap_in_initialize_is_a_guest_trap(self, start):
        with pytest.raises(GuestTrap):
            start("init_trap")

    # -- instantiation errors -----------------------------------------------------------

    def test_import_nothing_provides_is_a_deploy_error_naming_it(self, engine):
        module = engine.compile(guest_wasm("hostcall"))
        with pytest.raises(DeployError) as caught:
            module.instantiate(abi.abi_functions(), Sink(), new_context())
        assert "okra.test" in str(caught.value) and "repeat" in str(caught.value)

    def test_unknown_wasi_function_is_a_deploy_error_naming_it(self, engine):
        module = engine.compile(guest_wasm("unknown_wasi"))
        with pytest.raises(DeployError, match="no_such_call"):
            module.instantiate(abi.abi_functions(), Sink(), new_context())

    def test_module_without_the_abi_exports_is_an_abi_error(self, engine):
        module = engine.compile(guest_wasm("no_exports"))
        with pytest.raises(AbiError):
            module.instantiate(abi.abi_functions(), Sink(), new_context())

    def test_okra_buffer_returning_zero_at_start_is_an_abi_error(self, engine):
        module = engine.compile(guest_wasm("no_buffer"))
        with pytest.raises(AbiError):
            module.instantiate(abi.abi_functions(), Sink(), new_context())

    # -- closing ------------------------------------------------------------------------

    def test_close_is_idempotent_and_a_closed_instance_raises_rather_than_crashes(self, start):
        instance = start("echo")
        assert output_of(instance.handle(request(b"x"))) == b"x"
        instance.close()
        instance.close()
        with pytest.raises((GuestFault, GuestTrap)):
            instance.handle(request(b"x"))

    # -- host functions -----------------------------------------------------------------

    def start_hostcall(self, start, context: HostContext | None = None):
        context = context or new_context()
        return start("hostcall", [*abi.abi_functions(), REPEAT], context=context), context

    def test_host_result_that_fits_is_written_directly(self, start):
        instance, context = self.start_hostcall(start)
        assert abi.decode_response(instance.handle(request(b"ab"))) == (b"ababab", 0, "")
        assert context.pending is None

    @pytest.mark.parametrize("size", [6, 1000, 40 * 1024])  # 120 KiB grows memory
    def test_host_result_too_big_is_pending_and_taken(self, start, size):
        instance, context = self.start_hostcall(start)
        payload = os.urandom(size)
        assert abi.decode_response(instance.handle(request(payload))) == (payload * 3, 0, "")
        assert context.pending is None  # take cleared it

    def test_host_error_is_a_negative_code_with_the_message_pending(self, start):
        instance, _ = self.start_hostcall(start)
        response = instance.handle(request(b"", method="Error"))
        assert abi.decode_response(response) == (b"", StatusCode.NOT_FOUND, "no such thing")
        assert output_of(instance.handle(request(b"ok"))) == b"okokok"  # and carries on

    def test_host_function_bug_is_internal_and_logged(self, start, caplog):
        instance, _ = self.start_hostcall(start)
        with caplog.at_level(logging.ERROR):
            response = instance.handle(request(b"", method="Crash"))
        assert abi.decode_response(response) == (
            b"",
            StatusCode.INTERNAL,
            "internal error in host function okra.test.repeat",
        )
        assert "boom" in caplog.text
        assert output_of(instance.handle(request(b"ok"))) == b"okokok"

    def test_host_function_returning_a_non_int_traps_the_guest(self, start):
        instance, _ = self.start_hostcall(start)
        with pytest.raises(GuestTrap):
            instance.handle(request(b"", method="Bad"))
        # the process, and other instances, carry on
        other, _ = self.start_hostcall(start)
        assert output_of(other.handle(request(b"ok"))) == b"okokok"

    def test_host_function_without_parameters_gets_only_its_context(self, start):
        seen = []

        def ping(ctx: HostContext) -> int:
            seen.append(ctx)
            return 0x01020304

        context = new_context()
        ping_fn = HostFunction("okra.test", "ping", (), ping)
        instance = start("ping", [*abi.abi_functions(), ping_fn], context=context)
        for _ in range(2):
            assert output_of(instance.handle(request(b""))) == bytes([4, 3, 2, 1])
        assert seen == [context, context]

    def test_i64_and_f64_values_cross_intact(self, engine, start):
        seen = []

        def mix(ctx, a, b, c):
            seen.append(("mix", a, b, c))
            return -(1 << 40) - 7

        def half(ctx, x):
            seen.append(("half", x))
            return x / 2

        functions = [
            HostFunction("okra.test", "mix", ("i32", "i64", "f64"), mix, results=("i64",)),
            HostFunction("okra.test", "half", ("f64",), half, results=("f64",)),
        ]
        try:
            instance = start("values", functions)
        except DeployError as exc:
            pytest.skip(
                f"engine {engine.name} does not link host functions with i64/f64 parameters "
                f"or results ({exc}); OKRA's own host functions take and return i32 only"
            )
        output = output_of(instance.handle(request(b"")))
        assert int.from_bytes(output[:8], "little", signed=True) == -(1 << 40) - 7
        assert struct.unpack("<d", output[8:])[0] == 2.5
        (_, a, b, c), (_, x) = seen
        # i32 -1 arrives as -1 or 0xffffffff (the HostFunction contract says "ints")
        assert a in (-1, 0xFFFFFFFF)
        assert (b, c, x) == (-0x123456789, 2.5, 5.0)

    def test_host_functions_see_their_own_instance_context(self, start):
        seen = []

        def spy(ctx, ptr, length, out_ptr, out_cap):
            seen.append(ctx)
            return repeat(ctx, ptr, length, out_ptr, out_cap)

        function = HostFunction("okra.test", "repeat", REPEAT.params, spy)
        contexts = [new_context(), new_context()]
        instances = [
            start("hostcall", [*abi.abi_functions(), function], context=ctx) for ctx in contexts
        ]
        instances[1].handle(request(b"x"))
        instances[0].handle(request(b"y"))
        instances[1].handle(request(b"z"))
        assert seen == [contexts[1], contexts[0], contexts[1]]
        assert all(ctx.memory is not None for ctx in contexts)
        assert contexts[0].memory is not contexts[1].memory

    def test_context_memory_is_a_bounds_checked_guest_memory(self, start):
        instance, context = self.start_hostcall(start)
        memory = context.memory
        assert isinstance(memory, GuestMemory)
        size = 2 * PAGE  # hostcall.wat's memory, which nothing has grown yet
        memory.write(size - 4, b"abcd")
        assert memory.read(size - 4, 4) == b"abcd"
        assert memory.read(size, 0) == b""
        memory.write(size, b"")
        for bad in (
            lambda: memory.read(size - 3, 4),
            lambda: memory.write(size - 3, b"abcd"),
            lambda: memory.read(size, 1),
            lambda: memory.read(-1, 1),
            lambda: memory.read(0, -1),
            lambda: memory.write(-1, b"a"),
            lambda: memory.read(0, 1 << 33),
        ):
            with pytest.raises(HostError) as caught:
                bad()
            assert caught.value.code == StatusCode.INVALID_ARGUMENT
        assert output_of(instance.handle(request(b"ab"))) == b"ababab"

    # -- memory -------------------------------------------------------------------------

    def test_guest_that_grows_memory_works_and_the_host_sees_it_grown(self, start):
        context = new_context()
        instance = start("memory_bomb", context=context)
        output = output_of(instance.handle(request(b"")))
        grown = int.from_bytes(output[:4], "little")
        pages = int.from_bytes(output[4:], "little")
        assert grown > 0 and pages == 2 + grown <= 256
        memory = context.memory
        memory.write(pages * PAGE - 4, b"last")
        assert memory.read(pages * PAGE - 4, 4) == b"last"
        with pytest.raises(HostError):
            memory.read(pages * PAGE - 3, 4)
        assert instance.abi_version() == 1

    @pytest.mark.parametrize("limit", [16 * PAGE, 16 * PAGE + 1000])
    def test_memory_limit_makes_memory_grow_fail_inside_the_guest(self, engine, start, limit):
        capability_skip(engine, "memory_limit")
        instance = start("memory_bomb", limits=InstanceLimits(limit))
        for grown in (14, 0):  # from its initial 2 pages to the limit's 16; then none
            output = output_of(instance.handle(request(b"")))
            assert int.from_bytes(output[:4], "little") == grown
            assert int.from_bytes(output[4:], "little") == 16
        assert instance.abi_version() == 1

    def test_memory_limits_are_per_instance(self, engine, start):
        capability_skip(engine, "memory_limit")
        limited = start("memory_bomb", limits=InstanceLimits(8 * PAGE))
        other = start("memory_bomb", limits=InstanceLimits(4 * PAGE))
        assert output_of(limited.handle(request(b"")))[4:] == (8).to_bytes(4, "little")
        assert output_of(other.handle(request(b"")))[4:] == (4).to_bytes(4, "little")

    def test_initial_memory_over_the_limit_is_a_deploy_error(self, engine, start):
        capability_skip(engine, "memory_limit")
        with pytest.raises(DeployError):
            start("echo", limits=InstanceLimits(PAGE))  # echo.wat starts with 2 pages
        instance = start("echo", limits=InstanceLimits(2 * PAGE))  # exactly enough
        assert output_of(instance.handle(request(b"ok"))) == b"ok"

    # -- deadlines and interrupts -------------------------------------------------------

    def test_deadline_stops_a_guest_that_never_returns(self, engine, start):
        capability_skip(engine, "deadline")
        instance = start("forever")
        began = time.monotonic()
        deadline = began + 0.3
        with pytest.raises(GuestTimeout):
            instance.handle(request(b""), deadline)
        ended = time.monotonic()
        assert ended - began >= 0.15, "stopped well before its deadline"
        assert ended - deadline < STOP_WITHIN, "stopped long after its deadline"
        self.assert_refuses_calls(instance)

    @pytest.mark.parametrize("guest", ["start_forever", "init_forever"])
    def test_start_seconds_stop_a_guest_that_never_finishes_starting(self, engine, start, guest):
        capability_skip(engine, "deadline")
        began = time.monotonic()
        with pytest.raises(GuestTimeout):
            start(guest, limits=InstanceLimits(start_seconds=0.3))
        assert time.monotonic() - began - 0.3 < STOP_WITHIN, "stopped long after its limit"

    def test_trap_under_a_deadline_is_a_plain_trap(self, start):
        instance = start("traps")
        with pytest.raises(GuestTrap) as caught:
            instance.handle(request(b"u"), time.monotonic() + 30)
        assert not isinstance(caught.value, (GuestTimeout, GuestInterrupted))

    @pytest.mark.parametrize("with_deadline", [False, True])
    def test_interrupt_stops_a_running_call(self, engine, start, with_deadline):
        capability_skip(engine, "interrupt")
        instance = start("forever")
        other = start("echo")
        deadline = time.monotonic() + 120 if with_deadline else None
        thread, outcome = call_in_thread(instance, request(b""), deadline)
        time.sleep(0.3)  # well inside the guest's loop
        assert thread.is_alive(), outcome
        asked = time.monotonic()
        instance.interrupt()
        thread.join(STOP_WITHIN)
        assert not thread.is_alive(), "the guest was not stopped"
        error = outcome.get("error")
        assert isinstance(error, GuestInterrupted), error
        assert not isinstance(error, GuestTimeout)
        assert outcome["ended"] - asked < STOP_WITHIN
        with pytest.raises(GuestInterrupted):
            instance.handle(request(b""))
        assert output_of(other.handle(request(b"unaffected"))) == b"unaffected"

    def test_interrupt_is_sticky_later_calls_are_refused(self, start):
        instance = start("echo")
        other = start("echo")
        assert output_of(instance.handle(request(b"a"))) == b"a"
        instance.interrupt()  # between calls: the next call must not enter the guest
        instance.interrupt()  # idempotent
        for payload in (b"", b"b", b"x" * 100_000):  # whether or not the request fits
            with pytest.raises(GuestInterrupted):
                instance.handle(request(payload), time.monotonic() + 30)
        with pytest.raises(GuestInterrupted):
            instance.handle(request(b"c"))
        with pytest.raises(GuestInterrupted):
            instance.abi_version()
        assert output_of(other.handle(request(b"d"))) == b"d"  # other instances unaffected

    def test_interrupt_from_another_thread_between_calls_is_not_lost(self, start):
        instance = start("echo")
        thread = threading.Thread(target=instance.interrupt)
        thread.start()
        thread.join()
        with pytest.raises(GuestInterrupted):
            instance.handle(request(b"a"))

    # -- threads ------------------------------------------------------------------------

    def test_instances_serve_calls_from_parallel_threads(self, start):
        instances = [start("echo") for _ in range(4)]

        def worker(index: int, instance: Instance) -> Callable[[], None]:
            def run() -> None:
                for i in range(200):
                    payload = f"{index}:{i}:".encode() * (1 + i % 50)
                    assert output_of(instance.handle(request(payload))) == payload

            return run

        run_together([worker(i, instance) for i, instance in enumerate(instances)], timeout=120)

    def test_parallel_instances_reach_their_own_context(self, start):
        def whoami(ctx, ptr, length, out_ptr, out_cap):
            return ctx.return_data(ctx.service.encode(), out_ptr, out_cap)

        functions = [*abi.abi_functions(), HostFunction("okra.test", "repeat", REPEAT.params, whoami)]
        lock = threading.Lock()

        def worker(index: int) -> Callable[[], None]:
            def run() -> None:
                name = f"test.v1.Service{index}"
                with lock:  # the `start` fixture's list is not thread-safe
                    instance = start("hostcall", functions, context=new_context(name))
                for _ in range(200):
                    assert output_of(instance.handle(request(b""))) == name.encode()

            return run

        run_together([worker(i) for i in range(4)], timeout=120)

    def test_one_instance_may_move_between_threads(self, start):
        instance = start("echo")
        results = []
        for n in range(3):
            thread = threading.Thread(
                target=lambda n=n: results.append(output_of(instance.handle(request(bytes([n])))))
            )
            thread.start()
            thread.join()
        assert results == [b"\x00", b"\x01", b"\x02"]

    # -- WASI ---------------------------------------------------------------------------

    def test_stdout_and_stderr_reach_the_sink_and_other_fds_are_ebadf(self, start):
        sink = Sink()
        instance = start("wasi", stdio=sink)
        assert sink.stream(1) == b"init\n"  # written by _initialize
        assert all(fd in (1, 2) for fd, _ in sink.chunks)
        output = output_of(instance.handle(request(b"w")))
        errno_fd0, errno_fd3, errno_fd5, written = output
        assert (errno_fd0, errno_fd3, errno_fd5) == (ERRNO_BADF,) * 3
        assert written == len(b"hello stdout\n")
        assert sink.stream(1) == b"init\nhello stdout\n"
        assert sink.stream(2) == b"oops\n"
        assert all(fd in (1, 2) for fd, _ in sink.chunks)
        # in the order written: stdout's, then stderr's
        last_stdout = max(i for i, (fd, _) in enumerate(sink.chunks) if fd == 1)
        first_stderr = min(i for i, (fd, _) in enumerate(sink.chunks) if fd == 2)
        assert last_stdout < first_stderr

    def test_each_instance_writes_to_its_own_sink(self, start):
        sinks = [Sink(), Sink()]
        instances = [start("wasi", stdio=sink) for sink in sinks]
        instances[1].handle(request(b"w"))
        assert sinks[0].stream(1) == b"init\n"
        assert sinks[1].stream(1) == b"init\nhello stdout\n"

    def test_guest_sees_no_environment_arguments_or_preopens(self, start):
        output = output_of(start("wasi").handle(request(b"e")))
        values = [int.from_bytes(output[i : i + 4], "little") for i in range(0, 28, 4)]
        environ_errno, environ_count, environ_size, args_errno, args_count, args_size, prestat = values
        assert (environ_errno, environ_count, environ_size) == (0, 0, 0), "environment"
        assert (args_errno, args_count, args_size) == (0, 0, 0), "arguments"
        assert prestat == ERRNO_BADF, "fd 3 should not be a preopened directory"

    def test_proc_exit_is_a_guest_trap_naming_the_status(self, start):
        instance = start("wasi")
        with pytest.raises(GuestTrap) as caught:
            instance.handle(request(b"x"))
        assert not isinstance(caught.value, (GuestTimeout, GuestInterrupted))
        assert re.search(r"(?<![\w.])37(?![\w.])", str(caught.value)), str(caught.value)
        self.assert_refuses_calls(instance, b"w")
