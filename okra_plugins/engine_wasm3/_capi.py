"""wasm3's C API, bound with ctypes from the library the `pywasm3` package builds.

pywasm3's own Python API is not used on the request path: it holds the GIL while wasm
runs (so one busy guest would stop every thread of the process, the event loop
included), never frees a runtime (each instance's memory would leak), and leaks a little
on every `get_memory`. Its extension module exports wasm3's whole C API, so OKRA calls
that directly: ctypes releases the GIL for the duration of each call, and the engine
frees what it creates. Only the functions listed here are used; `_check` verifies at
import that the library is the one this binding was written for.
"""

from __future__ import annotations

import ctypes
import importlib.metadata
import importlib.util

#: The pywasm3 release whose bundled wasm3 this binding was written against.
SUPPORTED = ("0.5.0",)


class Unavailable(ImportError):
    """pywasm3 is not installed, or is a release this binding does not know."""


def _library() -> ctypes.CDLL:
    spec = importlib.util.find_spec("wasm3")
    if spec is None or spec.origin is None:
        raise Unavailable(
            "engine wasm3 needs the pywasm3 package: pip install 'okra[wasm3]' "
            "(it builds from source: a C compiler is needed)"
        )
    version = importlib.metadata.version("pywasm3")
    if version not in SUPPORTED:
        raise Unavailable(
            f"engine wasm3 supports pywasm3 {', '.join(SUPPORTED)}, but {version} is "
            "installed: pip install 'okra[wasm3]'"
        )
    return ctypes.CDLL(spec.origin)


_lib = _library()
VERSION = importlib.metadata.version("pywasm3")

_p = ctypes.c_void_p
_u32 = ctypes.c_uint32
_str = ctypes.c_char_p


def _fn(name: str, restype, *argtypes):
    fn = getattr(_lib, name)
    fn.restype = restype
    fn.argtypes = list(argtypes)
    return fn


#: `const void* fn(IM3Runtime, IM3ImportContext, uint64_t* sp, void* mem)`: NULL for
#: success, else the trap (an M3Result string) the call fails with.
RawCall = ctypes.CFUNCTYPE(_p, _p, _p, ctypes.POINTER(ctypes.c_uint64), _p)

new_environment = _fn("m3_NewEnvironment", _p)
free_environment = _fn("m3_FreeEnvironment", None, _p)
new_runtime = _fn("m3_NewRuntime", _p, _p, _u32, _p)
free_runtime = _fn("m3_FreeRuntime", None, _p)
parse_module = _fn("m3_ParseModule", _p, _p, ctypes.POINTER(_p), _p, _u32)
free_module = _fn("m3_FreeModule", None, _p)
load_module = _fn("m3_LoadModule", _p, _p, _p)
link_raw_function = _fn("m3_LinkRawFunctionEx", _p, _p, _str, _str, _str, RawCall, _p)
find_function = _fn("m3_FindFunction", _p, ctypes.POINTER(_p), _p, _str)
call = _fn("m3_Call", _p, _p, _u32, ctypes.POINTER(_p))
get_results = _fn("m3_GetResults", _p, _p, _u32, ctypes.POINTER(_p))
get_memory = _fn("m3_GetMemory", _p, _p, ctypes.POINTER(_u32), _u32)
get_arg_count = _fn("m3_GetArgCount", _u32, _p)
get_ret_count = _fn("m3_GetRetCount", _u32, _p)
get_arg_type = _fn("m3_GetArgType", ctypes.c_int, _p, _u32)
get_ret_type = _fn("m3_GetRetType", ctypes.c_int, _p, _u32)

#: M3ValueType codes.
TYPES = {0: "none", 1: "i32", 2: "i64", 3: "f32", 4: "f64"}


class ErrorInfo(ctypes.Structure):
    _fields_ = [
        ("result", _p),
        ("runtime", _p),
        ("module", _p),
        ("function", _p),
        ("file", _str),
        ("line", _u32),
        ("message", _str),
    ]


get_error_info = _fn("m3_GetErrorInfo", None, _p, ctypes.POINTER(ErrorInfo))
reset_error_info = _fn("m3_ResetErrorInfo", None, _p)
#: wasm3's "function lookup failed": linking a function the module does not import.
LOOKUP_FAILED = "function lookup failed"


def message(result: int | None) -> str:
    """The text of an M3Result (a static C string), "" for success."""
    return ctypes.string_at(result).decode("utf-8", "replace") if result else ""
run_start = _fn("m3_RunStart", _p, _p)
compile_module = _fn("m3_CompileModule", _p, _p)
