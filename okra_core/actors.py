"""The actor system interface, and the constructor of the local one.

An actor is addressed by name (for services: the fully qualified Protobuf service name)
and receives messages one by one from its mailbox, or several at once if it says it is
concurrent (a regular service is: its worker pool bounds the concurrency). The runtime
only speaks to actors through `ActorSystem` and `ActorRef`, so a distributed backend can
replace the local one without touching it.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable


class ActorNotFound(LookupError):
    """No actor is registered at an address."""


class ActorStopped(RuntimeError):
    """The actor stopped before it could handle a message."""


@runtime_checkable
class Actor(Protocol):
    #: How many messages may be in `receive` at once; None means no limit.
    concurrency: int | None

    async def receive(self, message: Any) -> Any:
        """Handle one message; the return value (or exception) answers an `ask`."""

    async def on_stop(self, grace: float) -> None:
        """Called once after the mailbox is drained (or the grace period ran out),
        before the actor is forgotten; `grace` is what is left of the grace period."""


@runtime_checkable
class ActorRef(Protocol):
    address: str

    async def ask(self, message: Any) -> Any:
        """Send a message and wait for the answer. Raises ActorStopped if the actor
        stops before handling it, or whatever `receive` raised."""

    def tell(self, message: Any) -> None:
        """Send a message without waiting for an answer."""


@runtime_checkable
class ActorSystem(Protocol):
    async def spawn(self, address: str, actor: Actor, *, replace: bool = False) -> ActorRef:
        """Start an actor at an address. With `replace`, an actor already there stops
        once its in-flight messages are handled, and new messages go to the new one."""

    def lookup(self, address: str) -> ActorRef:
        """Find an actor by address (service discovery). Raises ActorNotFound."""

    def addresses(self) -> list[str]: ...

    async def stop(self, address: str, *, grace: float = 10.0) -> None:
        """Stop the actor at an address after its mailbox drains (up to `grace` s)."""

    async def shutdown(self, *, grace: float = 10.0) -> None:
        """Stop every actor."""


def local_actor_system() -> ActorSystem:
    """The embedded default: every actor in this process, on the running asyncio loop."""
    from okra_core._local_actors import LocalActorSystem

    return LocalActorSystem()
