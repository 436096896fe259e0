"""Call chains: which calls led to this one, so a call that would wait on itself fails.

A singleton or a keyed activation runs one call at a time. If, while it runs, the call
it is running calls another service which calls back into the same activation
(A -> B -> A on one key), the inner call would wait for the outer one to finish, and
the outer one waits for the inner: a deadlock that only a timeout would end. Every call
therefore carries a chain: an id shared by all the calls one outside request led to,
and the hops so far. An activation remembers the chain of the call it runs; a call of
the same chain that finds it busy fails at once, naming the chain.

The runtime passes a call's chain to its instance (`HostContext.chain`), and the host
function that calls other services (`okra.call`) sends it on with the next call.
"""

from __future__ import annotations

import dataclasses
import os


@dataclasses.dataclass(frozen=True, slots=True)
class CallChain:
    #: Shared by every call that one outside request led to.
    id: str
    #: The services (and keys) the chain passed through, outermost first.
    hops: tuple[str, ...] = ()

    @classmethod
    def new(cls) -> CallChain:
        """The chain of a call that comes from outside (no caller in this runtime)."""
        return cls(os.urandom(8).hex())

    def then(self, hop: str) -> CallChain:
        """This chain, one call further (into `hop`)."""
        return CallChain(self.id, (*self.hops, hop))

    def describe(self, last: str | None = None) -> str:
        """The hops as `A -> B -> A`, with `last` appended."""
        hops = self.hops if last is None else (*self.hops, last)
        return " -> ".join(hops) or "(outside call)"


def hop_name(service: str, key: str | None) -> str:
    """How a chain names a call into `service` (and its activation, if keyed)."""
    return service if key is None else f"{service}[{key!r}]"
