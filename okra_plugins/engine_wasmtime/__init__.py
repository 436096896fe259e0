"""The wasmtime engine plugin (`okra_core.engine.Engine` on wasmtime-py's C bindings)."""

from okra_core.hookspecs import hookimpl


@hookimpl
def register_engines(register):
    from okra_plugins.engine_wasmtime._engine import create_engine

    register("wasmtime", create_engine)
