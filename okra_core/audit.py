"""Audit events: every capability denial, at deploy or at run time, is logged to the
`okra.audit` logger and counted (metric `okra_denials_total`, `Runtime.stats`)."""

from __future__ import annotations

import logging
import threading
from collections import Counter
from typing import Any

logger = logging.getLogger("okra.audit")


class Audit:
    def __init__(self, metrics: Any = None):
        self._lock = threading.Lock()
        self._counts: Counter[tuple[str, str]] = Counter()
        self._metric = None
        if metrics is not None:
            self._metric = metrics.counter(
                "okra_denials_total",
                "Capability denials (host API calls and deploys refused), by service and API",
                ("service", "api"),
            )

    def denied(
        self, service: str, api: str, reason: str, *, level: int = logging.WARNING, **fields: Any
    ) -> None:
        """Record that `service` was refused something of host API `api`. A refusal
        that fails a deploy is logged at DEBUG: the deploy's error already says it."""
        with self._lock:
            self._counts[(service, api)] += 1
        if self._metric is not None:
            self._metric.labels(service, api).inc()
        logger.log(
            level, "denied: %s: %s: %s", service, api, reason,
            extra={"okra_audit": {"event": "denied", "service": service, "api": api,
                                  "reason": reason, **fields}},
        )

    def denials(self, service: str | None = None) -> dict[str, int]:
        """Denials so far by API (of one service, or of all)."""
        out: Counter[str] = Counter()
        with self._lock:
            for (svc, api), n in self._counts.items():
                if service is None or svc == service:
                    out[api] += n
        return dict(out)
