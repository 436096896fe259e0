"""The wasm3 engine: options, capabilities, and checking modules."""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import pathlib
import threading
import weakref
from typing import Any

from okra_core.engine import (
    CACHE_DIR_UNSET,
    NOT_A_MODULE,
    EngineCapabilities,
    cache_dir_option,
    cache_home,
    check_core_module,
)
from okra_core.errors import ConfigError, DeployError, PackageError
from okra_plugins.engine_wasm3 import _capi, _meter, _wasm
from okra_plugins.engine_wasm3._instance import signature
from okra_plugins.engine_wasm3._module import Wasm3Module

log = logging.getLogger(__name__)
#: Each instance's wasm3 value stack. Deep recursion uses native stack in proportion
#: (`_stack`): 64 KiB needs 2.5 MiB of native stack, well inside the 8 MiB a thread has by
#: default on Linux; a call on a thread with less is refused rather than risk a crash.
DEFAULT_STACK_BYTES = 64 * 1024
MAX_STACK_BYTES = 1024 * 1024


@_capi.RawCall
def _STUB(runtime, import_ctx, sp, mem):  # never called: the check runs no code
    return None


class Wasm3Engine:
    """An `okra_core.engine.Engine` on wasm3, an interpreter (through the C API of the
    library the `pywasm3` package builds).

    Options:
      stack_bytes: each instance's wasm3 value stack (default 64 KiB, at most 1 MiB).
        Deeper recursion traps with "stack overflow". A call needs a thread with
        32 x stack_bytes + 512 KiB of native stack (2.5 MiB by default) and fails with
        a GuestTrap saying so on a thread with less (`_stack`).
      meter: write fuel checks into each module (`_meter`) so that a call is stopped at
        its deadline and by `Instance.interrupt` wherever it is (default True). They
        cost a few percent of compute; without them, only host calls look.
      cache_dir: where the digests of modules already checked are remembered, so that
        a module is compiled through once (seconds for a Go guest), not at every
        deploy. Default: `$OKRA_CACHE_DIR/wasm3-checked`, else under
        `$XDG_CACHE_HOME/okra` or `~/.cache/okra`; None or False: check every time.
        A forged entry only defers the check: wasm3 compiles each function again when
        an instance first calls it, and a function that does not compile traps then.
    """

    name = "wasm3"

    def __init__(
        self, *, stack_bytes: int = DEFAULT_STACK_BYTES, cache_dir: Any = CACHE_DIR_UNSET,
        meter: bool = True,
    ):
        if type(stack_bytes) is not int or not 4096 <= stack_bytes <= MAX_STACK_BYTES:
            raise ConfigError(
                f"engine option stack_bytes={stack_bytes!r} must be a whole number of bytes "
                f"from 4096 to {MAX_STACK_BYTES}"
            )
        self.stack_bytes = stack_bytes
        if not isinstance(meter, bool):
            raise ConfigError(f"engine option meter={meter!r} must be true or false")
        self.meter = meter
        self.cache_dir = cache_dir_option(
            cache_dir, _default_cache_dir, "to check every module at every deploy"
        )
        self._loaded: weakref.WeakValueDictionary[str, Wasm3Module] = (
            weakref.WeakValueDictionary()
        )
        self._lock = threading.Lock()

    def capabilities(self) -> EngineCapabilities:
        return EngineCapabilities(
            # With metering, fuel checks in every loop and function entry (_meter);
            # without, only host calls look at the deadline and at interrupt.
            deadline=self.meter,
            interrupt=self.meter,
            memory_limit=True,  # the module's declared maximum, lowered to the limit
            parallel=True,  # each m3_Call releases the GIL
            wasi="preview1",  # OKRA's own shim (_wasi), the same sandbox as wasmtime's
        )

    def describe(self) -> dict[str, str]:
        return {
            "version": _capi.VERSION,
            "stack_bytes": str(self.stack_bytes),
            "meter": "true" if self.meter else "false",
            "cache_dir": str(self.cache_dir) if self.cache_dir else "disabled",
        }

    def compile(self, wasm: bytes) -> Wasm3Module:
        wasm = bytes(wasm)
        digest = hashlib.sha256(wasm).hexdigest()
        with self._lock:
            module = self._loaded.get(digest)
        if module is not None:
            return module
        info = self._read(wasm)
        _validate(wasm)
        _refuse_non_function_imports(info)
        runnable = self._metered(wasm) if self.meter else wasm
        if runnable is not wasm:
            _validate_metered(runnable)
        checked = self._checked_marker(digest)
        if checked is None or not checked.exists():
            self._check(runnable, self._read(runnable) if self.meter else info)
            self._remember(checked)
        module = Wasm3Module(self, runnable, info, digest)
        with self._lock:
            return self._loaded.setdefault(digest, module)

    def _checked_marker(self, digest: str) -> pathlib.Path | None:
        if self.cache_dir is None:
            return None
        metered = "-metered" if self.meter else ""
        return self.cache_dir / f"{digest}-{_capi.VERSION}{metered}"

    @staticmethod
    def _metered(wasm: bytes) -> bytes:
        try:
            return _meter.instrument(wasm)
        except (_meter.Unsupported, _wasm.Malformed) as exc:
            raise PackageError(
                f"engine wasm3 cannot run service.wasm: {exc} (wasm3 runs WebAssembly 1.0 "
                "with sign extension, saturating conversions, bulk memory and reference "
                "types; no SIMD, threads or exceptions)"
            ) from None

    @staticmethod
    def _remember(marker: pathlib.Path | None) -> None:
        if marker is None:
            return
        try:
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.touch()
        except OSError as exc:
            log.warning("cannot remember a checked module in %s: %s", marker.parent, exc)

    @staticmethod
    def _read(wasm: bytes) -> _wasm.ModuleInfo:
        check_core_module(wasm)
        try:
            return _wasm.read(wasm)
        except _wasm.Malformed as exc:
            raise PackageError(f"{NOT_A_MODULE}: {exc}") from None

    @staticmethod
    def _check(wasm: bytes, info: _wasm.ModuleInfo) -> None:
        prefix = NOT_A_MODULE
        # wasm3 compiles functions on first call: compile them all once here, with
        # every import linked to a stub, so that invalid code fails now, not in a call.
        env = _capi.new_environment()
        runtime = _capi.new_runtime(env, 4096, None)
        try:
            module = ctypes.c_void_p()
            buffer = ctypes.create_string_buffer(wasm, len(wasm))
            err = _capi.parse_module(env, ctypes.byref(module), buffer, len(wasm))
            if err:
                raise PackageError(f"{prefix} (wasm3): {_capi.message(err)}")
            err = _capi.load_module(runtime, module)
            if err:
                _capi.free_module(module)
                raise PackageError(f"{prefix} (wasm3): {_capi.message(err)}")
            for imp in info.imports:  # functions only: compile refused the rest
                try:
                    sig = signature(imp.params, imp.results)
                except ValueError as exc:
                    raise DeployError(
                        f"module imports {imp.qualified_name}, which {exc}: engine wasm3 "
                        "cannot link it"
                    ) from None
                err = _capi.link_raw_function(
                    module, imp.module.encode(), imp.name.encode(), sig.encode(), _STUB, None
                )
                if err and _capi.message(err) != _capi.LOOKUP_FAILED:
                    raise PackageError(
                        f"{prefix} (wasm3): import {imp.qualified_name}: {_capi.message(err)}"
                    )
            err = _capi.compile_module(module)
            if err:  # the module is valid (validated first): wasm3 lacks something
                raise DeployError(
                    f"engine wasm3 cannot run service.wasm: {_capi.message(err)} (it runs "
                    "WebAssembly 1.0 with sign extension, saturating conversions and bulk "
                    "memory; not SIMD, threads, exceptions or all of reference types): "
                    "run it on wasmtime"
                )
        finally:
            _capi.free_runtime(runtime)
            _capi.free_environment(env)


