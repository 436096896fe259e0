"""One instance and the ABI's memory protocol, on the C API's fast path.

A request costs one call into the guest: the envelope is copied into the buffer the
guest exposed (`okra_buffer`, called again only when a request does not fit), then
`okra_handle(ptr, len)` runs and the response is copied out. Everything a call needs
(function handles, the argument array, the trap slot, a view of memory) is prepared
once, so the request path allocates nothing but the response bytes.

Each instance owns its Store, so instances are independent and can run in parallel
threads (ctypes releases the GIL while wasm runs); one instance runs one call at a time.

A call's deadline and `interrupt` act through the store's epoch-deadline callback
(`_epoch`): the call only sets its store's epoch deadline (on its own thread) and what
the callback looks at; `interrupt` only sets a flag.
"""

from __future__ import annotations

import ctypes
import time

import wasmtime

from okra_core.engine import GuestFault, GuestInterrupted, GuestTimeout, GuestTrap
from okra_plugins.engine_wasmtime import _callers, _capi
from okra_plugins.engine_wasmtime._callers import InstanceState
from okra_plugins.engine_wasmtime._epoch import INTERRUPTED, TIMED_OUT, EpochTicker
from okra_plugins.engine_wasmtime._failures import one_line

_func_call = _capi.func_call_unchecked
_memory_data = _capi.memory_data
_memory_data_size = _capi.memory_data_size
_set_epoch_deadline = _capi.set_epoch_deadline
_monotonic = time.monotonic
_U32 = 0xFFFFFFFF
_PAGE = 65536
#: The length of the argument/result array (two slots), passed with every call: it must
#: cover the function's parameters and its results.
_SLOTS = ctypes.c_size_t(2)
_EMPTY = memoryview(bytearray())


