"""Metrics: counters, gauges and histograms, the runtime's own and its services'
(`okra.metrics`), rendered in the Prometheus text format (`Metrics.render`), which the
HTTP transport serves at `/metrics`.

Deliberately small: thread-safe, labels by position, no dependency. A family's name,
kind and label names are fixed when it is first made; asking again returns it.
"""

from __future__ import annotations

import bisect
import math
import re
import threading
from collections.abc import Iterable, Sequence

COUNTER, GAUGE, HISTOGRAM = "counter", "gauge", "histogram"
#: Prometheus' default buckets (seconds-shaped), for histograms that name none.
DEFAULT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")


class MetricError(ValueError):
    """A metric used against its kind or shape (e.g. a counter made to go down)."""


class _Child:
    __slots__ = ("value", "counts", "sum", "_family")

    def __init__(self, family: Family):
        self._family = family
        self.value = 0.0
        if family.kind == HISTOGRAM:
            self.counts = [0] * (len(family.buckets) + 1)
            self.sum = 0.0

    def inc(self, amount: float = 1.0) -> None:
        if self._family.kind == HISTOGRAM:
            raise MetricError(f"{self._family.name} is a histogram: observe it")
        if self._family.kind == COUNTER and not amount >= 0:
            raise MetricError(f"counter {self._family.name} only goes up (got {amount})")
        if self._family.single_writer:
            self.value += amount
            return
        with self._family.lock:
            self.value += amount

    def set(self, value: float) -> None:
        if self._family.kind != GAUGE:
            raise MetricError(f"{self._family.name} is a {self._family.kind}, not a gauge")
        with self._family.lock:
            self.value = value

    def observe(self, value: float) -> None:
        if self._family.kind != HISTOGRAM:
            raise MetricError(f"{self._family.name} is a {self._family.kind}, not a histogram")
        index = bisect.bisect_left(self._family.buckets, value)
        if self._family.single_writer:
            self.counts[index] += 1
            self.sum += value
            return
        with self._family.lock:
            self.counts[index] += 1
            self.sum += value


class Family:
    """A metric and its children, one per combination of label values."""

    def __init__(
        self, name: str, help: str, kind: str, labelnames: Sequence[str],
        buckets: Sequence[float] = DEFAULT_BUCKETS, max_series: int | None = None,
        single_writer: bool = False,
    ):
        self.name = name
        self.help = help
        self.kind = kind
        self.labelnames = tuple(labelnames)
        self.buckets = tuple(sorted(buckets))
        self.max_series = max_series
        #: Values change on one thread only (the runtime's loop), so updates skip the
        #: lock; reading them for `render` from another thread may see a stale value.
        self.single_writer = single_writer
        self.lock = threading.Lock()
        self._children: dict[tuple[str, ...], _Child] = {}

    def labels(self, *values: str) -> _Child:
        if len(values) != len(self.labelnames):
            raise MetricError(
                f"{self.name} has labels ({', '.join(self.labelnames)}); got {len(values)} values"
            )
        child = self._children.get(values)
        if child is None:
            with self.lock:
                child = self._children.get(values)
                if child is None:
                    if self.max_series is not None and len(self._children) >= self.max_series:
                        raise MetricError(
                            f"{self.name} already has {self.max_series} label combinations, "
                            "its limit: use fewer distinct label values"
                        )
                    child = self._children[values] = _Child(self)
        return child

    def series(self) -> int:
        return len(self._children)

    def remove_matching(self, label: str, value: str) -> None:
        """Forget every child whose `label` is `value` (e.g. an undeployed service's)."""
        index = self.labelnames.index(label)
        with self.lock:
            for key in [k for k in self._children if k[index] == value]:
                del self._children[key]

    def lines(self) -> Iterable[str]:
        yield f"# HELP {self.name} {_escape_help(self.help)}"
        yield f"# TYPE {self.name} {self.kind}"
        with self.lock:
            items = [(k, c.value, list(getattr(c, "counts", ())), getattr(c, "sum", 0.0))
                     for k, c in self._children.items()]
        for key, value, counts, total in sorted(items, key=lambda item: item[0]):
            pairs = list(zip(self.labelnames, key))
            if self.kind != HISTOGRAM:
                yield f"{self.name}{_labels(pairs)} {_number(value)}"
                continue
            running = 0
            for bound, count in zip((*self.buckets, math.inf), counts):
                running += count
                le = "+Inf" if bound == math.inf else _number(bound)
                yield f"{self.name}_bucket{_labels([*pairs, ('le', le)])} {running}"
            yield f"{self.name}_sum{_labels(pairs)} {_number(total)}"
            yield f"{self.name}_count{_labels(pairs)} {running}"


class Metrics:
    """A registry of metric families."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._families: dict[str, Family] = {}

    def counter(self, name: str, help: str, labelnames: Sequence[str] = (), **kw) -> Family:
        return self._family(name, help, COUNTER, labelnames, **kw)

    def gauge(self, name: str, help: str, labelnames: Sequence[str] = (), **kw) -> Family:
        return self._family(name, help, GAUGE, labelnames, **kw)

    def histogram(self, name: str, help: str, labelnames: Sequence[str] = (), **kw) -> Family:
        return self._family(name, help, HISTOGRAM, labelnames, **kw)

    def get(self, name: str) -> Family | None:
        return self._families.get(name)

    def _family(self, name: str, help: str, kind: str, labelnames: Sequence[str], **kw) -> Family:
        if not METRIC_NAME.fullmatch(name):
            raise MetricError(f"{name!r} is not a valid metric name ([a-zA-Z_:][a-zA-Z0-9_:]*)")
        for label in labelnames:
            if not LABEL_NAME.fullmatch(label) or label.startswith("__") or label == "le":
                raise MetricError(f"{label!r} is not a valid label name for {name}")
        with self._lock:
            family = self._families.get(name)
            if family is None:
                family = self._families[name] = Family(name, help, kind, labelnames, **kw)
            elif family.kind != kind or family.labelnames != tuple(labelnames):
                raise MetricError(
                    f"metric {name} is already a {family.kind} with labels "
                    f"({', '.join(family.labelnames)}); it cannot also be a {kind} with "
                    f"labels ({', '.join(labelnames)})"
                )
            return family

    def families(self) -> list[Family]:
        with self._lock:
            return sorted(self._families.values(), key=lambda f: f.name)

    def render(self) -> str:
        """Every metric in the Prometheus text exposition format (version 0.0.4)."""
        return "".join(line + "\n" for family in self.families() for line in family.lines())


def _labels(pairs: Sequence[tuple[str, str]]) -> str:
    if not pairs:
        return ""
    inner = ",".join(f'{k}="{_escape_value(v)}"' for k, v in pairs)
    return "{" + inner + "}"


def _escape_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _number(value: float) -> str:
    if value == math.inf:
        return "+Inf"
    if value == -math.inf:
        return "-Inf"
    if value != value:
        return "NaN"
    if float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))
