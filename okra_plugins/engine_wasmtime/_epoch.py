"""The epoch ticker and the epoch-deadline callback: what stops a running guest at its
call's deadline, or when the host interrupts it from another thread.

Modules are compiled with epoch checks (loop back-edges and function entries compare
the engine's epoch with the store's deadline). A daemon thread advances the engine's
epoch every `period` seconds. Every store gets `EpochTicker.callback` as its
epoch-deadline callback (`watch`), and its deadline is never more than `CHECK_TICKS`
ahead, so a guest that runs that long is looked at by the callback, on its own thread:

- its instance was interrupted (`InstanceState.interrupted`): stop it;
- its call's deadline (`InstanceState.deadline`) has passed: stop it;
- otherwise: carry on, with the next look at `CHECK_TICKS` ahead or just after the
  deadline, whichever is first.

The store's deadline is only ever written by the thread running the store (the call in
`WasmtimeInstance.handle`, the callback itself): wasmtime does not allow writing it from
another thread while the store runs. `interrupt` sets a flag instead, and the callback
sees it within `CHECK_TICKS` ticks (50 ms). A call shorter than that costs nothing
extra; a longer one pays one Python callback (a few us) every 50 ms.

A stopped call ends with the callback's error (not a wasm trap): the callback records
why in `InstanceState.stopped` (`TIMED_OUT` / `INTERRUPTED`) for the instance to report.
"""

from __future__ import annotations

import ctypes
import math
import threading
import time
import weakref

import wasmtime

from okra_plugins.engine_wasmtime import _callers, _capi

#: The most ticks a running guest goes between two looks by the callback (10 ms ticks:
#: an interrupt takes effect within ~50 ms).
CHECK_TICKS = 5
#: `stopped` reasons the callback leaves in an InstanceState.
TIMED_OUT = "timed out"
INTERRUPTED = "interrupted"

#: wasmtime_store_epoch_deadline_callback's callback: (context*, data, uint64_t* delta,
#: wasmtime_update_deadline_kind_t* kind) -> wasmtime_error_t* (NULL: carry on).
DeadlineCallback = ctypes.CFUNCTYPE(
    ctypes.c_size_t,
    ctypes.c_void_p,
    ctypes.c_void_p,
    ctypes.POINTER(ctypes.c_uint64),
    ctypes.POINTER(ctypes.c_uint8),
)
#: WASMTIME_UPDATE_DEADLINE_CONTINUE: resume with the new delta (no async yield).
_CONTINUE = 0

#: (wasmtime_store_t*, callback, data, finalizer) -> void
_set_callback = _capi._lean("wasmtime_store_epoch_deadline_callback", None)
_set_callback.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
#: (const char* message) -> wasmtime_error_t*, owned by whoever it is returned to.
_error_new = _capi._lean("wasmtime_error_new")
_error_new.argtypes = [ctypes.c_char_p]

_set_epoch_deadline = _capi.set_epoch_deadline


class EpochTicker:
    def __init__(self, engine: wasmtime.Engine, period: float = 0.01):
        self.period = period
        self._engine = weakref.ref(engine)
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        #: The stores' epoch-deadline callback. Kept here, and every instance keeps its
        #: engine's ticker, so it outlives every store it is set on.
        self.callback = DeadlineCallback(self._make_callback())
        self._callback_address = ctypes.cast(self.callback, ctypes.c_void_p)

    def watch(self, store: wasmtime.Store, store_context: int) -> None:
        """Give a new store (and its context's address) the callback and a first
        deadline `CHECK_TICKS` ahead (~1.5 us)."""
        _set_callback(store.ptr(), self._callback_address, None, None)
        _set_epoch_deadline(store_context, CHECK_TICKS)

    def ticks_to(self, now: float, deadline: float) -> int:
        """The store deadline for a call starting at `now` (`time.monotonic()`) with
        `deadline`: just after it, but no more than CHECK_TICKS ahead. Starts the
        ticker on first use."""
        if self._thread is None:
            self._start()
        ticks = math.ceil((deadline - now) / self.period) + 1
        if ticks >= CHECK_TICKS:
            return CHECK_TICKS
        return ticks if ticks > 1 else 1

    def ensure_running(self) -> None:
        if self._thread is None:
            self._start()

    def _start(self) -> None:
        with self._lock:
            if self._thread is None:
                thread = threading.Thread(target=self._run, name="okra-epoch", daemon=True)
                thread.start()
                self._thread = thread

    def _run(self) -> None:
        period = self.period
        while True:
            time.sleep(period)
            engine = self._engine()
            if engine is None:
                return  # the engine is gone
            engine.increment_epoch()
            del engine

    def _make_callback(self):
        # No reference to the ticker: the callback must not keep it (and through it the
        # engine's weak reference) alive by a cycle.
        period = self.period
        states = _callers.STATES
        monotonic = time.monotonic
        ceil = math.ceil

        def on_deadline(context, data, delta, kind):
            # Runs on the guest's thread, inside the call. Must return 0 or an error
            # made by the C API, whatever happens (anything else crashes the process).
            try:
                state = states[context]
                if state.interrupted:
                    state.stopped = INTERRUPTED
                    return _error_new(b"okra: the host interrupted the call") or 0
                ticks = CHECK_TICKS
                deadline = state.deadline
                if deadline is not None:
                    remaining = deadline - monotonic()
                    if remaining <= 0:
                        state.stopped = TIMED_OUT
                        return _error_new(b"okra: deadline exceeded") or 0
                    ticks = min(CHECK_TICKS, max(1, ceil(remaining / period)))
                delta[0] = ticks
                kind[0] = _CONTINUE
                return 0
            except BaseException as exc:
                return _failed(exc, delta, kind)

        return on_deadline


def _failed(exc: BaseException, delta, kind) -> int:
    """The callback itself failed (a bug): stop the call, saying why."""
    try:
        message = f"okra: the epoch-deadline callback failed: {exc!r}"
        return _error_new(message.encode("utf-8", "replace")) or 0
    except BaseException:
        try:  # cannot even make an error: carry on, and look again later
            delta[0] = CHECK_TICKS
            kind[0] = _CONTINUE
        except BaseException:
            pass
        return 0
