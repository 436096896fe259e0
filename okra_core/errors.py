"""Errors raised by OKRA outside a call: building, loading and deploying.

Each carries a message written for the person who has to fix the problem; the CLI prints
it as one line.
"""

from __future__ import annotations


class OkraError(Exception):
    """Base class for every error OKRA raises on purpose."""


class PackageError(OkraError):
    """An `.okra.pkg` (or its manifest) is malformed; nothing from it is deployed."""


class DeployError(OkraError):
    """A valid package cannot be deployed on this runtime."""


class CapabilityError(DeployError):
    """A module imports something that is not granted to it."""


class AbiError(DeployError):
    """A module does not speak an ABI version this host supports, or breaks the ABI."""


class BuildError(OkraError):
    """A project could not be built into a package."""


class PluginError(OkraError):
    """A plugin is missing, broken or conflicts with another."""


class ConfigError(OkraError):
    """A project or runtime configuration is invalid."""
