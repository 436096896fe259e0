"""One wasm3 instance: its own environment, runtime and loaded module, and the ABI's
memory protocol on top.

Every instance parses the module afresh into an environment of its own: wasm3 loads a
parsed module into one runtime only, and an environment's code pages are reused across
its runtimes without a lock, so instances that share nothing can run in parallel threads
(each `m3_Call` releases the GIL). wasm3 compiles functions lazily, on their first call.

A call's deadline and `interrupt` are looked at each time the guest calls the host (a
host function or WASI) and, in a metered module (`_meter`), each time its fuel runs
out; a call past its deadline, or interrupted, is stopped there. Without metering a
guest that never calls the host runs to completion.
"""

from __future__ import annotations

import ctypes
import struct
import threading
import time

from okra_core.engine import GuestFault, GuestInterrupted, GuestTimeout, GuestTrap, StdioSink
from okra_core.hostapi import HostContext, HostFunction, call_host_function
from okra_plugins.engine_wasm3 import _capi, _meter, _stack, _wasi
from okra_plugins.engine_wasm3._memory import Wasm3Memory

_U32 = 0xFFFFFFFF
_U64 = (1 << 64) - 1
_monotonic = time.monotonic
_call = _capi.call
_get_results = _capi.get_results
_get_memory = _capi.get_memory
_EMPTY = memoryview(bytearray())
_stack_size = _stack.current
_thread_stack = _stack.measured

#: What a host callback returns to make the call fail; why is in the instance state.
_STOP = ctypes.create_string_buffer(b"[trap] stopped by the host")
STOP = ctypes.addressof(_STOP)

TIMED_OUT = "timed out"
INTERRUPTED = "interrupted"
EXITED = "exited"
FAILED = "failed"


class InstanceState:
    """What the host callbacks of one instance act on (found by its runtime's address)."""

    __slots__ = (
        "context", "memory", "stdio", "deadline", "interrupted", "stopped", "why",
    )

    def __init__(self, context: HostContext, memory: Wasm3Memory, stdio: StdioSink):
        self.context = context
        self.memory = memory
        self.stdio = stdio
        self.deadline: float | None = None
        self.interrupted = False
        #: Why a callback stopped the call (TIMED_OUT, INTERRUPTED, EXITED, FAILED)...
        self.stopped: str | None = None
        #: ...and what it said (the exit status, the failure).
        self.why: object = None


#: Runtime address -> the state of the instance living in that runtime.
STATES: dict[int, InstanceState] = {}


def _stop(state: InstanceState, reason: str, why: object = None) -> int:
    state.stopped = reason
    state.why = why
    return STOP


def _check_running(state: InstanceState) -> int | None:
    """Stop the call at this host call if it is interrupted or past its deadline."""
    if state.interrupted:
        return _stop(state, INTERRUPTED)
    deadline = state.deadline
    if deadline is not None and _monotonic() >= deadline:
        return _stop(state, TIMED_OUT)
    return None


def _arg_reader(valtype: str):
    if valtype == "i32":
        return lambda v: v & _U32
    if valtype == "i64":
        return lambda v: v - (1 << 64) if v >> 63 else v
    if valtype == "f32":
        return lambda v: struct.unpack("<f", struct.pack("<I", v & _U32))[0]
    if valtype == "f64":
        return lambda v: struct.unpack("<d", struct.pack("<Q", v))[0]
    raise ValueError(f"host functions cannot take {valtype} parameters")


def _result_writer(valtype: str):
    if valtype == "i32":
        return lambda r: r & _U32
    if valtype == "i64":
        return lambda r: r & _U64
    if valtype == "f32":
        return lambda r: struct.unpack("<I", struct.pack("<f", r))[0]
    if valtype == "f64":
        return lambda r: struct.unpack("<Q", struct.pack("<d", r))[0]
    raise ValueError(f"host functions cannot return {valtype}")


_SIGNATURE_CODES = {"i32": "i", "i64": "I", "f32": "f", "f64": "F"}


def signature(params: tuple[str, ...], results: tuple[str, ...]) -> str:
    """wasm3's signature string, e.g. "i(iiI)"; ValueError for what it cannot link."""
    if len(results) > 1:
        raise ValueError("returns more than one value")
    try:
        ret = _SIGNATURE_CODES[results[0]] if results else "v"
        args = "".join(_SIGNATURE_CODES[t] for t in params)
    except KeyError as exc:
        raise ValueError(f"has a value type wasm3 cannot pass: {exc.args[0]}") from None
    return f"{ret}({args})"


