"""The wasmtime engine: configuration, compilation and the compiled-module cache."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import platform
import threading
import weakref
from typing import Any

import wasmtime

from okra_core.engine import (
    CACHE_DIR_UNSET,
    NOT_A_MODULE,
    EngineCapabilities,
    cache_dir_option,
    check_core_module,
)
from okra_core.errors import ConfigError, PackageError
from okra_plugins.engine_wasmtime import _pooling
from okra_plugins.engine_wasmtime._cache import ModuleCache, default_cache_dir
from okra_plugins.engine_wasmtime._epoch import EpochTicker
from okra_plugins.engine_wasmtime._failures import one_line
from okra_plugins.engine_wasmtime._hostfuncs import functype
from okra_plugins.engine_wasmtime._module import WasmtimeModule

log = logging.getLogger(__name__)

WASMTIME_VERSION = importlib.metadata.version("wasmtime")
OPT_LEVELS = ("none", "speed", "speed_and_size")


class WasmtimeEngine:
    """An `okra_core.engine.Engine` on wasmtime (through wasmtime-py's C bindings).

    Options:
      cache_dir: where compiled modules are cached. Default: `$OKRA_CACHE_DIR`, else
        `$XDG_CACHE_HOME/okra/modules`, else `~/.cache/okra/modules`. `None` or
        `False` disables the cache.
      opt_level: Cranelift optimisation, "speed" (default), "none" or "speed_and_size".
      epoch_interruption: compile in the checks that let a running call be interrupted
        (default True); the basis of hard per-call deadlines and of
        `Instance.interrupt` stopping a running call (`_epoch`).
      pooling_slots: use wasmtime's pooling allocator with this many instance slots
        (at most that many live instances; ~4 GiB of address space each) for about
        twice as fast instance starts; 0 (default) keeps the on-demand allocator. See
        `_pooling`.
      pooling_keep_resident: with pooling, the bytes of a released instance's memory
        kept mapped for the next one (default 8 MiB).
    """

    name = "wasmtime"

    def __init__(
        self,
        *,
        cache_dir: Any = CACHE_DIR_UNSET,
        opt_level: str = "speed",
        epoch_interruption: bool = True,
        pooling_slots: int = 0,
        pooling_keep_resident: int = 8 << 20,
    ):
        if opt_level not in OPT_LEVELS:
            raise ConfigError(
                f"engine option opt_level={opt_level!r} is not one of {', '.join(OPT_LEVELS)}"
            )
        if not isinstance(epoch_interruption, bool):
            raise ConfigError(
                f"engine option epoch_interruption={epoch_interruption!r} must be true or false"
            )
        for option, value in (
            ("pooling_slots", pooling_slots),
            ("pooling_keep_resident", pooling_keep_resident),
        ):
            if type(value) is not int or not 0 <= value < 1 << 32:
                raise ConfigError(
                    f"engine option {option}={value!r} must be a whole number from 0 to "
                    f"{(1 << 32) - 1}"
                )
        self.epoch_interruption = epoch_interruption
        #: Everything that shapes the compiled code; part of every cache key.
        self.settings = {
            "epoch_interruption": "true" if epoch_interruption else "false",
            "opt_level": opt_level,
        }
        config = wasmtime.Config()
        config.epoch_interruption = epoch_interruption
        config.cranelift_opt_level = opt_level
        #: Instance slots of the pooling allocator; 0 when it is off. Not in `settings`:
        #: it does not change compiled code.
        self.pooling_slots = pooling_slots
        self._pooling_keep_resident = pooling_keep_resident
        if pooling_slots:
            _pooling.enable(config, pooling_slots, pooling_keep_resident)
        self.wasmtime_engine = wasmtime.Engine(config)
        #: Advances the epoch so call deadlines stop running guests.
        self.ticker = EpochTicker(self.wasmtime_engine) if epoch_interruption else None

        cache_dir = cache_dir_option(
            cache_dir, default_cache_dir, "to disable the compiled-module cache"
        )
        self.cache = ModuleCache(cache_dir, self.config_key()) if cache_dir is not None else None
        self._loaded: weakref.WeakValueDictionary[str, WasmtimeModule] = (
            weakref.WeakValueDictionary()
        )
        self._functypes: dict[tuple, wasmtime.FuncType] = {}
        self._lock = threading.Lock()

    def functype(self, params: tuple[str, ...], results: tuple[str, ...]) -> wasmtime.FuncType:
        """The FuncType of a host function signature, built once per engine."""
        key = (params, results)
        ty = self._functypes.get(key)
        if ty is None:
            with self._lock:
                ty = self._functypes.setdefault(key, functype(params, results))
        return ty

    def config_key(self) -> str:
        """A short hash of the wasmtime version, the settings and the machine."""
        identity = {
            "wasmtime": WASMTIME_VERSION,
            "machine": platform.machine(),
            "settings": self.settings,
        }
        blob = json.dumps(identity, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def capabilities(self) -> EngineCapabilities:
        # Deadlines and stopping a running call both rest on epoch checks.
        return EngineCapabilities(
            deadline=self.epoch_interruption,
            interrupt=self.epoch_interruption,
            memory_limit=True,
            parallel=True,
            wasi="preview1",
        )

    def describe(self) -> dict[str, str]:
        described = {
            "version": WASMTIME_VERSION,
            **self.settings,
            "cache_dir": str(self.cache.directory) if self.cache else "disabled",
        }
        if self.pooling_slots:
            described["pooling_slots"] = str(self.pooling_slots)
            described["pooling_keep_resident"] = str(self._pooling_keep_resident)
        return described

    def compile(self, wasm: bytes) -> WasmtimeModule:
        wasm = bytes(wasm)
        digest = hashlib.sha256(wasm).hexdigest()
        with self._lock:
            module = self._loaded.get(digest)
        if module is not None:
            return module
        module = self._load_cached(digest)
        if module is None:
            compiled = self._compile(wasm)
            if self.cache is not None:
                self.cache.store(digest, compiled.serialize())
            module = WasmtimeModule(self, compiled, digest, from_cache=False)
        with self._lock:
            return self._loaded.setdefault(digest, module)

    def _load_cached(self, digest: str) -> WasmtimeModule | None:
        if self.cache is None:
            return None
        payload = self.cache.load(digest)
        if payload is None:
            return None
        try:
            compiled = wasmtime.Module.deserialize(self.wasmtime_engine, payload)
        except wasmtime.WasmtimeError as exc:
            log.warning(
                "compiled-module cache entry %s does not load (%s); recompiling",
                self.cache.path(digest),
                one_line(str(exc)),
            )
            self.cache.discard(digest)
            return None
        return WasmtimeModule(self, compiled, digest, from_cache=True)

    def _compile(self, wasm: bytes) -> wasmtime.Module:
        check_core_module(wasm)
        try:
            return wasmtime.Module(self.wasmtime_engine, wasm)
        except wasmtime.WasmtimeError as exc:
            raise PackageError(f"{NOT_A_MODULE}: {one_line(str(exc))}") from None


def create_engine(**options: Any) -> WasmtimeEngine:
    """The factory registered as engine "wasmtime"; unknown options are a ConfigError."""
    known = (
        "cache_dir",
        "opt_level",
        "epoch_interruption",
        "pooling_slots",
        "pooling_keep_resident",
    )
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ConfigError(
            f"unknown option {', '.join(unknown)} for engine wasmtime "
            f"(it takes: {', '.join(known)})"
        )
    return WasmtimeEngine(**options)
