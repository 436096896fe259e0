"""Secrets for services (`okra.secrets`), from a provider the operator chooses.

Providers are plugins (`register_secrets_providers`): `register(name, factory)` with
`factory(**options) -> SecretsProvider`. Built-in: `env` (environment variables) and
`dir` (one file per secret). A service reads only the names its manifest asks for and
policy leaves it; the provider is asked only for those.
"""

from __future__ import annotations

import re
from typing import Protocol, runtime_checkable

#: What a secret's name may look like: safe as an environment variable and a file name.
SECRET_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")


@runtime_checkable
class SecretsProvider(Protocol):
    name: str

    def get(self, name: str) -> bytes | None:
        """The secret's value, or None if the provider has no such secret. `name`
        always matches SECRET_NAME."""
