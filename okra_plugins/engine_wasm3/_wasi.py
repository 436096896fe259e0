"""WASI preview1 for wasm3, which has none of its own: the same sandbox OKRA gives
guests on wasmtime.

No preopened directories, no environment, no arguments. fd 0 reads as empty, fds 1 and
2 go to the instance's stdio sink (the service's log); every other descriptor is EBADF,
so every path and socket function fails as it would with nothing opened. Clocks and
random bytes are real; `poll_oneoff` sleeps for clock subscriptions (Go's `time.Sleep`),
bounded by the running call's deadline. `proc_exit` ends the call as a trap.

Each function is `impl(state, *args) -> errno`; `state` is the calling instance's
`_instance.InstanceState`. Only the functions a module imports are linked.
"""

from __future__ import annotations

import logging
import os
import struct
import time

from okra_core import wasi
from okra_core.hostapi import HostError

log = logging.getLogger(__name__)

NAMESPACE = "wasi_snapshot_preview1"
SUCCESS = 0
EBADF = 8
EFAULT = 21
EINVAL = 28
EIO = 29
ENOSYS = 52
ENOTSUP = 58

_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_SUBSCRIPTION = struct.Struct("<QB7xIxxxxQQH6x")  # userdata, tag, clock id, timeout, precision, flags
_SUB_FD = struct.Struct("<QB7xI")  # userdata, tag, fd
_EVENT = struct.Struct("<QHB5xQH6x")  # userdata, error, type, nbytes, flags
_FDSTAT = struct.Struct("<BxHxxxxQQ")  # filetype, flags, rights base, rights inheriting
_CHARACTER_DEVICE = 2
_ALL_RIGHTS = (1 << 30) - 1
_CLOCKS = {
    0: time.time_ns,
    1: time.monotonic_ns,
    2: time.process_time_ns,
    3: time.thread_time_ns,
}
#: The most random bytes one random_get returns (a guest asking for more gets EINVAL).
MAX_RANDOM = 1 << 20
#: The most subscriptions one poll_oneoff may pass (a guest waits on a few).
MAX_SUBSCRIPTIONS = 256


class Exit(Exception):
    """proc_exit: the guest ends the call with a status."""

    def __init__(self, code: int):
        super().__init__(code)
        self.code = code


def _stdio(fd: int) -> bool:
    return 0 <= fd <= 2


def fd_write(state, fd, iovs, count, nwritten):
    if fd != 1 and fd != 2:
        return EBADF
    if count > wasi.MAX_IOVECS:
        return EINVAL
    memory = state.memory
    try:
        data = wasi.gather(memory, iovs, count)  # at most MAX_WRITE: a short write
        memory.write(nwritten, _U32.pack(len(data)))
    except HostError:
        return EFAULT
    if data:
        try:
            state.stdio(fd, data)
        except Exception:
            log.exception("the stdio sink failed on %d bytes for fd %d", len(data), fd)
            return EIO
    return SUCCESS


def fd_read(state, fd, iovs, count, nread):
    if fd != 0:
        return EBADF
    try:
        state.memory.read(iovs, 8 * count)
        state.memory.write(nread, _U32.pack(0))  # stdin is empty
    except HostError:
        return EFAULT
    return SUCCESS


def fd_fdstat_get(state, fd, out):
    if not _stdio(fd):
        return EBADF
    try:
        state.memory.write(out, _FDSTAT.pack(_CHARACTER_DEVICE, 0, _ALL_RIGHTS, _ALL_RIGHTS))
    except HostError:
        return EFAULT
    return SUCCESS


def fd_fdstat_set_flags(state, fd, flags):
    return SUCCESS if _stdio(fd) else EBADF


def fd_close(state, fd):
    return SUCCESS if _stdio(fd) else EBADF


def _sizes(state, count_ptr, size_ptr):
    try:
        state.memory.write(count_ptr, _U32.pack(0))
        state.memory.write(size_ptr, _U32.pack(0))
    except HostError:
        return EFAULT
    return SUCCESS


def _nothing(state, *pointers):
    return SUCCESS


def clock_time_get(state, clock, precision, out):
    now = _CLOCKS.get(clock)
    if now is None:
        return EINVAL
    try:
        state.memory.write(out, _U64.pack(now()))
    except HostError:
        return EFAULT
    return SUCCESS


def clock_res_get(state, clock, out):
    if clock not in _CLOCKS:
        return EINVAL
    try:
        state.memory.write(out, _U64.pack(1000))
    except HostError:
        return EFAULT
    return SUCCESS


def random_get(state, buf, length):
    if length > MAX_RANDOM:
        return EINVAL
    try:
        state.memory.write(buf, os.urandom(length))
    except HostError:
        return EFAULT
    return SUCCESS