def _validate(wasm: bytes) -> None:
    """Validate the module fully (types, every instruction) before wasm3 sees it.

    wasm3 checks little: code that does not type-check can crash it or make it read
    and write outside the guest's memory. wasmtime's validator (wasmtime is always
    installed with OKRA), limited to what wasm3 runs, costs ~40 ms for a 4.8 MB Go guest
    and runs at every compile, whatever the check cache says."""
    import wasmtime

    try:
        wasmtime.Module.validate(_validator(full=True), wasm)
    except wasmtime.WasmtimeError as exc:
        message = " ".join(str(exc).split())
        raise PackageError(f"{NOT_A_MODULE}: {message}") from None
    try:
        wasmtime.Module.validate(_validator(full=False), wasm)
    except wasmtime.WasmtimeError as exc:
        message = " ".join(str(exc).split())
        raise DeployError(
            f"engine wasm3 cannot run service.wasm: {message} (wasm3 runs WebAssembly 1.0 "
            "with sign extension, saturating conversions, multi-value and bulk memory; "
            "not SIMD, threads, tail calls, exceptions or multiple memories): run it on "
            "wasmtime"
        ) from None


def _validate_metered(wasm: bytes) -> None:
    """The fuel-check rewrite's own output, against the rules of what wasm3 runs (the
    module it came from passed them: a failure here is the rewrite's)."""
    import wasmtime

    try:
        wasmtime.Module.validate(_validator(full=False), wasm)
    except wasmtime.WasmtimeError as exc:
        message = " ".join(str(exc).split())
        raise DeployError(f"engine wasm3 could not meter service.wasm: {message}") from None


