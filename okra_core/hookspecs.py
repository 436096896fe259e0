"""The plugin hooks. Built-in plugins in `okra_plugins` use exactly these, as a third
party's plugin (entry-point group `okra`) would.

Each `register_*` hook receives a `register` callable; a plugin calls it once per thing it
provides. Names must be unique across plugins.
"""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("okra")
hookimpl = pluggy.HookimplMarker("okra")


@hookspec
def register_engines(register):
    """Register WebAssembly engines: `register(name, factory)`, where
    `factory(**options) -> okra_core.engine.Engine`."""


@hookspec
def register_transports(register):
    """Register transports: `register(name, factory)`, where
    `factory(**options) -> okra_core.transport.Transport`."""


@hookspec
def register_state_stores(register):
    """Register state stores: `register(name, factory)`, where
    `factory(**options) -> okra_core.state.StateStore`."""


@hookspec
def register_secrets_providers(register):
    """Register secrets providers: `register(name, factory)`, where
    `factory(**options) -> okra_core.secrets.SecretsProvider`."""


@hookspec
def register_host_apis(register):
    """Register host APIs: `register(api)`, an `okra_core.hostapi.HostAPI`."""


@hookspec
def register_languages(register):
    """Register guest languages: `register(language)`, an
    `okra_core.language.Language`."""


@hookspec
def register_commands(cli):
    """Add commands to the `okra` CLI (a click group)."""
