"""A wasm3 "compiled" module: the checked bytes, what they import and export, and how an
instance of them is made and linked.

wasm3 interprets, compiling each function on its first call, so there is nothing to
compile ahead: `compile` checks the module (wasm3 parses it once) and reads its imports
and exports; each instance parses it again into its own runtime (`_instance`).
"""

from __future__ import annotations

import ctypes
import threading
import time
from collections.abc import Sequence

from okra_core import abi
from okra_core.engine import ExportSpec, GuestFault, GuestTrap, ImportSpec, InstanceLimits, StdioSink
from okra_core.errors import AbiError, CapabilityError, DeployError
from okra_core.hostapi import HostContext, HostFunction
from okra_plugins.engine_wasm3 import _capi, _instance, _meter, _wasi, _wasm
from okra_plugins.engine_wasm3._instance import InstanceState, Wasm3Instance
from okra_plugins.engine_wasm3._memory import Wasm3Memory

_ABI_FUNCTIONS = (abi.EXPORT_HANDLE, abi.EXPORT_BUFFER, abi.EXPORT_ABI_VERSION)
#: Host function sets whose callbacks a module keeps before the oldest is dropped.
_MAX_LINKED = 8


class _Image:
    """Module bytes in C memory, as wasm3 needs them: a parsed module points into its
    bytes rather than copying them, so they live as long as any instance of them."""

    __slots__ = ("buffer", "size")

    def __init__(self, data: bytes):
        self.buffer = ctypes.create_string_buffer(data, len(data))
        self.size = len(data)


class _Linked:
    """The callbacks for one set of host functions: (namespace, name, signature,
    callback) for each import of the module. Shared by the instances using that set."""

    __slots__ = ("entries",)

    def __init__(self, entries):
        self.entries = entries


