"""Bounds-checked access to one wasm3 instance's linear memory, for host functions."""

from __future__ import annotations

import ctypes

from okra_core.hostapi import HostError
from okra_core.status import StatusCode
from okra_plugins.engine_wasm3 import _capi

_get_memory = _capi.get_memory
_string_at = ctypes.string_at
_memmove = ctypes.memmove


class Wasm3Memory:
    """The `GuestMemory` a host function sees (`HostContext.memory`).

    Base and size are asked for on every access: the guest may have grown (and so
    moved) its memory since the last one.
    """

    __slots__ = ("_runtime", "_size")

    def __init__(self, runtime: ctypes.c_void_p | None = None):
        self._runtime = runtime
        self._size = ctypes.c_uint32()

    def unbind(self) -> None:
        self._runtime = None

    def span(self, ptr: int, length: int) -> int:
        """The host address of [ptr, ptr+length), or HostError if it is not all memory."""
        runtime = self._runtime
        if runtime is None:
            raise HostError(
                StatusCode.FAILED_PRECONDITION, "the instance's memory is not available"
            )
        base = _get_memory(runtime, ctypes.byref(self._size), 0)
        size = self._size.value if base else 0
        if ptr < 0 or length < 0 or ptr + length > size:
            raise HostError(
                StatusCode.INVALID_ARGUMENT,
                f"memory range {ptr}..{ptr + length} is outside the guest's {size}-byte memory",
            )
        return base + ptr

    def read(self, ptr: int, length: int) -> bytes:
        addr = self.span(ptr, length)
        return _string_at(addr, length) if length else b""

    def write(self, ptr: int, data: bytes) -> None:
        length = len(data)
        addr = self.span(ptr, length)
        if length:
            _memmove(addr, bytes(data), length)

    def size(self) -> int:
        """The memory's current size in bytes."""
        runtime = self._runtime
        if runtime is None:
            return 0
        base = _get_memory(runtime, ctypes.byref(self._size), 0)
        return self._size.value if base else 0
