"""Host API `okra.http`: outbound HTTP(S) requests, limited to the destinations the
package's allow-list (and every operator policy rule's) names. See
docs/host-apis/http.md."""

from __future__ import annotations

from okra_core.hookspecs import hookimpl
from okra_plugins.hostapi_http._api import HttpAPI

__all__ = ["HttpAPI"]


@hookimpl
def register_host_apis(register):
    register(HttpAPI())
