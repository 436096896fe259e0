"""Key-value state for services, behind one interface.

State stores are plugins (`register_state_stores`). Host APIs (such as a future
`okra.state`) use a store on a service's behalf; a service only ever sees its own
namespace.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol, runtime_checkable


@runtime_checkable
class StateStore(Protocol):
    name: str

    async def get(self, namespace: str, key: bytes) -> bytes | None: ...

    async def put(self, namespace: str, key: bytes, value: bytes) -> None: ...

    async def delete(self, namespace: str, key: bytes) -> bool:
        """Return whether the key existed."""

    def keys(self, namespace: str, prefix: bytes = b"") -> AsyncIterator[bytes]: ...

    async def close(self) -> None: ...
