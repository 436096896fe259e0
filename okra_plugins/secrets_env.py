"""Secrets provider `env`: secret NAME is the environment variable `<prefix>NAME`.

The variable is read at every `get`, so a secret changed in the process environment (by
a supervisor that restarts nothing, or a test) is seen at the next read. The prefix keeps
services away from the rest of the host's environment: even a granted name reads only
variables the operator named for services.
"""

from __future__ import annotations

import os
import re
from typing import Any

from okra_core.errors import ConfigError
from okra_core.hookspecs import hookimpl
from okra_core.secrets import SECRET_NAME

DEFAULT_PREFIX = "OKRA_SECRET_"
_PREFIX = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class EnvSecrets:
    """Secrets from environment variables named `<prefix><NAME>`."""

    name = "env"

    def __init__(self, prefix: str = DEFAULT_PREFIX):
        if not isinstance(prefix, str) or not _PREFIX.fullmatch(prefix):
            raise ConfigError(
                f"secrets provider env: prefix {prefix!r} is not a valid start of an "
                f"environment variable name (letters, digits, _; e.g. {DEFAULT_PREFIX!r})"
            )
        self.prefix = prefix

    def get(self, name: str) -> bytes | None:
        if not SECRET_NAME.fullmatch(name):
            raise ValueError(f"{name!r} is not a secret name")
        key = self.prefix + name
        if os.supports_bytes_environ:
            return os.environb.get(key.encode())
        value = os.environ.get(key)
        return None if value is None else value.encode()

    def __repr__(self) -> str:
        return f"EnvSecrets(prefix={self.prefix!r})"


def make_env_secrets(**options: Any) -> EnvSecrets:
    unknown = set(options) - {"prefix"}
    if unknown:
        raise ConfigError(
            f"unknown options for secrets provider env: {', '.join(sorted(unknown))} (known: prefix)"
        )
    return EnvSecrets(**options)


@hookimpl
def register_secrets_providers(register):
    register("env", make_env_secrets)
