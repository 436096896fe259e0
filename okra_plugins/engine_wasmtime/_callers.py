"""Which instance a host callback is running for.

A module's linker (WASI plus its host functions) is built once and shared by all its
instances with the same host functions: building one costs more than the rest of a
small instance's start. So a callback cannot close over its instance's HostContext,
memory and stdio; it finds them from the store it was called in. The C API gives the
caller's store context (one C call, ~0.15 us), and its address keys `STATES`, filled
when the engine creates a store and emptied when the instance goes.
"""

from __future__ import annotations

import ctypes

from okra_core.engine import StdioSink
from okra_core.hostapi import HostContext
from okra_plugins.engine_wasmtime import _capi
from okra_plugins.engine_wasmtime._memory import WasmtimeMemory

#: (wasmtime_caller_t*) -> wasmtime_context_t*, both as ints: the same address as the
#: store's own context (`Store._context()`).
caller_context = _capi._lean("wasmtime_caller_context")
caller_context.argtypes = [ctypes.c_void_p]


class InstanceState:
    """What the host functions of one instance act on, and what the epoch-deadline
    callback (`_epoch`) looks at while the instance runs a call."""

    __slots__ = ("context", "memory", "stdio", "deadline", "interrupted", "stopped")

    def __init__(self, context: HostContext, memory: WasmtimeMemory, stdio: StdioSink):
        self.context = context
        self.memory = memory
        self.stdio = stdio
        #: The running call's deadline (`time.monotonic()`), or None.
        self.deadline: float | None = None
        #: Set (for good) by `WasmtimeInstance.interrupt`, from any thread.
        self.interrupted = False
        #: Why the callback stopped the call (`_epoch.TIMED_OUT` / `_epoch.INTERRUPTED`).
        self.stopped: str | None = None


#: Store context address -> the state of the instance living in that store.
STATES: dict[int, InstanceState] = {}


def register(store_context: int, state: InstanceState) -> None:
    """Before anything runs in the store (instantiation may already call the host)."""
    STATES[store_context] = state


def unregister(store_context: int, state: InstanceState) -> None:
    """Forget `state`, unless the address already belongs to a newer store (a store
    dropped without close() may be freed before its instance's finaliser runs)."""
    if STATES.get(store_context) is state:
        del STATES[store_context]
