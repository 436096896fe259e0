"""The wasm3 engine plugin: an interpreter, for small handlers that start fast.

Needs the optional `pywasm3` package (`pip install 'okra[wasm3]'`; it builds from
source, so a C compiler is needed). Without it the engine is still listed, and asking
for it says how to install it. What it cannot enforce: docs/engines.md.
"""

from okra_core.errors import ConfigError
from okra_core.hookspecs import hookimpl


def create_engine(**options):
    try:
        from okra_plugins.engine_wasm3._engine import create_engine as create
    except (ImportError, OSError) as exc:  # _capi.Unavailable says what to install
        raise ConfigError(str(exc)) from None
    return create(**options)


@hookimpl
def register_engines(register):
    register("wasm3", create_engine)