class Wasm3Module:
    """An `okra_core.engine.CompiledModule` on wasm3."""

    def __init__(self, engine, wasm: bytes, info: _wasm.ModuleInfo, digest: str):
        """`wasm` is what instances load (with fuel checks when the engine meters);
        `info` describes the module as built, whose imports the runtime checks."""
        self._engine = engine
        self._wasm = wasm
        self._metered = engine.meter
        self._info = info
        #: sha256 of the module's bytes.
        self.digest = digest
        self._images: dict[int | None, _Image] = {}  # by memory cap in pages
        self._linked: dict[tuple[HostFunction, ...], _Linked] = {}
        self._wasi = {
            imp.name: _instance.wasi_callback(imp.name)
            for imp in info.imports
            if imp.module == _wasi.NAMESPACE and imp.name in _wasi.FUNCTIONS
        }
        self._lock = threading.Lock()

    @property
    def imports(self) -> Sequence[ImportSpec]:
        return self._info.imports

    @property
    def exports(self) -> Sequence[ExportSpec]:
        return self._info.exports

    def instantiate(
        self,
        host_functions: Sequence[HostFunction],
        stdio: StdioSink,
        context: HostContext,
        *,
        limits: InstanceLimits | None = None,
    ) -> Wasm3Instance:
        linked = self._link(host_functions)
        memory_limit = limits.memory_bytes if limits is not None else None
        image = self._image(memory_limit)
        env = _capi.new_environment()
        runtime = ctypes.c_void_p(_capi.new_runtime(env, self._engine.stack_bytes, None))
        if not env or not runtime:
            raise DeployError("wasm3 could not allocate a runtime (out of memory?)")
        memory = Wasm3Memory(runtime)
        state = InstanceState(context, memory, stdio)
        instance = Wasm3Instance(
            env, runtime, state, (image, linked, self._wasi), memory_limit,
            self._engine.stack_bytes,
        )
        _instance.STATES[runtime.value] = state
        start_seconds = limits.start_seconds if limits is not None else None
        deadline = time.monotonic() + start_seconds if start_seconds is not None else None
        try:
            state.deadline = deadline  # the start function runs under it too
            self._load(env, runtime, image, linked, state)
            functions = self._functions(runtime)
            context.memory = memory
            instance.start(functions, abi.INITIAL_BUFFER_SIZE, deadline)
        except GuestFault as exc:
            instance.close()
            raise AbiError(f"the module breaks guest ABI v1 while starting: {exc}") from None
        except BaseException:
            instance.close()
            raise
        return instance

    # -- instance set-up ----------------------------------------------------------------

    def _load(
        self, env, runtime: ctypes.c_void_p, image: _Image, linked: _Linked,
        state: InstanceState,
    ) -> None:
        module = ctypes.c_void_p()
        err = _capi.parse_module(env, ctypes.byref(module), image.buffer, image.size)
        if err:
            raise DeployError(f"wasm3 cannot parse the module: {_capi.message(err)}")
        err = _capi.load_module(runtime, module)
        if err:
            _capi.free_module(module)
            raise DeployError(f"wasm3 cannot load the module: {_capi.message(err)}")
        for namespace, name, sig, callback in linked.entries:
            self._link_one(module, namespace, name, sig, callback)
        for name, callback in self._wasi.items():
            self._link_one(module, _wasi.NAMESPACE, name, _wasi.FUNCTIONS[name][0], callback)
        err = _capi.run_start(module)
        if err:
            if err == _instance.STOP:
                raise _instance.stopped_error("the start function", state)
            raise GuestTrap(f"instantiation: {_capi.message(err).removeprefix('[trap] ')}")

    @staticmethod
    def _link_one(module, namespace: str, name: str, sig: str, callback) -> None:
        err = _capi.link_raw_function(
            module, namespace.encode(), name.encode(), sig.encode(), callback, None
        )
        if err and _capi.message(err) != _capi.LOOKUP_FAILED:
            raise DeployError(
                f"cannot link {namespace}.{name} (as {sig}): {_capi.message(err)}"
            )

    def _functions(self, runtime: ctypes.c_void_p) -> dict[str, ctypes.c_void_p]:
        found: dict[str, ctypes.c_void_p] = {}
        missing = []
        for name in (*_ABI_FUNCTIONS, "_initialize"):
            fn = ctypes.c_void_p()
            err = _capi.find_function(ctypes.byref(fn), runtime, name.encode())
            if err or not fn:
                if name != "_initialize":
                    missing.append(name)
                continue
            found[name] = fn
        if not any(exp.name == abi.EXPORT_MEMORY for exp in self._info.exports):
            missing.insert(0, abi.EXPORT_MEMORY)
        if missing:
            raise AbiError(
                f"module does not export {', '.join(missing)} required by guest ABI v1: "
                "was it built with an OKRA SDK?"
            )
        return found

    def _image(self, memory_limit: int | None) -> _Image:
        """The module's bytes, with its memory's maximum lowered to the limit."""
        memory = self._info.memory
        cap = None
        if memory_limit is not None and memory is not None:
            if memory.initial * _wasm.PAGE > memory_limit:
                raise DeployError(
                    f"the module's initial memory ({memory.initial * _wasm.PAGE} bytes) is "
                    f"larger than the memory limit ({memory_limit} bytes): raise the limit "
                    "or build the module with less initial memory"
                )
            cap = memory_limit // _wasm.PAGE
        image = self._images.get(cap)
        if image is None:
            data = self._wasm if cap is None else _wasm.cap_memory(self._wasm, cap)
            with self._lock:
                image = self._images.setdefault(cap, _Image(data))
        return image

    # -- linking --------------------------------------------------------------------------

    def _link(self, host_functions: Sequence[HostFunction]) -> _Linked:
        key = tuple(host_functions)
        try:
            linked = self._linked.get(key)
        except TypeError:  # an unhashable impl: link for this instance alone
            return self._build_linked(host_functions)
        if linked is None:
            linked = self._build_linked(host_functions)
            with self._lock:
                if len(self._linked) >= _MAX_LINKED and key not in self._linked:
                    del self._linked[next(iter(self._linked))]
                linked = self._linked.setdefault(key, linked)
        return linked

    def _build_linked(self, host_functions: Sequence[HostFunction]) -> _Linked:
        """Check every import against what will be linked, then make the callbacks."""
        provided: dict[str, HostFunction] = {}
        for fn in host_functions:
            if fn.qualified_name in provided:
                raise DeployError(
                    f"cannot link host function {fn.qualified_name}: it is defined twice"
                )
            try:
                _instance.signature(tuple(fn.params), tuple(fn.results))
            except ValueError as exc:
                raise DeployError(f"cannot link host function {fn.qualified_name}: {exc}") from None
            provided[fn.qualified_name] = fn
        entries = []
        for imp in self._info.imports:  # functions only: the engine's compile refused the rest
            if imp.module == _wasi.NAMESPACE:
                self._check_wasi(imp)
                continue
            fn = provided.get(imp.qualified_name)
            if fn is None:
                raise CapabilityError(
                    f"module imports {imp.qualified_name}, which is not linked on this host: "
                    'grant its host API in the manifest ("host_apis" in okra.service.json)'
                )
            if (tuple(fn.params), tuple(fn.results)) != (imp.params, imp.results):
                raise DeployError(
                    f"module imports {imp.qualified_name} as {_show(imp.params, imp.results)}, "
                    f"but the host defines it as {_show(fn.params, fn.results)}"
                )
            sig = _instance.signature(imp.params, imp.results)
            entries.append((imp.module, imp.name, sig, _instance.host_callback(fn)))
        if self._metered:
            entries.append((_meter.NAMESPACE, _meter.REFUEL, "i()", _instance.refuel_callback()))
        return _Linked(tuple(entries))

    @staticmethod
    def _check_wasi(imp: ImportSpec) -> None:
        known = _wasi.FUNCTIONS.get(imp.name)
        if known is None:
            raise DeployError(
                f"module imports {imp.qualified_name}, which is not a WASI preview1 "
                "function this host provides"
            )
        try:
            sig = _instance.signature(imp.params, imp.results)
        except ValueError:
            sig = None
        if sig != known[0]:
            raise DeployError(
                f"module imports {imp.qualified_name} as {_show(imp.params, imp.results)}, "
                "which is not its WASI preview1 type"
            )


def _show(params, results) -> str:
    return f"({', '.join(params)}) -> ({', '.join(results)})"