def poll_oneoff(state, subs_ptr, events_ptr, count, nevents_ptr):
    """Clock subscriptions sleep (the earliest one wins); stdio fds are always ready;
    any other fd is an EBADF event."""
    if count == 0 or count > MAX_SUBSCRIPTIONS:
        return EINVAL
    memory = state.memory
    try:
        raw = memory.read(subs_ptr, 48 * count)
    except HostError:
        return EFAULT
    ready = []
    sleep = None
    now = time.monotonic_ns()
    for i in range(count):
        chunk = raw[48 * i : 48 * (i + 1)]
        userdata, tag = chunk[0:8], chunk[8]
        if tag == 0:
            _, _, clock, timeout, _, flags = _SUBSCRIPTION.unpack(chunk)
            if flags & 1:  # absolute time on that clock
                source = _CLOCKS.get(clock, time.monotonic_ns)
                timeout = max(0, timeout - source())
            if sleep is None or timeout < sleep[0]:
                sleep = (timeout, userdata)
        elif tag in (1, 2):
            fd = _SUB_FD.unpack(chunk[:20])[2]
            error = SUCCESS if _stdio(fd) else EBADF
            ready.append(_event(userdata, error, tag))
        else:
            return EINVAL
    if not ready and sleep is not None:
        seconds = sleep[0] / 1e9
        deadline = state.deadline
        if deadline is not None:
            seconds = min(seconds, max(0.0, deadline - now / 1e9))
        if seconds > 0:
            time.sleep(seconds)
        ready.append(_event(sleep[1], SUCCESS, 0))
    try:
        memory.write(events_ptr, b"".join(ready))
        memory.write(nevents_ptr, _U32.pack(len(ready)))
    except HostError:
        return EFAULT
    return SUCCESS


def _event(userdata: bytes, error: int, kind: int) -> bytes:
    return userdata + _EVENT.pack(0, error, kind, 0, 0)[8:]


def proc_exit(state, code):
    raise Exit(code)


def sched_yield(state):
    return SUCCESS


def _badf(state, *args):
    return EBADF


def _nosys(state, *args):
    return ENOSYS


#: name -> (wasm3 signature, implementation). Every preview1 function, so that a module
#: links here wherever it links on wasmtime.
FUNCTIONS = {
    "args_get": ("i(ii)", _nothing),
    "args_sizes_get": ("i(ii)", _sizes),
    "environ_get": ("i(ii)", _nothing),
    "environ_sizes_get": ("i(ii)", _sizes),
    "clock_res_get": ("i(ii)", clock_res_get),
    "clock_time_get": ("i(iIi)", clock_time_get),
    "fd_advise": ("i(iIIi)", _badf),
    "fd_allocate": ("i(iII)", _badf),
    "fd_close": ("i(i)", fd_close),
    "fd_datasync": ("i(i)", _badf),
    "fd_fdstat_get": ("i(ii)", fd_fdstat_get),
    "fd_fdstat_set_flags": ("i(ii)", fd_fdstat_set_flags),
    "fd_fdstat_set_rights": ("i(iII)", _badf),
    "fd_filestat_get": ("i(ii)", _badf),
    "fd_filestat_set_size": ("i(iI)", _badf),
    "fd_filestat_set_times": ("i(iIIi)", _badf),
    "fd_pread": ("i(iiiIi)", _badf),
    "fd_prestat_get": ("i(ii)", _badf),
    "fd_prestat_dir_name": ("i(iii)", _badf),
    "fd_pwrite": ("i(iiiIi)", _badf),
    "fd_read": ("i(iiii)", fd_read),
    "fd_readdir": ("i(iiiIi)", _badf),
    "fd_renumber": ("i(ii)", _badf),
    "fd_seek": ("i(iIii)", _badf),
    "fd_sync": ("i(i)", _badf),
    "fd_tell": ("i(ii)", _badf),
    "fd_write": ("i(iiii)", fd_write),
    "path_create_directory": ("i(iii)", _badf),
    "path_filestat_get": ("i(iiiii)", _badf),
    "path_filestat_set_times": ("i(iiiiIIi)", _badf),
    "path_link": ("i(iiiiiii)", _badf),
    "path_open": ("i(iiiiiIIii)", _badf),
    "path_readlink": ("i(iiiiii)", _badf),
    "path_remove_directory": ("i(iii)", _badf),
    "path_rename": ("i(iiiiii)", _badf),
    "path_symlink": ("i(iiiii)", _badf),
    "path_unlink_file": ("i(iii)", _badf),
    "poll_oneoff": ("i(iiii)", poll_oneoff),
    "proc_exit": ("v(i)", proc_exit),
    "proc_raise": ("i(i)", _nosys),
    "random_get": ("i(ii)", random_get),
    "sched_yield": ("i()", sched_yield),
    "sock_accept": ("i(iii)", _badf),
    "sock_recv": ("i(iiiiii)", _badf),
    "sock_send": ("i(iiiii)", _badf),
    "sock_shutdown": ("i(ii)", _badf),
}
