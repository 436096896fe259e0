"""The wasm3 engine: options, capabilities, and checking modules."""

from __future__ import annotations

import ctypes
import hashlib
import threading
import weakref
from typing import Any

from okra_core.engine import EngineCapabilities
from okra_core.errors import ConfigError, PackageError
from okra_plugins.engine_wasm3 import _capi, _wasm
from okra_plugins.engine_wasm3._module import Wasm3Module

_WASM_MAGIC = b"\0asm"
_COMPONENT_VERSION = b"\x0d\x00\x01\x00"
#: wasm3 runs a wasm call as a native call, so its value stack bounds the native stack a
#: guest can use: measured, a deep recursion uses up to ~32 bytes of native stack per
#: byte of wasm3 stack. 64 KiB keeps the worst case near 2 MiB, inside the 8 MiB a
#: Python thread (and the main thread) has by default.
DEFAULT_STACK_BYTES = 64 * 1024
MAX_STACK_BYTES = 1024 * 1024


class Wasm3Engine:
    """An `okra_core.engine.Engine` on wasm3, an interpreter (through the C API of the
    library the `pywasm3` package builds).

    Options:
      stack_bytes: each instance's wasm3 value stack (default 64 KiB, at most 1 MiB).
        Deeper recursion traps with "stack overflow". A larger stack needs threads with
        a larger native stack (see DEFAULT_STACK_BYTES): raise it only with them.
    """

    name = "wasm3"

    def __init__(self, *, stack_bytes: int = DEFAULT_STACK_BYTES):
        if type(stack_bytes) is not int or not 4096 <= stack_bytes <= MAX_STACK_BYTES:
            raise ConfigError(
                f"engine option stack_bytes={stack_bytes!r} must be a whole number of bytes "
                f"from 4096 to {MAX_STACK_BYTES}"
            )
        self.stack_bytes = stack_bytes
        self._loaded: weakref.WeakValueDictionary[str, Wasm3Module] = (
            weakref.WeakValueDictionary()
        )
        self._lock = threading.Lock()

    def capabilities(self) -> EngineCapabilities:
        return EngineCapabilities(
            deadline=False,  # looked at only when the guest calls the host
            interrupt=False,  # likewise; later calls are refused
            memory_limit=True,  # the module's declared maximum, lowered to the limit
            parallel=True,  # each m3_Call releases the GIL
            wasi="preview1 (OKRA's own: no files, environment or arguments)",
        )

    def describe(self) -> dict[str, str]:
        return {"version": _capi.VERSION, "stack_bytes": str(self.stack_bytes)}

    def compile(self, wasm: bytes) -> Wasm3Module:
        wasm = bytes(wasm)
        digest = hashlib.sha256(wasm).hexdigest()
        with self._lock:
            module = self._loaded.get(digest)
        if module is not None:
            return module
        module = Wasm3Module(self, wasm, self._check(wasm), digest)
        with self._lock:
            return self._loaded.setdefault(digest, module)

    @staticmethod
    def _check(wasm: bytes) -> _wasm.ModuleInfo:
        prefix = "service.wasm is not a valid WebAssembly module"
        if not wasm.startswith(_WASM_MAGIC):
            raise PackageError(
                f"{prefix}: it does not start with the \\0asm magic bytes (is it a "
                "WebAssembly binary?)"
            )
        if wasm[4:8] == _COMPONENT_VERSION:
            raise PackageError(
                "service.wasm is a WebAssembly component, but OKRA runs core modules: "
                "build a wasm32 core module (e.g. GOOS=wasip1 GOARCH=wasm)"
            )
        try:
            info = _wasm.read(wasm)
        except _wasm.Malformed as exc:
            raise PackageError(f"{prefix}: {exc}") from None
        # wasm3's own parse, in an environment of its own that goes with it.
        env = _capi.new_environment()
        try:
            module = ctypes.c_void_p()
            buffer = ctypes.create_string_buffer(wasm, len(wasm))
            err = _capi.parse_module(env, ctypes.byref(module), buffer, len(wasm))
            if err:
                raise PackageError(f"{prefix} (wasm3): {_capi.message(err)}")
            _capi.free_module(module)
        finally:
            _capi.free_environment(env)
        return info


def create_engine(**options: Any) -> Wasm3Engine:
    """The factory registered as engine "wasm3"; unknown options are a ConfigError."""
    known = ("stack_bytes",)
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ConfigError(
            f"unknown option {', '.join(unknown)} for engine wasm3 (it takes: {', '.join(known)})"
        )
    return Wasm3Engine(**options)
