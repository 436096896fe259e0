"""OKRA core: interfaces, plugin hooks, package format, guest ABI and the runtime.

It imports no engine, transport or store library: those are plugins.
"""
