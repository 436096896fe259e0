"""Status codes and the error that carries one.

OKRA uses the gRPC status codes everywhere (guest ABI, runtime, transports), so an error
raised deep in the runtime reaches a gRPC or Connect client with the same code.
"""

from __future__ import annotations

import enum


class StatusCode(enum.IntEnum):
    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16

    @classmethod
    def from_wire(cls, value: int) -> StatusCode:
        """Map a code received from a guest; anything unknown is UNKNOWN."""
        try:
            return cls(value)
        except ValueError:
            return cls.UNKNOWN


class RpcError(Exception):
    """A failed call: a status code and a message meant for the caller."""

    def __init__(self, code: StatusCode, message: str):
        super().__init__(message)
        self.code = StatusCode(code)
        self.message = message

    def __str__(self) -> str:
        return f"{self.code.name}: {self.message}"

    def __repr__(self) -> str:
        return f"RpcError({self.code.name}, {self.message!r})"
