"""A compiled module, its import/export types, and how an instance of it is linked."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

import wasmtime

from okra_core import abi
from okra_core.engine import (
    ExportSpec,
    GuestFault,
    GuestTimeout,
    GuestTrap,
    ImportSpec,
    InstanceLimits,
    StdioSink,
)
from okra_core.errors import AbiError, CapabilityError, DeployError
from okra_core.hostapi import HostContext, HostFunction
from okra_plugins.engine_wasmtime import _callers, _capi, _wasi
from okra_plugins.engine_wasmtime._failures import one_line
from okra_plugins.engine_wasmtime._instance import WasmtimeInstance
from okra_plugins.engine_wasmtime._linking import LinkedModule
from okra_plugins.engine_wasmtime._memory import WasmtimeMemory

_PAGE = 65536
#: The function exports an instance uses: the ABI's three, then the optional initialiser.
_ABI_FUNCTIONS = (abi.EXPORT_HANDLE, abi.EXPORT_BUFFER, abi.EXPORT_ABI_VERSION, "_initialize")
#: Host function sets linked per module before the oldest is dropped.
_MAX_LINKED = 8


def _canonical_valtypes() -> list[tuple[object, str]]:
    """Value types to compare against. `wasm_valtype_kind` aborts the process on types
    the wasm C API has no kind for (v128, typed references), so a type is named by
    equality with these instead."""
    ffi = wasmtime._ffi
    v128 = wasmtime.ValType._from_ptr(ffi.wasmtime_wasm_valtype_v128(), None)
    return [
        (wasmtime.ValType.i32(), "i32"),
        (wasmtime.ValType.i64(), "i64"),
        (wasmtime.ValType.f32(), "f32"),
        (wasmtime.ValType.f64(), "f64"),
        (v128, "v128"),
        (wasmtime.ValType.funcref(), "funcref"),
        (wasmtime.ValType.externref(), "externref"),
    ]


_CANONICAL = _canonical_valtypes()


def _valtype(vt: wasmtime.ValType) -> str:
    equal = wasmtime._ffi.wasmtime_wasm_valtype_equal
    for known, name in _CANONICAL:
        if equal(vt.ptr(), known.ptr()):
            return name
    return "other"


def _describe(ty) -> tuple[str, tuple[str, ...], tuple[str, ...]]:
    if isinstance(ty, wasmtime.FuncType):
        return "func", tuple(map(_valtype, ty.params)), tuple(map(_valtype, ty.results))
    if isinstance(ty, wasmtime.MemoryType):
        return "memory", (), ()
    if isinstance(ty, wasmtime.TableType):
        return "table", (), ()
    if isinstance(ty, wasmtime.GlobalType):
        return "global", (), ()
    return type(ty).__name__.removesuffix("Type").lower() or "unknown", (), ()


class WasmtimeModule:
    """An `okra_core.engine.CompiledModule` on wasmtime."""

    def __init__(self, engine, module: wasmtime.Module, digest: str, from_cache: bool):
        self._engine = engine
        self._module = module
        #: sha256 of the module's bytes.
        self.digest = digest
        #: Whether it was loaded from the on-disk cache rather than compiled.
        self.from_cache = from_cache
        self._imports = tuple(
            ImportSpec(imp.module, imp.name or "", *_describe(imp.type)) for imp in module.imports
        )
        self._exports = tuple(ExportSpec(exp.name, *_describe(exp.type)) for exp in module.exports)
        #: Linked modules by host function set (the runtime uses one set per service).
        self._linked: dict[tuple[HostFunction, ...], LinkedModule] = {}
        self._lock = threading.Lock()
        #: The ABI memory's initial size in bytes (None if the module exports none), so a
        #: memory limit it cannot meet is refused by name before instantiating.
        self._initial_memory = next(
            (
                exp.type.limits.min * _PAGE
                for exp in module.exports
                if exp.name == abi.EXPORT_MEMORY and isinstance(exp.type, wasmtime.MemoryType)
            ),
            None,
        )

    @property
    def imports(self) -> Sequence[ImportSpec]:
        return self._imports

    @property
    def exports(self) -> Sequence[ExportSpec]:
        return self._exports

    def instantiate(
        self,
        host_functions: Sequence[HostFunction],
        stdio: StdioSink,
        context: HostContext,
        *,
        limits: InstanceLimits | None = None,
    ) -> WasmtimeInstance:
        linked = self._link(host_functions)
        memory_limit = limits.memory_bytes if limits is not None else None
        self._check_memory_limit(memory_limit)
        store = wasmtime.Store(self._engine.wasmtime_engine)
        if memory_limit is not None:
            # wasmtime's store limiter: memory.grow past this returns -1 in the guest.
            store.set_limits(memory_size=memory_limit)
        store_context = _capi.address(store._context())
        ticker = self._engine.ticker
        if ticker is not None:
            # Deadlines and Instance.interrupt: the store's epoch-deadline callback.
            ticker.watch(store, store_context)
        store.set_wasi(wasmtime.WasiConfig())  # no preopens, no env, no args, no stdio
        guest_memory = WasmtimeMemory()
        state = _callers.InstanceState(context, guest_memory, stdio)
        _callers.register(store_context, state)
        start_seconds = limits.start_seconds if limits is not None else None
        deadline = None
        if start_seconds is not None and ticker is not None:
            # The start function runs inside instantiate: the same epoch deadline.
            now = time.monotonic()
            deadline = state.deadline = now + start_seconds
            _capi.set_epoch_deadline(store_context, ticker.ticks_to(now, deadline))
        try:
            return self._start(store, linked, state, memory_limit, deadline)
        except BaseException:
            _callers.unregister(store_context, state)
            store.close()
            raise

    def _start(
        self,
        store: wasmtime.Store,
        linked: LinkedModule,
        state: _callers.InstanceState,
        memory_limit: int | None,
        deadline: float | None = None,
    ) -> WasmtimeInstance:
        try:
            try:
                raw = linked.pre.instantiate(store)
            except (wasmtime.Trap, wasmtime.ExitTrap, wasmtime.WasmtimeError):
                if state.stopped is not None:  # the epoch callback stopped the start
                    state.stopped = None
                    raise GuestTimeout(
                        "instantiation: deadline exceeded: the start function was stopped "
                        "at its time limit"
                    ) from None
                raise
        except wasmtime.Trap as trap:
            raise GuestTrap(f"instantiation: {one_line(trap.message)}") from None
        except wasmtime.ExitTrap as exc:
            raise GuestTrap(
                f"instantiation: the guest exited with status {exc.code} (proc_exit)"
            ) from None
        except wasmtime.WasmtimeError as exc:
            message = one_line(str(exc))
            slots = self._engine.pooling_slots
            if slots and "concurrent limit" in message:
                message += (
                    f" (all {slots} instance slots of the engine's pooling allocator are in "
                    "use: raise engine option pooling_slots)"
                )
            raise DeployError(f"cannot instantiate the module: {message}") from None

        # Only the exports the ABI uses, as C structs: listing them all through
        # wasmtime-py costs ~30 us for a Go module.
        store_context = _capi.address(store._context())
        memory = _capi.instance_export(store_context, raw, abi.EXPORT_MEMORY, _capi.EXTERN_MEMORY)
        funcs = {}
        for name in _ABI_FUNCTIONS:
            export = _capi.instance_export(store_context, raw, name, _capi.EXTERN_FUNC)
            if export is not None:
                funcs[name] = export
        missing = [name for name in _ABI_FUNCTIONS[:3] if name not in funcs]
        if memory is None:
            missing.insert(0, abi.EXPORT_MEMORY)
        if missing:
            raise AbiError(
                f"module does not export {', '.join(missing)} required by guest ABI v1: "
                "was it built with an OKRA SDK?"
            )
        instance = WasmtimeInstance(
            store, funcs, memory, state, linked, self._engine.ticker, memory_limit
        )
        state.context.memory = state.memory
        state.deadline = None
        try:
            instance.start(abi.INITIAL_BUFFER_SIZE, deadline)
        except GuestTrap:
            instance.close()
            raise
        except GuestFault as exc:
            instance.close()
            raise AbiError(f"the module breaks guest ABI v1 while starting: {exc}") from None
        return instance

    def _link(self, host_functions: Sequence[HostFunction]) -> LinkedModule:
        """The module linked with `host_functions`, built on first use of that set."""
        key = tuple(host_functions)
        try:
            linked = self._linked.get(key)
        except TypeError:  # an unhashable impl: link for this instance alone
            self._check_imports(host_functions)
            return LinkedModule(self._engine, self._module, host_functions)
        if linked is None:
            self._check_imports(host_functions)
            linked = LinkedModule(self._engine, self._module, host_functions)
            with self._lock:
                if len(self._linked) >= _MAX_LINKED and key not in self._linked:
                    # the oldest goes; its live instances keep it alive
                    del self._linked[next(iter(self._linked))]
                linked = self._linked.setdefault(key, linked)
        return linked

    def _check_memory_limit(self, limit: int | None) -> None:
        initial = self._initial_memory
        if limit is not None and initial is not None and initial > limit:
            raise DeployError(
                f"the module's initial memory ({initial} bytes) is larger than the memory "
                f"limit ({limit} bytes): raise the limit or build the module with less "
                "initial memory"
            )

    def _check_imports(self, host_functions: Sequence[HostFunction]) -> None:
        """Name the first import nothing will satisfy, before wasmtime's own less
        specific link error."""
        provided = {fn.qualified_name for fn in host_functions}
        for imp in self._imports:
            if imp.module == _wasi.NAMESPACE:
                continue  # wasmtime's WASI; an unknown WASI name fails at link time
            if imp.kind != "func":
                raise DeployError(
                    f"module imports {imp.kind} {imp.qualified_name}; OKRA links only "
                    "functions (a module must define its own memory and tables)"
                )
            if imp.qualified_name not in provided:
                raise CapabilityError(
                    f"module imports {imp.qualified_name}, which is not linked on this host: "
                    'grant its host API in the manifest ("host_apis" in okra.service.json)'
                )

