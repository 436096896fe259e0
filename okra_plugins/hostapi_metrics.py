"""Host API `okra.metrics`: services record counters, gauges and histograms, exported
with the runtime's own metrics (`Metrics.render`, GET /metrics).

A guest metric `name` becomes the family `okra_service_<name>` whose first label is
`service` (the recording service's fully qualified name), followed by the guest's labels;
a family's kind and label set are fixed by its first record. Every label combination is a
series the host keeps forever, so a service may create at most `max_series` of them (all
its families together): a guest putting user input into a label value cannot grow the
host's memory without bound.
"""

from __future__ import annotations

import math
import re
import struct
import threading
import weakref
from collections.abc import Mapping, Sequence
from typing import Any

from okra_core.abi import iter_fields
from okra_core.errors import ConfigError
from okra_core.hookspecs import hookimpl
from okra_core.hostapi import HostContext, HostEnvironment, HostError, HostFunction, check_settings
from okra_core.metrics import COUNTER, GAUGE, HISTOGRAM, LABEL_NAME, Family, MetricError, Metrics
from okra_core.status import StatusCode

PREFIX = "okra_service_"
HELP = "recorded by services through okra.metrics"
#: Guest kind -> metric kind.
KINDS = {1: COUNTER, 2: GAUGE, 3: HISTOGRAM}
NAME = re.compile(r"[a-z_][a-z0-9_]*")
MAX_NAME_CHARS = 128
MAX_LABELS = 8
MAX_LABEL_NAME_CHARS = 64
MAX_LABEL_VALUE_CHARS = 128
#: Largest MetricRecord read from the guest; a valid one is far smaller.
MAX_RECORD_BYTES = 16 * 1024
#: The label the host sets; a guest may not.
SERVICE_LABEL = "service"

DEFAULT_MAX_SERIES = 1000
#: The highest max_series a manifest may ask for: every series costs host memory (up to
#: 8 labels of 128 characters each), so even a generous service stays in megabytes.
MAX_MAX_SERIES = 10_000
SETTINGS = ("max_series",)
POLICY_SETTINGS = ("max_series", "rule")

_F64 = struct.Struct("<d")


def invalid(message: str) -> HostError:
    return HostError(StatusCode.INVALID_ARGUMENT, message)


def decode_record(data: bytes) -> tuple[int, str, float, list[tuple[str, str]]]:
    """A MetricRecord -> (kind, name, value, labels). ValueError if it does not parse."""
    kind, name, value = 0, "", 0.0
    labels: list[tuple[str, str]] = []
    for number, raw in iter_fields(data):
        if number == 1:
            kind = _varint(raw, "kind")
        elif number == 2:
            name = _string(raw, "name")
        elif number == 3:
            if isinstance(raw, int) or len(raw) != 8:
                raise ValueError("value must be a double (fixed64)")
            value = _F64.unpack(raw)[0]
        elif number == 4:
            label_name = label_value = ""
            for sub, sub_raw in iter_fields(_bytes(raw, "labels")):
                if sub == 1:
                    label_name = _string(sub_raw, "label name")
                elif sub == 2:
                    label_value = _string(sub_raw, "label value")
            labels.append((label_name, label_value))
    return kind, name, value, labels


def _varint(raw: Any, what: str) -> int:
    if not isinstance(raw, int):
        raise ValueError(f"{what} must be a varint")
    return raw


def _bytes(raw: Any, what: str) -> memoryview:
    if isinstance(raw, int):
        raise ValueError(f"{what} must be length-delimited")
    return raw


def _string(raw: Any, what: str) -> str:
    try:
        return bytes(_bytes(raw, what)).decode()
    except UnicodeDecodeError:
        raise ValueError(f"{what} is not valid UTF-8") from None