_VALIDATORS: dict[bool, object] = {}


#: Proposals wasm3 does not run: off in the validator, so that a module using one is
#: refused rather than misread (wasm3 would take a multi-memory load's memory index for
#: its offset, run a tail call as a call, ...). Reference types stay on: wasmtime needs
#: them, and wasm3 refuses the instructions it lacks when it compiles.
_NOT_IN_WASM3 = (
    "simd", "relaxed_simd", "threads", "memory64", "multi_memory", "tail_call", "gc",
    "function_references", "exceptions", "wide_arithmetic", "custom_page_sizes",
    "stack_switching",
)


def _validator(full: bool):
    """wasmtime's validator with its default features (`full`: is it WebAssembly?), or
    with only what wasm3 runs (can wasm3 run it?)."""
    validator = _VALIDATORS.get(full)
    if validator is None:
        import wasmtime

        config = wasmtime.Config()
        if not full:
            for feature in _NOT_IN_WASM3:
                setattr(config, f"wasm_{feature}", False)
            config.wasm_bulk_memory = True
            config.wasm_multi_value = True
        validator = _VALIDATORS.setdefault(full, wasmtime.Engine(config))
    return validator


def _refuse_non_function_imports(info: _wasm.ModuleInfo) -> None:
    for imp in info.imports:
        if imp.kind != "func":
            raise DeployError(
                f"module imports {imp.kind} {imp.qualified_name}; OKRA links only "
                "functions (a module must define its own memory and tables)"
            )


def _default_cache_dir() -> pathlib.Path:
    explicit = os.environ.get("OKRA_CACHE_DIR")
    base = pathlib.Path(explicit).expanduser() if explicit else cache_home()
    return base / "wasm3-checked"


def create_engine(**options: Any) -> Wasm3Engine:
    """The factory registered as engine "wasm3"; unknown options are a ConfigError."""
    known = ("stack_bytes", "cache_dir", "meter")
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ConfigError(
            f"unknown option {', '.join(unknown)} for engine wasm3 (it takes: {', '.join(known)})"
        )
    return Wasm3Engine(**options)
