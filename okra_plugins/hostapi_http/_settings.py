"""okra.http settings: what a package asks for in okra.toml, checked, and how an
operator policy rule narrows it (`narrow`).

A policy rule cannot widen anything: its limits are ceilings and its allow-list is a
second list every request must also pass, so the effective settings carry each rule's
list (`policy_allow`) next to the manifest's, with the rule's name for denial messages.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from okra_core.errors import ConfigError
from okra_core.units import parse_size
from okra_plugins.hostapi_http._allowlist import Entry, parse_allow_list

WHERE = '[host_apis."okra.http"]'
#: Settings a package may give in okra.toml.
MANIFEST_KEYS = (
    "allow", "timeout_seconds", "max_request_bytes", "max_response_bytes", "max_redirects",
    "max_url_bytes",
)
#: Settings a policy rule may give ("rule" is its name, passed by the policy layer).
POLICY_KEYS = (
    "allow", "timeout_seconds", "max_request_bytes", "max_response_bytes", "max_redirects",
    "rule",
)
#: Written by `narrow`: each policy rule's allow-list, as [{"rule": ..., "allow": [...]}].
POLICY_ALLOW = "policy_allow"
#: Which functions are linked; the runtime handles it, so it passes through untouched.
FUNCTIONS = "functions"
MAX_TIMEOUT_SECONDS = 60
MAX_REDIRECTS = 20
SIZE_KEYS = ("max_request_bytes", "max_response_bytes", "max_url_bytes")
#: The largest max_response_bytes a manifest or policy may set: a response is held in
#: host memory whole, so this bounds what one fetch can cost the host. Operators lower
#: it per package with a policy rule's max_response_bytes.
MAX_RESPONSE_BYTES_LIMIT = 64 * 1024 * 1024


@dataclasses.dataclass(frozen=True)
class PolicyAllow:
    """One policy rule's allow-list."""

    rule: str
    entries: tuple[Entry, ...]


@dataclasses.dataclass(frozen=True)
class Settings:
    #: The manifest's allow-list; empty means nothing is allowed.
    allow: tuple[Entry, ...] = ()
    policy: tuple[PolicyAllow, ...] = ()
    timeout_seconds: float = 10.0
    max_request_bytes: int = 1024 * 1024
    max_response_bytes: int = 4 * 1024 * 1024
    max_redirects: int = 5
    max_url_bytes: int = 8192


DEFAULTS = Settings()


def parse_settings(config: Mapping[str, Any]) -> Settings:
    """Settings from the (possibly narrowed) config; ConfigError listing the known keys
    for an unknown one."""
    unknown = set(config) - set(MANIFEST_KEYS) - {POLICY_ALLOW, FUNCTIONS}
    if unknown:
        raise ConfigError(
            f"unknown okra.http settings in {WHERE}: {', '.join(sorted(map(str, unknown)))} "
            f"(known: {', '.join(MANIFEST_KEYS)})"
        )
    values: dict[str, Any] = {"allow": parse_allow_list(config.get("allow", []), f"{WHERE} allow")}
    for key in ("timeout_seconds", "max_redirects", *SIZE_KEYS):
        if key in config:
            values[key] = _parse_limit(key, config[key], WHERE)
    values["policy"] = _parse_policy_allow(config.get(POLICY_ALLOW, []))
    return Settings(**values)


def _parse_limit(key: str, value: Any, where: str) -> Any:
    if key == "timeout_seconds":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
            0 < value <= MAX_TIMEOUT_SECONDS
        ):
            raise ConfigError(
                f"{where} timeout_seconds must be a number of seconds above 0 and at most "
                f"{MAX_TIMEOUT_SECONDS}, e.g. timeout_seconds = 10; got {value!r}"
            )
        return float(value)
    if key == "max_redirects":
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_REDIRECTS:
            raise ConfigError(
                f"{where} max_redirects must be a whole number from 0 to {MAX_REDIRECTS}; "
                f"got {value!r}"
            )
        return value
    if key == "max_response_bytes":
        try:
            return parse_size(value, f"{where} {key}", maximum=MAX_RESPONSE_BYTES_LIMIT)
        except ConfigError as exc:
            raise ConfigError(
                f"{exc} (okra.http holds a response in memory, so max_response_bytes is at "
                f"most {MAX_RESPONSE_BYTES_LIMIT // (1024 * 1024)} MiB)"
            ) from None
    return parse_size(value, f"{where} {key}")


def _parse_policy_allow(value: Any) -> tuple[PolicyAllow, ...]:
    if not isinstance(value, (list, tuple)) or not all(
        isinstance(item, Mapping) and set(item) == {"rule", "allow"} and isinstance(item["rule"], str)
        for item in value
    ):
        raise ConfigError(
            f'okra.http {POLICY_ALLOW} must be a list of {{"rule": name, "allow": [...]}} '
            "(it is written by operator policy, not by hand)"
        )
    return tuple(
        PolicyAllow(item["rule"], parse_allow_list(item["allow"], f"policy rule {item['rule']!r}"))
        for item in value
    )


def narrow(requested: Mapping[str, Any], policy: Mapping[str, Any]) -> dict[str, Any]:
    """The settings a package gets under one policy rule: limits lowered to the rule's,
    and the rule's allow-list added as one more list every request must pass.

    Fails the deploy (ConfigError naming the rule) when the rule allows nothing of what
    one of the manifest's entries asks for: that entry could never be used.
    """
    unknown = set(policy) - set(POLICY_KEYS) - {FUNCTIONS}
    if unknown:
        raise ConfigError(
            f"unknown okra.http policy settings: {', '.join(sorted(map(str, unknown)))} "
            f"(known: {', '.join(POLICY_KEYS)})"
        )
    rule = str(policy.get("rule") or "operator policy")
    where = f"policy rule {rule!r}: okra.http"
    current = parse_settings(requested)
    narrowed = dict(requested)
    for key in ("timeout_seconds", "max_redirects", *SIZE_KEYS):
        if key in policy:
            ceiling = _parse_limit(key, policy[key], where)
            narrowed[key] = min(getattr(current, key), ceiling)
    if "allow" in policy:
        entries = parse_allow_list(policy["allow"], where)
        for entry in current.allow:
            if not any(entry.overlaps(other) for other in entries):
                allowed = ", ".join(f'"{e}"' for e in entries) or "nothing"
                raise ConfigError(
                    f'okra.http: policy rule {rule!r} allows nothing that allow entry "{entry}" '
                    f"in {WHERE} (okra.toml) asks for (the rule allows {allowed}): remove the "
                    "entry, or ask the operator to allow it"
                )
        narrowed[POLICY_ALLOW] = [
            *requested.get(POLICY_ALLOW, []),
            {"rule": rule, "allow": [str(e) for e in entries]},
        ]
    return narrowed
