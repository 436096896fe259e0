"""The plugin manager and the registry of what plugins provide.

Built-in plugins (`okra_plugins.*`) and third-party plugins (entry-point group `okra`) are
loaded the same way and register through the same hooks (`okra_core.hookspecs`).
Set `OKRA_DISABLE_ENTRYPOINTS=1` to load only the built-in plugins.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
import os
import threading
from collections.abc import Callable
from typing import Any

import pluggy

from okra_core import hookspecs
from okra_core.errors import PluginError

#: Modules of the built-in plugins, each registered as a plugin of its own.
DEFAULT_PLUGINS = (
    "okra_plugins.engine_wasmtime",
    "okra_plugins.engine_wasm3",
    "okra_plugins.transport_grpc",
    "okra_plugins.transport_connect",
    "okra_plugins.hostapi_log",
    "okra_plugins.hostapi_time",
    "okra_plugins.hostapi_config",
    "okra_plugins.hostapi_secrets",
    "okra_plugins.hostapi_metrics",
    "okra_plugins.secrets_env",
    "okra_plugins.secrets_dir",
    "okra_plugins.store_memory",
    "okra_plugins.store_sqlite",
    "okra_plugins.store_redis",
    "okra_plugins.hostapi_state",
    "okra_plugins.hostapi_call",
    "okra_plugins.hostapi_http",
    "okra_plugins.lang_go",
)

KINDS = (
    "engines", "transports", "state_stores", "secrets_providers", "host_apis", "languages",
)


@dataclasses.dataclass(frozen=True)
class Provided:
    """One thing a plugin registered."""

    kind: str
    name: str
    plugin: str
    obj: Any


class Registry:
    """What the loaded plugins provide, by kind and name."""

    def __init__(self, pm: pluggy.PluginManager):
        self.pm = pm
        self._items: dict[str, dict[str, Provided]] = {kind: {} for kind in KINDS}
        for kind in KINDS:
            hook = getattr(pm.hook, f"register_{kind}")
            for impl in hook.get_hookimpls():
                plugin_name = pm.get_name(impl.plugin) or repr(impl.plugin)
                impl.function(register=self._registrar(kind, plugin_name))

    def _registrar(self, kind: str, plugin: str) -> Callable[..., None]:
        def register(*args: Any) -> None:
            if kind in ("host_apis", "languages"):
                (obj,) = args
                name = obj.namespace if kind == "host_apis" else obj.name
            else:
                name, obj = args
            if kind == "host_apis" and not name.startswith("okra."):
                raise PluginError(
                    f"plugin {plugin} registers host API {name!r}: host API namespaces "
                    "must start with 'okra.'"
                )
            if name in self._items[kind]:
                other = self._items[kind][name].plugin
                raise PluginError(
                    f"plugins {other} and {plugin} both register {kind[:-1].replace('_', ' ')} {name!r}"
                )
            self._items[kind][name] = Provided(kind, name, plugin, obj)

        return register

    def names(self, kind: str) -> list[str]:
        return sorted(self._items[kind])

    def get(self, kind: str, name: str) -> Any:
        try:
            return self._items[kind][name].obj
        except KeyError:
            known = ", ".join(self.names(kind)) or "none"
            label = kind[:-1].replace("_", " ")
            raise PluginError(
                f"no {label} named {name!r} is installed (installed: {known})"
            ) from None

    def provided(self) -> list[Provided]:
        return [p for kind in KINDS for p in self._items[kind].values()]

    # Convenience accessors.
    def engine(self, name: str, **options: Any):
        return self.get("engines", name)(**options)

    def transport(self, name: str, **options: Any):
        return self.get("transports", name)(**options)

    def state_store(self, name: str, **options: Any):
        return self.get("state_stores", name)(**options)

    def secrets_provider(self, name: str, **options: Any):
        return self.get("secrets_providers", name)(**options)

    def host_api(self, namespace: str):
        return self.get("host_apis", namespace)

    def language(self, name: str):
        return self.get("languages", name)


def make_plugin_manager(*, entrypoints: bool | None = None) -> pluggy.PluginManager:
    pm = pluggy.PluginManager("okra")
    pm.add_hookspecs(hookspecs)
    for module_name in DEFAULT_PLUGINS:
        module = importlib.import_module(module_name)
        pm.register(module, name=module_name)
    if entrypoints is None:
        entrypoints = not os.environ.get("OKRA_DISABLE_ENTRYPOINTS")
    if entrypoints:
        for entry_point in importlib.metadata.entry_points(group="okra"):
            if pm.get_plugin(entry_point.name) is not None or pm.is_blocked(entry_point.name):
                continue
            try:
                plugin = entry_point.load()
                pm.register(plugin, name=entry_point.name)
            except Exception as exc:
                dist = entry_point.dist.name if entry_point.dist else "?"
                raise PluginError(
                    f"plugin {entry_point.name!r} (from {dist}) failed to load: {exc}"
                ) from exc
    return pm


_default_pm: pluggy.PluginManager | None = None
_default: Registry | None = None
_lock = threading.RLock()


def get_plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager, loaded on first use."""
    global _default_pm
    with _lock:
        if _default_pm is None:
            _default_pm = make_plugin_manager()
        return _default_pm


def get_registry() -> Registry:
    """The process-wide registry of what the plugins provide, built on first use."""
    global _default
    with _lock:
        if _default is None:
            _default = Registry(get_plugin_manager())
        return _default
