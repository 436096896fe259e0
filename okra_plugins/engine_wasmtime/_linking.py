"""A module linked once: WASI and a set of host functions in one linker, and the module
pre-linked against it (wasmtime's InstancePre), shared by all instances that use that set.

Building the linker (WASI's ~45 functions, then ours) and resolving the imports cost
~120 us, a fifth of a Go guest's start and most of a small guest's; done once, an
instance start is a store and `InstancePre.instantiate`. The callbacks serve every
instance: they find theirs from the calling store (`_callers`).
"""

from __future__ import annotations

from collections.abc import Sequence

import wasmtime

from okra_core.errors import DeployError
from okra_core.hostapi import HostFunction
from okra_plugins.engine_wasmtime import _capi, _wasi
from okra_plugins.engine_wasmtime._failures import one_line
from okra_plugins.engine_wasmtime._hostfuncs import host_callback


class LinkedModule:
    """`module` with its imports resolved against WASI and `host_functions`.

    Instances made from it must keep it alive: the C side holds only the addresses of
    its callbacks.
    """

    __slots__ = ("pre", "_linker", "_callbacks")

    def __init__(self, engine, module: wasmtime.Module, host_functions: Sequence[HostFunction]):
        linker = wasmtime.Linker(engine.wasmtime_engine)
        linker.define_wasi()
        callbacks = [_wasi.fd_write_callback()]
        linker.allow_shadowing = True
        fd_write_type = engine.functype(("i32",) * 4, ("i32",))
        _capi.define_host_func(linker, _wasi.NAMESPACE, "fd_write", fd_write_type, callbacks[0])
        linker.allow_shadowing = False
        for fn in host_functions:
            try:
                callback = host_callback(fn)
                callbacks.append(callback)
                ty = engine.functype(tuple(fn.params), tuple(fn.results))
                _capi.define_host_func(linker, fn.namespace, fn.name, ty, callback)
            except (wasmtime.WasmtimeError, ValueError) as exc:
                raise DeployError(
                    f"cannot link host function {fn.qualified_name}: {one_line(str(exc))}"
                ) from None
        try:
            self.pre = linker.instantiate_pre(module)
        except wasmtime.WasmtimeError as exc:
            raise DeployError(f"cannot link the module: {one_line(str(exc))}") from None
        self._linker = linker
        self._callbacks = callbacks