def host_callback(fn: HostFunction) -> _capi.RawCall:
    """The raw callback running `fn` for whichever instance calls it."""
    nrets = len(fn.results)
    nargs = len(fn.params)
    first, stop = nrets, nrets + nargs
    states = STATES
    call = call_host_function
    simple = all(t == "i32" for t in fn.params)
    readers = tuple(_arg_reader(t) for t in fn.params)
    write = _result_writer(fn.results[0]) if fn.results else None

    def callback(runtime, import_ctx, sp, mem):
        try:
            state = states[runtime]
            if state.interrupted or state.deadline is not None:
                stopped = _check_running(state)
                if stopped is not None:
                    return stopped
            if simple:
                args = [v & _U32 for v in sp[first:stop]] if nargs else ()
            else:
                args = [read(v) for read, v in zip(readers, sp[first:stop])]
            result = call(fn, state.context, args)
            if write is not None:
                if type(result) is not int and fn.results[0] in ("i32", "i64"):
                    raise TypeError(f"returned {result!r}, expected an int")
                sp[0] = write(result)
            return None
        except BaseException as exc:
            return _failure(runtime, f"host function {fn.qualified_name}", exc)

    return _capi.RawCall(callback)


def refuel_callback() -> _capi.RawCall:
    """`okra_meter.refuel() -> i32`: called by a metered guest whose fuel ran out; stops
    the call if it is past its deadline or interrupted, else gives it more fuel."""
    states = STATES
    fuel = _meter.FUEL

    def callback(runtime, import_ctx, sp, mem):
        try:
            state = states[runtime]
            if state.interrupted or state.deadline is not None:
                stopped = _check_running(state)
                if stopped is not None:
                    return stopped
            sp[0] = fuel
            return None
        except BaseException as exc:
            return _failure(runtime, "the fuel check", exc)

    return _capi.RawCall(callback)


def wasi_callback(name: str) -> _capi.RawCall:
    sig, impl = _wasi.FUNCTIONS[name]
    nrets = 0 if sig.startswith("v") else 1
    params = sig[2:-1]
    first, stop = nrets, nrets + len(params)
    readers = tuple(_arg_reader({"i": "i32", "I": "i64"}[c]) for c in params)
    states = STATES
    what = f"WASI {name}"

    def callback(runtime, import_ctx, sp, mem):
        try:
            state = states[runtime]
            if state.interrupted or state.deadline is not None:
                stopped = _check_running(state)
                if stopped is not None:
                    return stopped
            args = [read(v) for read, v in zip(readers, sp[first:stop])] if params else ()
            errno = impl(state, *args)
            if nrets:
                sp[0] = errno & _U32
            return None
        except _wasi.Exit as exc:
            return _stop(states[runtime], EXITED, exc.code)
        except BaseException as exc:
            return _failure(runtime, what, exc)

    return _capi.RawCall(callback)


def _failure(runtime: int, what: str, exc: BaseException) -> int:
    """An exception escaped a host callback: log it, and fail the call as a trap."""
    try:
        state = STATES.get(runtime)
        logger = state.context.logger if state is not None else None
        if logger is not None:
            logger.error("%s failed", what, exc_info=exc)
        if state is not None:
            return _stop(state, FAILED, f"{what} failed: {exc!r}")
    except BaseException:
        pass
    return STOP


def stopped_error(what: str, state: InstanceState) -> GuestTrap:
    """The error for a call a host callback stopped (it returned STOP), from `state`."""
    stopped, why = state.stopped, state.why
    state.stopped = state.why = None
    return _stopped_error(what, stopped, why)


def _stopped_error(what: str, stopped: str | None, why: object) -> GuestTrap:
    if stopped == TIMED_OUT:
        return GuestTimeout(f"{what}: deadline exceeded: the guest was stopped")
    if stopped == INTERRUPTED:
        return GuestInterrupted(
            f"{what}: the host interrupted the call (Instance.interrupt) and stopped the guest"
        )
    if stopped == EXITED:
        return GuestTrap(f"{what}: the guest exited with status {why} (proc_exit)")
    return GuestTrap(f"{what}: {why or 'a host function failed'}")


