"""WASI for OKRA guests: wasmtime's own WASI, closed down, with fd_write redirected.

The store gets a WASI context with no preopened directories, no environment and no
arguments. `fd_write` is shadowed so that stdout and stderr reach the service's log
through the instance's stdio sink, and every other descriptor is EBADF.
"""

from __future__ import annotations

import logging
import struct

from okra_core import wasi
from okra_core.hostapi import HostError
from okra_plugins.engine_wasmtime import _callers, _capi
from okra_plugins.engine_wasmtime._hostfuncs import failure_trap

log = logging.getLogger(__name__)

NAMESPACE = "wasi_snapshot_preview1"
ERRNO_SUCCESS = 0
ERRNO_BADF = 8
ERRNO_FAULT = 21
ERRNO_INVAL = 28
ERRNO_IO = 29
_U32 = 0xFFFFFFFF
_SIZE = struct.Struct("<I")


def fd_write_callback() -> _capi.HostCallback:
    """`fd_write(fd, iovs, iovs_len, nwritten) -> errno`, gathering the iovecs into one
    chunk for the calling instance's `stdio(fd, data)`."""
    states = _callers.STATES
    context_of = _callers.caller_context

    def fd_write(env, caller, p, n):
        try:
            fd = p[0] & _U32
            if fd != 1 and fd != 2:
                p[0] = ERRNO_BADF
                return 0
            state = states[context_of(caller)]
            memory, stdio = state.memory, state.stdio
            iovs, count, nwritten = p[2] & _U32, p[4] & _U32, p[6] & _U32
            if count > wasi.MAX_IOVECS:
                p[0] = ERRNO_INVAL
                return 0
            try:
                data = wasi.gather(memory, iovs, count)  # at most MAX_WRITE: a short write
                memory.write(nwritten, _SIZE.pack(len(data)))
            except HostError:
                p[0] = ERRNO_FAULT
                return 0
            if data:
                try:
                    stdio(fd, data)
                except Exception:
                    log.exception("the stdio sink failed on %d bytes for fd %d", len(data), fd)
                    p[0] = ERRNO_IO
                    return 0
            p[0] = ERRNO_SUCCESS
            return 0
        except BaseException as exc:
            return failure_trap("WASI fd_write", exc)

    return _capi.HostCallback(fd_write)