def check_record(kind: int, name: str, value: float, labels: Sequence[tuple[str, str]]) -> str:
    """Raise INVALID_ARGUMENT for a record the host would not keep; return its kind."""
    metric_kind = KINDS.get(kind)
    if metric_kind is None:
        raise invalid(f"unknown metric kind {kind} (1 counter, 2 gauge, 3 histogram)")
    if not NAME.fullmatch(name) or len(name) > MAX_NAME_CHARS:
        raise invalid(
            f"metric name {name[:MAX_NAME_CHARS]!r} is not valid: [a-z_][a-z0-9_]*, at most "
            f"{MAX_NAME_CHARS} characters"
        )
    if not math.isfinite(value):
        raise invalid(f"metric {name}: value {value} is not a finite number")
    if metric_kind == COUNTER and value < 0:
        raise invalid(f"counter {name} only goes up: got {value}")
    if len(labels) > MAX_LABELS:
        raise invalid(f"metric {name} has {len(labels)} labels; at most {MAX_LABELS}")
    seen = set()
    for label, label_value in labels:
        if (
            not LABEL_NAME.fullmatch(label) or label.startswith("__") or label == "le"
            or len(label) > MAX_LABEL_NAME_CHARS
        ):
            raise invalid(
                f"metric {name}: label name {label[:MAX_LABEL_NAME_CHARS]!r} is not valid "
                f"([a-zA-Z_][a-zA-Z0-9_]*, not starting with __, not le, at most "
                f"{MAX_LABEL_NAME_CHARS} characters)"
            )
        if label == SERVICE_LABEL:
            raise invalid(f"metric {name}: the label {SERVICE_LABEL!r} is set by the host")
        if label in seen:
            raise invalid(f"metric {name}: label {label!r} is given twice")
        seen.add(label)
        if len(label_value) > MAX_LABEL_VALUE_CHARS:
            raise invalid(
                f"metric {name}: the value of label {label!r} is {len(label_value)} characters; "
                f"at most {MAX_LABEL_VALUE_CHARS}"
            )
    return metric_kind


class SeriesBook:
    """Which series each service has created, across all its families, in one Metrics
    registry: shared by every deploy against that registry, so redeploying a service does
    not give it a fresh budget. O(1) per record: a set lookup, and an add for a new series.
    """

    def __init__(self, metrics: Metrics):
        self._metrics = metrics
        self._lock = threading.Lock()
        self._series: dict[str, set[tuple[str, tuple[str, ...]]]] = {}
        self._warned: set[str] = set()

    def count(self, service: str) -> int:
        with self._lock:
            return len(self._series.get(service, ()))

    def record(
        self, ctx: HostContext, kind: str, name: str, value: float,
        labels: Sequence[tuple[str, str]], max_series: int,
    ) -> None:
        service = ctx.service
        family_name = PREFIX + name
        family = self._metrics.get(family_name)
        values = _ordered(family, kind, name, labels) if family else tuple(v for _, v in labels)
        key = (family_name, values)
        with self._lock:
            series = self._series.setdefault(service, set())
            if key not in series:
                if len(series) >= max_series:
                    first = service not in self._warned
                    self._warned.add(service)
                    if first:
                        ctx.logger.warning(
                            "okra.metrics: %s reached max_series (%d); new label combinations "
                            "are refused", service, max_series,
                        )
                    raise HostError(
                        StatusCode.RESOURCE_EXHAUSTED,
                        f"{service} already has {max_series} metric series (max_series): use "
                        'fewer distinct label values, or raise max_series in [host_apis."okra.metrics"]',
                    )
                if family is None:
                    family = self._family(kind, name, labels)
                    values = _ordered(family, kind, name, labels)
                    key = (family_name, values)
                series.add(key)
        child = family.labels(service, *values)
        if kind == COUNTER:
            child.inc(value)
        elif kind == GAUGE:
            child.set(value)
        else:
            child.observe(value)

    def _family(self, kind: str, name: str, labels: Sequence[tuple[str, str]]) -> Family:
        labelnames = (SERVICE_LABEL, *(label for label, _ in labels))
        try:
            make = {COUNTER: self._metrics.counter, GAUGE: self._metrics.gauge,
                    HISTOGRAM: self._metrics.histogram}[kind]
            return make(PREFIX + name, HELP, labelnames)
        except MetricError:
            # Made meanwhile by another call, perhaps with the same labels in another order.
            family = self._metrics.get(PREFIX + name)
            if family is None:
                raise
            _ordered(family, kind, name, labels)
            return family

    def forget(self, service: str) -> None:
        """Drop a service's series (when it is undeployed for good) and its budget use."""
        with self._lock:
            self._series.pop(service, None)
            self._warned.discard(service)
        for family in self._metrics.families():
            if family.name.startswith(PREFIX) and family.labelnames[:1] == (SERVICE_LABEL,):
                family.remove_matching(SERVICE_LABEL, service)


