"""Bounds-checked access to one instance's linear memory, for host functions."""

from __future__ import annotations

import ctypes

from okra_core.hostapi import HostError
from okra_core.status import StatusCode
from okra_plugins.engine_wasmtime import _capi

_memory_data = _capi.memory_data
_memory_data_size = _capi.memory_data_size
_string_at = ctypes.string_at
_memmove = ctypes.memmove


class WasmtimeMemory:
    """The `GuestMemory` a host function sees (`HostContext.memory`).

    Base and size are read on every access: the guest may have grown (and so moved)
    its memory since the last one.
    """

    __slots__ = ("_ctx", "_mem")

    def __init__(self, ctx: ctypes.c_void_p | None = None, mem: ctypes.c_void_p | None = None):
        self._ctx = ctx
        self._mem = mem

    def bind(self, ctx: ctypes.c_void_p, mem: ctypes.c_void_p) -> None:
        self._ctx = ctx
        self._mem = mem

    def unbind(self) -> None:
        self._ctx = None
        self._mem = None

    def _span(self, ptr: int, length: int) -> int:
        """The host address of [ptr, ptr+length), or HostError if it is not all memory."""
        ctx = self._ctx
        if ctx is None:
            raise HostError(
                StatusCode.FAILED_PRECONDITION, "the instance's memory is not available"
            )
        size = _memory_data_size(ctx, self._mem)
        if ptr < 0 or length < 0 or ptr + length > size:
            raise HostError(
                StatusCode.INVALID_ARGUMENT,
                f"memory range {ptr}..{ptr + length} is outside the guest's {size}-byte memory",
            )
        return (_memory_data(ctx, self._mem) or 0) + ptr

    def read(self, ptr: int, length: int) -> bytes:
        addr = self._span(ptr, length)
        return _string_at(addr, length) if length else b""

    def write(self, ptr: int, data: bytes) -> None:
        length = len(data)
        addr = self._span(ptr, length)
        if length:
            _memmove(addr, bytes(data), length)

    def size(self) -> int:
        """The memory's current size in bytes."""
        ctx = self._ctx
        return 0 if ctx is None else _memory_data_size(ctx, self._mem)
