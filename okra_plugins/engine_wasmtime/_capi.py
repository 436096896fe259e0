"""Raw handles on the wasmtime C API that wasmtime-py loads, for the request path.

wasmtime-py's convenience layer (`Func.__call__`, `Memory.read`) costs tens of
microseconds per call; the C functions underneath cost well under one. This module opens
its own handle on the same shared library, so it can declare lean prototypes (no
argument conversion, integer results) without touching the function objects wasmtime-py
uses itself.

Functions without `argtypes` take ctypes objects for every pointer argument: a bare
Python int is passed as a C int and would be truncated.
"""

from __future__ import annotations

import ctypes

import wasmtime
from wasmtime import _bindings

_lib = ctypes.CDLL(_bindings.dll._name)


def _lean(name: str, restype=ctypes.c_void_p):
    fn = getattr(_lib, name)
    fn.restype = restype
    return fn


#: (context*, func*, wasmtime_val_raw_t* args_and_results, size_t n, wasm_trap_t** trap)
#: -> wasmtime_error_t* (None on success)
func_call_unchecked = _lean("wasmtime_func_call_unchecked")
#: (context*, memory*) -> uint8_t* base
memory_data = _lean("wasmtime_memory_data")
#: (context*, memory*) -> size_t bytes
memory_data_size = _lean("wasmtime_memory_data_size", ctypes.c_size_t)

#: (context*, wasmtime_instance_t*, name, name length, wasmtime_extern_t* out) -> found
_instance_export_get = _lean("wasmtime_instance_export_get", ctypes.c_bool)
_instance_export_get.argtypes = [
    ctypes.c_void_p,
    ctypes.c_void_p,
    ctypes.c_char_p,
    ctypes.c_size_t,
    ctypes.c_void_p,
]
#: `wasmtime_extern_t.kind` of a function and of a memory.
EXTERN_FUNC = 0
EXTERN_MEMORY = 3

#: (context*, uint64 ticks beyond the current epoch) -> void
set_epoch_deadline = _lean("wasmtime_context_set_epoch_deadline", None)
set_epoch_deadline.argtypes = [ctypes.c_void_p, ctypes.c_uint64]

#: The raw host-function callback: (env, caller*, args_and_results*, n) -> wasm_trap_t*.
#: Arguments and results share one array of 16-byte `wasmtime_val_raw_t` slots, seen
#: here as int64 words: slot i is word 2*i.
HostCallback = ctypes.CFUNCTYPE(
    ctypes.c_size_t,
    ctypes.c_void_p,
    ctypes.c_void_p,
    ctypes.POINTER(ctypes.c_int64),
    ctypes.c_size_t,
)
#: The same callback seeing the array as uint32 words, for functions whose arguments and
#: result are all i32: slot i's value is word 4*i, so `p[0:4*n:4]` reads every argument
#: in one step (~0.1 us, against ~0.3 us word by word).
HostCallbackI32 = ctypes.CFUNCTYPE(
    ctypes.c_size_t,
    ctypes.c_void_p,
    ctypes.c_void_p,
    ctypes.POINTER(ctypes.c_uint32),
    ctypes.c_size_t,
)

_define_func_unchecked = ctypes.CFUNCTYPE(
    ctypes.c_void_p,  # wasmtime_error_t*
    ctypes.c_void_p,  # linker
    ctypes.c_char_p,
    ctypes.c_size_t,  # module name
    ctypes.c_char_p,
    ctypes.c_size_t,  # field name
    ctypes.c_void_p,  # wasm_functype_t*
    ctypes.c_void_p,  # the callback: a HostCallback or HostCallbackI32
    ctypes.c_void_p,  # env
    ctypes.c_void_p,  # finalizer
)(ctypes.cast(_lib.wasmtime_linker_define_func_unchecked, ctypes.c_void_p).value)

_trap_new = _lean("wasmtime_trap_new")
_trap_new.argtypes = [ctypes.c_char_p, ctypes.c_size_t]


def address(obj) -> int:
    """The address of a ctypes pointer or structure, as an int."""
    if isinstance(obj, ctypes._Pointer):
        return ctypes.cast(obj, ctypes.c_void_p).value or 0
    return ctypes.addressof(obj)


def define_host_func(
    linker: wasmtime.Linker, module: str, name: str, functype: wasmtime.FuncType, callback
) -> None:
    """Define `module.name` in `linker` as a raw unchecked callback (a HostCallback or
    HostCallbackI32).

    The caller keeps `callback` (a HostCallback) alive as long as any instance made
    through the linker lives: the C side only holds its address.
    """
    module_b = module.encode()
    name_b = name.encode()
    err = _define_func_unchecked(
        address(linker.ptr()),
        module_b,
        len(module_b),
        name_b,
        len(name_b),
        address(functype.ptr()),
        ctypes.cast(callback, ctypes.c_void_p),
        None,
        None,
    )
    if err:
        raise error_from_address(err)


def new_trap(message: str) -> int:
    """A C-API trap with `message`, as the address a raw callback returns; the engine
    takes ownership of it."""
    data = message.encode("utf-8", "replace")
    return _trap_new(data, len(data)) or 0


def trap_from_address(addr: int) -> wasmtime.Trap:
    """Take ownership of a `wasm_trap_t*` returned by a call."""
    return wasmtime.Trap._from_ptr(ctypes.cast(addr, ctypes.POINTER(_bindings.wasm_trap_t)))


def error_from_address(addr: int) -> wasmtime.WasmtimeError:
    """Take ownership of a `wasmtime_error_t*` (an ExitTrap if it is a WASI exit)."""
    return wasmtime.WasmtimeError._from_ptr(
        ctypes.cast(addr, ctypes.POINTER(_bindings.wasmtime_error_t))
    )


def instance_export(store_context: int, instance: wasmtime.Instance, name: str, kind: int):
    """The export `name` of `instance` as a `wasmtime_extern_t`, or None if there is
    none of that `kind`. The request path takes the addresses of its `of.func` /
    `of.memory`, so the struct must live as long as they are used. ~1.5 us, against ~5 us
    through wasmtime-py's Func and Memory wrappers."""
    item = _bindings.wasmtime_extern_t()
    encoded = name.encode()
    found = _instance_export_get(
        store_context,
        ctypes.addressof(instance._instance),
        encoded,
        len(encoded),
        ctypes.addressof(item),
    )
    return item if found and item.kind == kind else None