def _ordered(family: Family, kind: str, name: str, labels: Sequence[tuple[str, str]]) -> tuple[str, ...]:
    """The label values in the family's order; INVALID_ARGUMENT if the record's kind or
    label names are not the family's."""
    given = dict(labels)
    expected = family.labelnames[1:]
    if family.kind != kind or family.labelnames[:1] != (SERVICE_LABEL,) or set(expected) != set(given):
        raise invalid(
            f"metric {name} is a {family.kind} with labels ({', '.join(expected) or 'none'}); "
            f"this record is a {kind} with labels ({', '.join(given) or 'none'}): record it "
            "with the same kind and labels, or use another name"
        )
    return tuple(given[label] for label in expected)


_books: weakref.WeakKeyDictionary[Metrics, SeriesBook] = weakref.WeakKeyDictionary()
_books_lock = threading.Lock()


def series_book(metrics: Metrics) -> SeriesBook:
    """The one SeriesBook of a Metrics registry."""
    with _books_lock:
        book = _books.get(metrics)
        if book is None:
            book = _books[metrics] = SeriesBook(metrics)
        return book


def forget_service(metrics: Metrics, service: str) -> None:
    """Remove every series `service` recorded through okra.metrics (for the runtime to
    call when a service is undeployed and will not come back)."""
    series_book(metrics).forget(service)


def parse_max_series(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_MAX_SERIES:
        raise ConfigError(f"{where}: max_series must be an integer from 1 to {MAX_MAX_SERIES}")
    return value


class MetricsAPI:
    namespace = "okra.metrics"
    description = "counters, gauges and histograms, exported with the runtime's metrics"

    def function_names(self) -> Sequence[str]:
        return ("record",)

    def release_service(self, service: str, env: HostEnvironment) -> None:
        """The service is undeployed: its series go, and its max_series budget with them."""
        forget_service(env.metrics, service)

    def functions(self, config: Mapping[str, Any], env: HostEnvironment) -> Sequence[HostFunction]:
        check_settings(config, SETTINGS, "okra.metrics settings")
        max_series = parse_max_series(
            config.get("max_series", DEFAULT_MAX_SERIES), 'host_apis."okra.metrics"'
        )
        book = series_book(env.metrics)

        def record(ctx: HostContext, req_ptr: int, req_len: int) -> int:
            if req_len > MAX_RECORD_BYTES:
                raise invalid(f"a MetricRecord is at most {MAX_RECORD_BYTES} bytes (got {req_len})")
            assert ctx.memory is not None
            data = ctx.memory.read(req_ptr, req_len)
            try:
                kind, name, value, labels = decode_record(data)
            except ValueError as exc:
                raise invalid(f"malformed MetricRecord: {exc}") from None
            metric_kind = check_record(kind, name, value, labels)
            book.record(ctx, metric_kind, name, value, labels, max_series)
            return 0

        return (HostFunction(self.namespace, "record", ("i32", "i32"), record, blocking=False),)

    def narrow(self, requested: Mapping[str, Any], policy: Mapping[str, Any]) -> Mapping[str, Any]:
        """A policy's `max_series` caps the manifest's: the smaller one applies. Never
        fails a deploy (a service over its cap gets RESOURCE_EXHAUSTED at run time)."""
        check_settings(policy, POLICY_SETTINGS, "okra.metrics policy settings")
        if "max_series" not in policy:
            return requested
        rule = policy.get("rule", "operator policy")
        cap = parse_max_series(policy["max_series"], f"policy rule {rule!r}: okra.metrics")
        wanted = parse_max_series(
            requested.get("max_series", DEFAULT_MAX_SERIES), 'host_apis."okra.metrics"'
        )
        return {**requested, "max_series": min(wanted, cap)}


@hookimpl
def register_host_apis(register):
    register(MetricsAPI())