class WasmtimeInstance:
    """An `okra_core.engine.Instance` on wasmtime."""

    __slots__ = (
        "_store",
        "_funcs",
        "_memory_export",
        "_linked",
        "_host",
        "_memory",
        "_ctx",
        "_mem",
        "_handle_fn",
        "_buffer_fn",
        "_version_fn",
        "_words",
        "_args",
        "_trap",
        "_trap_slot",
        "_base",
        "_size",
        "_view",
        "_buf",
        "_cap",
        "_state",
        "_ticker",
        "_started",
        "_memory_limit",
    )

    def __init__(
        self,
        store: wasmtime.Store,
        exports: dict[str, object],
        memory: object,
        state: InstanceState,
        linked: object,
        ticker: EpochTicker | None = None,
        memory_limit: int | None = None,
    ):
        self._store = store
        #: Sets hard deadlines and makes `interrupt` work (its callback is the store's);
        #: None when the engine is compiled without epoch checks.
        self._ticker = ticker
        self._started = 0.0  # when the call with a deadline began
        #: InstanceLimits.memory_bytes, to say so when a guest traps at it.
        self._memory_limit = memory_limit
        # The exports are `wasmtime_extern_t` structs (`_capi.instance_export`); they
        # own the C structs whose addresses we pass below.
        self._funcs = exports
        self._memory_export = memory
        self._linked = linked  # the C side only holds the addresses of its callbacks
        self._host = state  # what this instance's host functions act on (`_callers`)
        self._memory = state.memory
        self._ctx = ctypes.c_void_p(_capi.address(store._context()))
        self._mem = ctypes.c_void_p(ctypes.addressof(memory.of.memory))
        self._handle_fn = _func_ref(exports, "okra_handle")
        self._buffer_fn = _func_ref(exports, "okra_buffer")
        self._version_fn = _func_ref(exports, "okra_abi_version")
        # Two 16-byte wasmtime_val_raw_t slots seen as uint64 words: slot i is word 2*i.
        self._words = (ctypes.c_uint64 * 4)()
        self._args = ctypes.c_void_p(ctypes.addressof(self._words))
        self._trap = ctypes.c_void_p()
        self._trap_slot = ctypes.c_void_p(ctypes.addressof(self._trap))
        self._base = -1
        self._size = -1
        self._view = _EMPTY
        self._buf = 0
        # -1 while unusable, so the hot path's "does it fit" test routes every request to
        # `_reserve`, which says why.
        self._cap = -1
        self._state = "starting"
        state.memory.bind(self._ctx, self._mem)

    # -- the request path -------------------------------------------------------------

    def handle(self, request: bytes, deadline: float | None = None) -> bytes:
        n = len(request)
        if n > self._cap:  # also every call once unusable (closed, trapped, interrupted)
            self._reserve(n)
        ctx = self._ctx
        if deadline is not None:
            ticker = self._ticker
            if ticker is not None:
                now = _monotonic()
                # What the callback compares with the time, and the store's deadline up
                # to the callback's next look (this thread runs the store: safe).
                self._host.deadline = deadline
                _set_epoch_deadline(ctx, ticker.ticks_to(now, deadline))
                self._started = now
        elif self._host.deadline is not None:
            self._host.deadline = None
        buf = self._buf
        self._view[buf : buf + n] = request
        words = self._words
        words[0] = buf
        words[2] = n
        err = _func_call(ctx, self._handle_fn, self._args, _SLOTS, self._trap_slot)
        if err is not None or self._trap.value:
            self._raise_failure("okra_handle", err)
        result = words[0]
        base = _memory_data(ctx, self._mem)
        size = _memory_data_size(ctx, self._mem)
        if base != self._base or size != self._size:
            self._remap(base, size)
        ptr = result >> 32
        end = ptr + (result & _U32)
        if end > size:
            self._state = "faulted"
            self._cap = -1
            raise GuestFault(
                f"okra_handle returned a response at {ptr}..{end}, outside the guest's "
                f"{size}-byte memory"
            )
        return self._view[ptr:end].tobytes()

    def abi_version(self) -> int:
        self._check_usable("okra_abi_version")
        self._call(self._version_fn, "okra_abi_version")
        value = self._words[0] & _U32
        return value - (1 << 32) if value >= 1 << 31 else value

    def interrupt(self) -> None:
        """Stop the running call (GuestInterrupted) and refuse every later one.

        Thread-safe: it only sets a flag, which the store's epoch-deadline callback
        looks at within `_epoch.CHECK_TICKS` ticks (~50 ms) of wasm execution; a call
        inside a host function stops once that returns to wasm. A call that completes
        first returns normally. Sticky: an instance interrupted between calls fails its
        next call with GuestInterrupted without entering the guest, so an interrupt
        racing with the start of a call cannot be lost. Without epoch checks
        (`epoch_interruption=false`) a running call cannot be stopped; later calls are
        still refused.
        """
        self._host.interrupted = True
        # Sends the next call to `_reserve`, which refuses it. `_reserve` checks the flag
        # again after setting `_cap`, so a call thread racing with this cannot undo it.
        self._cap = -1
        ticker = self._ticker
        if ticker is not None:
            ticker.ensure_running()  # the callback only runs as the epoch moves

    def close(self) -> None:
        if self._state == "closed":
            return
        self._state = "closed"
        self._cap = -1
        self._view = _EMPTY
        self._memory.unbind()
        _callers.unregister(self._ctx.value, self._host)
        self._store.close()
        self._funcs = {}
        self._memory_export = None
        self._linked = None

    def __del__(self):
        # An instance dropped without close(): its store goes with it, so the memory
        # handle its HostContext still holds must not point into it any more.
        try:
            self._memory.unbind()
            _callers.unregister(self._ctx.value, self._host)
        except Exception:
            pass

    # -- set-up and slow paths --------------------------------------------------------

    def start(self, initial_buffer: int, deadline: float | None = None) -> None:
        """Run `_initialize` if the guest has it, then ask for the first request buffer,
        both stopped at `deadline` (GuestTimeout)."""
        init = self._funcs.get("_initialize")
        if init is not None:
            self._call(_func_ref(self._funcs, "_initialize"), "_initialize", deadline)
        self._state = "ready"
        self._reserve(initial_buffer, deadline)

    def _reserve(self, size: int, deadline: float | None = None) -> None:
        """Make the request buffer hold `size` bytes (one `okra_buffer` call)."""
        self._check_usable("okra_handle")
        self._words[0] = size
        self._call(self._buffer_fn, "okra_buffer", deadline)
        ptr = self._words[0] & _U32
        self._remap(_memory_data(self._ctx, self._mem), _memory_data_size(self._ctx, self._mem))
        if ptr == 0:
            self._fault(
                f"okra_buffer({size}) returned 0: the guest could not allocate the request buffer"
            )
        if ptr + size > self._size:
            self._fault(
                f"okra_buffer({size}) returned a buffer at {ptr}..{ptr + size}, outside the "
                f"guest's {self._size}-byte memory"
            )
        self._buf = ptr
        self._cap = size
        if self._host.interrupted:  # `interrupt` ran meanwhile, on another thread
            self._cap = -1

    def _check_usable(self, what: str) -> None:
        state = self._state
        if state == "closed":
            raise GuestFault(f"cannot call {what}: the instance is closed")
        if self._host.interrupted:
            raise GuestInterrupted(
                f"cannot call {what}: the host interrupted the instance (Instance.interrupt); "
                "it must be discarded"
            )
        if state in ("trapped", "faulted"):
            raise GuestFault(
                f"cannot call {what}: the instance {state} earlier and must be discarded"
            )

    def _call(self, func: ctypes.c_void_p, what: str, deadline: float | None = None) -> None:
        self._host.deadline = None  # the last request's deadline does not apply here
        if deadline is not None and self._ticker is not None:
            now = _monotonic()
            self._host.deadline = deadline
            _set_epoch_deadline(self._ctx, self._ticker.ticks_to(now, deadline))
            self._started = now
        err = _func_call(self._ctx, func, self._args, _SLOTS, self._trap_slot)
        if err is not None or self._trap.value:
            self._raise_failure(what, err)

    def _remap(self, base: int | None, size: int) -> None:
        self._base = base
        self._size = size
        if not base or not size:
            self._view = _EMPTY
        else:
            self._view = memoryview((ctypes.c_ubyte * size).from_address(base)).cast("B")

    def _fault(self, message: str):
        self._state = "faulted"
        self._cap = -1
        raise GuestFault(message)

    def _raise_failure(self, what: str, err: int | None):
        """Raise GuestTrap for the trap or error the last call left (as its return value
        or in the trap slot); the instance is unusable from now on.

        GuestTimeout and GuestInterrupted when the epoch-deadline callback stopped the
        call (it says why in the instance state; its error is not a wasm trap)."""
        self._state = "trapped"
        self._cap = -1
        host = self._host
        stopped = host.stopped
        host.stopped = None
        trap_addr = self._trap.value
        self._trap.value = None
        # Both are owned by us from here: freed when collected.
        error = _capi.error_from_address(err) if err else None
        trap = _capi.trap_from_address(trap_addr) if trap_addr else None
        if stopped == TIMED_OUT:
            elapsed = _monotonic() - self._started
            raise GuestTimeout(
                f"{what}: deadline exceeded: the guest was stopped after {elapsed:.3f}s"
            )
        if stopped == INTERRUPTED:
            raise GuestInterrupted(
                f"{what}: the host interrupted the call (Instance.interrupt) and stopped the guest"
            )
        if trap is not None:
            message = one_line(trap.message)
        elif isinstance(error, wasmtime.ExitTrap):
            message = f"the guest exited with status {error.code} (proc_exit)"
        else:
            message = one_line(str(error))
        raise GuestTrap(f"{what}: {message}{self._memory_limit_note()}")

    def _memory_limit_note(self) -> str:
        """Why a guest may have trapped: its memory is within a page of its limit, so
        its last `memory.grow` was refused (as a guest's allocator aborting says)."""
        limit = self._memory_limit
        if limit is None:
            return ""
        if limit - _memory_data_size(self._ctx, self._mem) >= _PAGE:
            return ""
        return f" (the instance's memory is at its limit of {limit} bytes: limits.memory_bytes)"


def _func_ref(exports: dict[str, object], name: str) -> ctypes.c_void_p:
    return ctypes.c_void_p(ctypes.addressof(exports[name].of.func))