class Wasm3Instance:
    """An `okra_core.engine.Instance` on wasm3."""

    __slots__ = (
        "_env", "_runtime", "_rt", "_state", "_memory", "_module", "_handle_fn",
        "_buffer_fn", "_version_fn", "_argv", "_argptrs", "_ret", "_retptrs", "_size",
        "_base", "_view", "_buf", "_cap", "_status", "_busy", "_free_lock",
        "_memory_limit", "_native_needed", "__weakref__",
    )

    def __init__(
        self, env, runtime, state: InstanceState, keep: object, memory_limit, stack_bytes: int
    ):
        self._env = env
        self._runtime = runtime  # c_void_p
        self._rt = runtime.value  # the same address as an int, the key of STATES
        self._state = state
        self._memory = state.memory
        self._module = keep  # the module bytes and callbacks wasm3 points into
        self._memory_limit = memory_limit
        #: Native stack a thread needs to run this instance's calls (`_stack`).
        self._native_needed = _stack.needed(stack_bytes)
        self._argv = (ctypes.c_uint64 * 2)()
        base = ctypes.addressof(self._argv)
        self._argptrs = (ctypes.c_void_p * 2)(base, base + 8)
        self._ret = ctypes.c_uint64()
        self._retptrs = (ctypes.c_void_p * 1)(ctypes.addressof(self._ret))
        self._size = ctypes.c_uint32()
        self._base = -1
        self._view = _EMPTY
        self._buf = 0
        self._cap = -1
        self._status = "starting"
        self._busy = False
        self._free_lock = threading.Lock()
        self._handle_fn = self._buffer_fn = self._version_fn = None

    # -- set-up -----------------------------------------------------------------------

    def start(
        self, functions: dict[str, ctypes.c_void_p], initial_buffer: int,
        deadline: float | None = None,
    ) -> None:
        """Run `_initialize` and ask for the first request buffer, both by `deadline`."""
        self._handle_fn = functions["okra_handle"]
        self._buffer_fn = functions["okra_buffer"]
        self._version_fn = functions["okra_abi_version"]
        self._enter("_initialize")
        try:
            init = functions.get("_initialize")
            if init is not None:
                self._invoke(init, 0, "_initialize", deadline)
            self._status = "ready"
            self._reserve(initial_buffer, deadline)
        finally:
            self._leave()

    # -- the request path -------------------------------------------------------------
    #
    # `close` may run on another thread while a call runs (the GIL is released inside
    # wasm3). Every use of the runtime lies between `_enter` (busy, then: closed?) and
    # `_leave` (not busy, then: closed? free), and `close` sets closed, then frees only
    # if not busy. Of two threads each writing its flag and then reading the other's,
    # one sees the other's write, so the runtime is never freed while in use, and is
    # freed once.

    def handle(self, request: bytes, deadline: float | None = None) -> bytes:
        # _enter and the stack check, inline: this is the hot path.
        self._busy = True
        if self._status == "closed":
            self._leave()
            raise GuestFault("cannot call okra_handle: the instance is closed")
        try:
            n = len(request)
            if n > self._cap:  # also every call once unusable
                self._reserve(n, deadline)
            state = self._state
            state.deadline = deadline
            size = getattr(_thread_stack, "size", 0)
            if size == 0 or (size is not None and size < self._native_needed):
                size = _stack_size()
                if size is not None and size < self._native_needed:
                    self._stack_too_small(size)
            buf = self._buf
            self._view[buf : buf + n] = request
            argv = self._argv
            argv[0] = buf
            argv[1] = n
            err = _call(self._handle_fn, 2, self._argptrs)
            if not err:
                err = _get_results(self._handle_fn, 1, self._retptrs)
            if self._status == "closed":
                raise GuestFault("okra_handle: the instance was closed while the call ran")
            if err:
                self._raise_failure("okra_handle", err, deadline)
            result = self._ret.value
            base = _get_memory(self._runtime, ctypes.byref(self._size), 0)
            size = self._size.value
            if base != self._base or size != len(self._view):
                self._remap(base, size)
            ptr = result >> 32
            end = ptr + (result & _U32)
            if end > size:
                self._status = "faulted"
                self._cap = -1
                raise GuestFault(
                    f"okra_handle returned a response at {ptr}..{end}, outside the guest's "
                    f"{size}-byte memory"
                )
            return self._view[ptr:end].tobytes()
        finally:
            self._busy = False  # _leave, inline
            if self._status == "closed":
                self._release()

    def abi_version(self) -> int:
        self._enter("okra_abi_version")
        try:
            self._check_usable("okra_abi_version")
            value = self._invoke(self._version_fn, 0, "okra_abi_version") & _U32
        finally:
            self._leave()
        return value - (1 << 32) if value >= 1 << 31 else value

    def interrupt(self) -> None:
        """Refuse every later call, and stop the running one at its next fuel check or
        host call (without metering, a guest that never calls the host runs on).
        Thread-safe: it only sets flags."""
        self._state.interrupted = True
        self._cap = -1

    def close(self) -> None:
        if self._status == "closed":
            return
        self._status = "closed"
        self._cap = -1
        if not self._busy:
            self._release()
        # else: the call still running frees the instance when it leaves

    def __del__(self):
        try:
            self._release()
        except Exception:
            pass

    def _enter(self, what: str) -> None:
        self._busy = True
        if self._status == "closed":
            self._leave()
            raise GuestFault(f"cannot call {what}: the instance is closed")

    def _leave(self) -> None:
        self._busy = False
        if self._status == "closed":
            self._release()

    def _release(self) -> None:
        with self._free_lock:
            runtime = self._runtime
            if runtime is None:
                return
            self._runtime = None
            self._view = _EMPTY
            self._memory.unbind()
            if STATES.get(self._rt) is self._state:
                del STATES[self._rt]
            _capi.free_runtime(runtime)
            _capi.free_environment(self._env)
            self._env = None
            self._module = None

    # -- slow paths (between _enter and _leave) -----------------------------------------

    def _invoke(self, fn, arg_count: int, what: str, deadline: float | None = None) -> int:
        """Call an export with up to one i32 argument (in `_argv[0]`); its i32 result."""
        size = _stack_size()
        if size is not None and size < self._native_needed:
            self._stack_too_small(size)
        self._state.deadline = deadline
        err = _call(fn, arg_count, self._argptrs)
        if not err and _capi.get_ret_count(fn):
            err = _get_results(fn, 1, self._retptrs)
        if self._status == "closed":
            raise GuestFault(f"{what}: the instance was closed while the call ran")
        if err:
            self._raise_failure(what, err, deadline)
        return self._ret.value

    def _reserve(self, size: int, deadline: float | None) -> None:
        self._check_usable("okra_handle")
        self._argv[0] = size
        ptr = self._invoke(self._buffer_fn, 1, "okra_buffer", deadline) & _U32
        base = _get_memory(self._runtime, ctypes.byref(self._size), 0)
        self._remap(base, self._size.value)
        if ptr == 0:
            self._fault(
                f"okra_buffer({size}) returned 0: the guest could not allocate the request buffer"
            )
        if ptr + size > len(self._view):
            self._fault(
                f"okra_buffer({size}) returned a buffer at {ptr}..{ptr + size}, outside the "
                f"guest's {len(self._view)}-byte memory"
            )
        self._buf = ptr
        self._cap = size
        if self._state.interrupted:
            self._cap = -1

    def _remap(self, base: int | None, size: int) -> None:
        self._base = base
        if not base or not size:
            self._view = _EMPTY
        else:
            self._view = memoryview((ctypes.c_ubyte * size).from_address(base)).cast("B")

    def _check_usable(self, what: str) -> None:
        status = self._status
        if status == "closed":
            raise GuestFault(f"cannot call {what}: the instance is closed")
        if self._state.interrupted:
            raise GuestInterrupted(
                f"cannot call {what}: the host interrupted the instance (Instance.interrupt); "
                "it must be discarded"
            )
        if status in ("trapped", "faulted"):
            raise GuestFault(
                f"cannot call {what}: the instance {status} earlier and must be discarded"
            )

    def _stack_too_small(self, size: int):
        raise GuestTrap(
            f"engine wasm3: this thread's native stack ({size // 1024} KiB) is too small "
            f"for instances with a {(self._native_needed - _stack.MARGIN) // _stack.NATIVE_PER_STACK_BYTE // 1024} "
            f"KiB value stack (it needs {self._native_needed // 1024} KiB, or deep "
            "recursion could crash the process): raise the stack size (ulimit -s) or "
            "lower the engine option stack_bytes"
        )

    def _fault(self, message: str):
        self._status = "faulted"
        self._cap = -1
        raise GuestFault(message)

    def _raise_failure(self, what: str, err: int, deadline: float | None):
        self._status = "trapped"
        self._cap = -1
        state = self._state
        stopped, why = state.stopped, state.why
        state.stopped = state.why = None
        if err == STOP:
            raise _stopped_error(what, stopped, why)
        message = _capi.message(err).removeprefix("[trap] ")
        raise GuestTrap(f"{what}: {message}{self._memory_limit_note()}")

    def _memory_limit_note(self) -> str:
        limit = self._memory_limit
        if limit is None or self._runtime is None:
            return ""
        if limit - self._memory.size() >= 65536:
            return ""
        return f" (the instance's memory is at its limit of {limit} bytes: limits.memory_bytes)"
