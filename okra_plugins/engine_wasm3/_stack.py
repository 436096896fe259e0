"""Whether the calling thread's native stack can hold a wasm3 call.

wasm3 runs a wasm call as a native call, so deep wasm recursion uses native stack in
proportion to the wasm3 value stack it fills (measured: up to ~32 native bytes per
byte of value stack, for a function that only calls itself). wasm3 traps when its value
stack is full; if the native stack runs out first, the process dies (SIGSEGV). So a call
runs only on a thread whose native stack is at least `needed(stack_bytes)`: checked once
per thread (glibc's pthread_getattr_np), then an attribute read per call.
"""

from __future__ import annotations

import ctypes
import threading

#: Native stack bytes per byte of wasm3 value stack, at worst (measured ~16-24, rounded up).
NATIVE_PER_STACK_BYTE = 32
#: Native stack the Python frames below the call may already use.
MARGIN = 512 * 1024

#: Each thread's stack size, as `current()` measured it (`size`: 0 until then, None if
#: unknown); read directly on the request path.
measured = threading.local()


def needed(stack_bytes: int) -> int:
    return stack_bytes * NATIVE_PER_STACK_BYTE + MARGIN


def current() -> int | None:
    """The calling thread's native stack size in bytes (None if it cannot be known)."""
    size = getattr(measured, "size", 0)
    if size == 0:
        size = measured.size = _measure()
    return size


def _libc():
    """The C library's pthread functions, from the process's own symbols (None if they
    are not glibc's)."""
    try:
        libc = ctypes.CDLL(None)
        libc.pthread_getattr_np.argtypes = [ctypes.c_ulong, ctypes.c_void_p]
        libc.pthread_self.restype = ctypes.c_ulong
        return libc
    except (OSError, AttributeError):
        return None


_LIBC = _libc()


def _measure() -> int | None:
    libc = _LIBC
    if libc is None:
        return None  # not glibc: cannot tell
    attr = ctypes.create_string_buffer(256)  # pthread_attr_t is 56 bytes on x86-64
    if libc.pthread_getattr_np(libc.pthread_self(), attr) != 0:
        return None
    try:
        address, size = ctypes.c_void_p(), ctypes.c_size_t()
        if libc.pthread_attr_getstack(attr, ctypes.byref(address), ctypes.byref(size)) != 0:
            return None
        return size.value
    finally:
        libc.pthread_attr_destroy(attr)
