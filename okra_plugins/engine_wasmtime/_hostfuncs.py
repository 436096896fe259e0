"""Host functions as raw wasmtime callbacks.

Each function is registered with `wasmtime_linker_define_func_unchecked`: the callback
gets the argument array directly (~1.7 us a call, against ~13 us through wasmtime-py's
`define_func`). The callback must return 0 or a trap made by the C API; anything else
(a Python None, an exception escaping) would crash the process, so every path is
guarded.

Argument convention: i32 arguments reach the host function as unsigned 32-bit ints
(every OKRA host API passes pointers, lengths and small enums), i64 as signed ints,
f32/f64 as floats.
"""

from __future__ import annotations

import logging
import struct

import wasmtime

from okra_core.hostapi import HostFunction, call_host_function
from okra_plugins.engine_wasmtime import _callers, _capi

log = logging.getLogger(__name__)

_U32 = 0xFFFFFFFF
_VALTYPES = {
    "i32": wasmtime.ValType.i32,
    "i64": wasmtime.ValType.i64,
    "f32": wasmtime.ValType.f32,
    "f64": wasmtime.ValType.f64,
    "funcref": wasmtime.ValType.funcref,
    "externref": wasmtime.ValType.externref,
}


def functype(params: tuple[str, ...], results: tuple[str, ...]) -> wasmtime.FuncType:
    """The FuncType for a signature. Building one costs ~35 us, so engines cache them
    (`WasmtimeEngine.functype`); a FuncType is tied to the first engine it is used with.
    """
    try:
        return wasmtime.FuncType(
            [_VALTYPES[t]() for t in params], [_VALTYPES[t]() for t in results]
        )
    except KeyError as exc:
        raise ValueError(f"unsupported value type {exc.args[0]!r} in a host function") from None


def _reader(valtype: str, word: int):
    if valtype == "i32":
        return lambda p: p[word] & _U32
    if valtype == "i64":
        return lambda p: p[word]
    if valtype == "f32":
        return lambda p: struct.unpack("<f", struct.pack("<I", p[word] & _U32))[0]
    if valtype == "f64":
        return lambda p: struct.unpack("<d", struct.pack("<q", p[word]))[0]
    raise ValueError(f"host functions cannot take {valtype} parameters")


def _writer(valtype: str):
    if valtype in ("i32", "i64"):

        def write(p, value):
            p[0] = value

    elif valtype == "f32":

        def write(p, value):
            p[0] = struct.unpack("<I", struct.pack("<f", value))[0]

    elif valtype == "f64":

        def write(p, value):
            p[0] = struct.unpack("<q", struct.pack("<d", value))[0]

    else:
        raise ValueError(f"host functions cannot return {valtype}")
    return write


def failure_trap(what: str, exc: BaseException) -> int:
    """Log an exception that escaped a host callback and turn it into a trap."""
    try:
        log.error("%s failed", what, exc_info=exc)
        return _capi.new_trap(f"{what} failed: {exc!r}")
    except BaseException:  # never let anything escape into wasmtime
        return _capi.new_trap("host function failed")


def host_callback(fn: HostFunction):
    """The raw callback running `fn` for whichever instance calls it: the caller's store
    says which (`_callers`), so one callback serves every instance of a linker."""
    if len(fn.results) > 1:
        raise ValueError(f"host function {fn.qualified_name} returns more than one value")
    name = f"host function {fn.qualified_name}"
    call = call_host_function
    states = _callers.STATES
    context_of = _callers.caller_context
    write_result = _writer(fn.results[0]) if fn.results else None

    if not fn.params:
        # Not the slice below: a ctypes pointer's extended slice with stop 0 (`p[0:0:4]`)
        # gives one element, which the function would get as a spurious argument.

        def callback(env, caller, p, n):
            try:
                result = call(fn, states[context_of(caller)].context, ())
                if write_result is not None:
                    write_result(p, result)
                return 0
            except BaseException as exc:
                return failure_trap(name, exc)

        return _capi.HostCallback(callback)

    if all(t == "i32" for t in fn.params) and fn.results in ((), ("i32",)):
        stop = 4 * len(fn.params)  # slot i is uint32 word 4*i (stop > 0: see above)

        def callback(env, caller, p, n):
            try:
                result = call(fn, states[context_of(caller)].context, p[0:stop:4])
                if write_result is not None:
                    if type(result) is not int:
                        raise TypeError(f"returned {result!r}, expected an int")
                    p[0] = result
                return 0
            except BaseException as exc:
                return failure_trap(name, exc)

        return _capi.HostCallbackI32(callback)

    readers = tuple(_reader(t, 2 * i) for i, t in enumerate(fn.params))

    def callback(env, caller, p, n):
        try:
            ctx = states[context_of(caller)].context
            result = call(fn, ctx, [read(p) for read in readers])
            if write_result is not None:
                write_result(p, result)
            return 0
        except BaseException as exc:
            return failure_trap(name, exc)

    return _capi.HostCallback(callback)
