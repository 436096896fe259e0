"""wasmtime's pooling allocator: instance slots reserved once and reused, for fast starts.

With the default allocator every instance maps fresh linear memory, and a guest that
touches a few megabytes as it starts (the Go runtime: ~150 page faults) pays for each
page again. The pooling allocator reserves `slots` instances' worth of address space
when the engine is made and, when an instance goes, keeps the first `keep_resident`
bytes of its memory mapped (zeroed or reset to the module's image) for the next one;
a Go guest's start drops from ~530 to ~260 us.

The price, why it is off unless asked for: each slot reserves the full 4 GiB (+ guard)
of a wasm32 memory, so 1,000 slots take ~4 TiB of the process's address space; more
than `slots` live instances at once cannot be created; a module may have at most one
memory and one table of up to `TABLE_ELEMENTS` elements; and each slot that served an
instance keeps up to `keep_resident` bytes resident while unused. Compiled code is the
same either way, so the setting is not part of the module cache key.
"""

from __future__ import annotations

import wasmtime
from wasmtime import _ffi as ffi

#: Elements per table slot (a Go greeter has ~6,000; 8 bytes each, reserved per slot).
TABLE_ELEMENTS = 100_000


def enable(config: wasmtime.Config, slots: int, keep_resident: int) -> None:
    """Switch `config` to the pooling allocator with `slots` instance slots."""
    pool = ffi.wasmtime_pooling_allocation_config_new()
    try:
        ffi.wasmtime_pooling_allocation_config_total_core_instances_set(pool, slots)
        ffi.wasmtime_pooling_allocation_config_total_memories_set(pool, slots)
        ffi.wasmtime_pooling_allocation_config_total_tables_set(pool, slots)
        ffi.wasmtime_pooling_allocation_config_total_stacks_set(pool, slots)
        ffi.wasmtime_pooling_allocation_config_table_elements_set(pool, TABLE_ELEMENTS)
        ffi.wasmtime_pooling_allocation_config_linear_memory_keep_resident_set(
            pool, keep_resident
        )
        ffi.wasmtime_pooling_allocation_strategy_set(config.ptr(), pool)
    finally:
        ffi.wasmtime_pooling_allocation_config_delete(pool)
