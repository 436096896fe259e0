"""What OKRA's WASI sandbox shares across engines: gathering `fd_write`'s buffers with
bounds, so that a guest cannot make the host copy more than it may write.

A guest's iovecs may all point at the same large region: joining them first and
cutting afterwards would let 1 MiB of guest memory cost the host gigabytes. Here the
table's length is bounded and copying stops at the limit: a short write, which every
WASI guest handles by writing the rest again.
"""

from __future__ import annotations

import struct

from okra_core.hostapi import GuestMemory

#: The most iovecs one fd_write may pass (Linux's IOV_MAX); more is EINVAL.
MAX_IOVECS = 1024
#: The most bytes one fd_write passes on to the log.
MAX_WRITE = 1 << 20
_IOVEC = struct.Struct("<II")


def gather(memory: GuestMemory, iovs: int, count: int, limit: int = MAX_WRITE) -> bytes:
    """Up to `limit` bytes of the `count` (<= MAX_IOVECS) buffers listed at `iovs`.

    Raises HostError if the table, or a part of a buffer that is copied, lies outside
    memory (EFAULT for the guest)."""
    if count > MAX_IOVECS:
        raise ValueError(f"{count} iovecs, more than {MAX_IOVECS}")
    table = memory.read(iovs, 8 * count)
    chunks = []
    left = limit
    for ptr, length in _IOVEC.iter_unpack(table):
        if left <= 0:
            break
        take = min(length, left)
        chunks.append(memory.read(ptr, take))
        left -= take
    return b"".join(chunks)
