"""Operator policy: what services may use, whatever their manifests ask for.

A policy is a list of rules (a TOML file, `okra serve --policy FILE`; format in
docs/policy.md). A rule selects packages by service name, package name or tag (no
selector: every package) and then denies host APIs, narrows a host API's settings (each
API says how, in its `narrow`), narrows the functions granted, or caps limits. Every
matching rule applies, in file order. The effective grant is what the manifest asks for,
narrowed by every matching rule; the deploy fails, naming the rule, when a package needs
what a rule takes away.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from okra_core.errors import ConfigError
from okra_core.units import parse_size

if TYPE_CHECKING:
    from okra_core.plugins import Registry

_RULE_KEYS = ("name", "services", "packages", "tags", "deny", "host_apis", "limits")
_LIMIT_KEYS = ("memory_bytes", "timeout_seconds", "request_bytes", "response_bytes")


@dataclasses.dataclass(frozen=True)
class Rule:
    name: str
    #: Selectors (globs for services and packages); a package matches a rule when any
    #: selector matches it, or when the rule has none.
    services: tuple[str, ...] = ()
    packages: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    #: Host API namespaces no matching package may be granted.
    deny: tuple[str, ...] = ()
    #: Per host API namespace: settings that narrow what the manifest asks for; the key
    #: "functions" narrows the functions granted.
    host_apis: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)
    #: Caps on the package's limits (memory_bytes, timeout_seconds, request_bytes,
    #: response_bytes).
    limits: Mapping[str, float] = dataclasses.field(default_factory=dict)

    def matches(self, package: str, services: Sequence[str], tags: Sequence[str]) -> bool:
        if not (self.services or self.packages or self.tags):
            return True
        return (
            any(fnmatch.fnmatchcase(s, g) for s in services for g in self.services)
            or any(fnmatch.fnmatchcase(package, g) for g in self.packages)
            or bool(set(tags) & set(self.tags))
        )


@dataclasses.dataclass(frozen=True)
class Policy:
    rules: tuple[Rule, ...] = ()
    #: Where the policy came from, for messages ("policy.toml").
    source: str = "policy"

    def rules_for(self, package: str, services: Sequence[str], tags: Sequence[str]) -> list[Rule]:
        return [r for r in self.rules if r.matches(package, services, tags)]

    def check(self, registry: Registry) -> None:
        """Check the policy against the installed host APIs: every name in `deny` and
        `host_apis` must be one, and each API's settings must be ones it accepts (its
        `narrow`, applied to a manifest that asks for nothing more than the API).
        ConfigError names the file and the rule. The runtime runs it before any grant,
        so a typo never silently grants more."""
        installed = registry.names("host_apis")

        def unknown(where: str, namespace: str) -> ConfigError:
            return ConfigError(
                f"{where} {namespace}, which is not an installed host API "
                f"(installed: {', '.join(installed) or 'none'})"
            )

        for rule in self.rules:
            where = f"{self.source}: rule {rule.name!r}"
            for namespace in rule.deny:
                if namespace not in installed:
                    raise unknown(f"{where}: deny names", namespace)
            for namespace, settings in rule.host_apis.items():
                if namespace not in installed:
                    raise unknown(f'{where}: host_apis."{namespace}" names', namespace)
                _check_settings(registry.host_api(namespace), namespace, settings, rule, where)

    @classmethod
    def load(cls, path: str | Path) -> Policy:
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"cannot read policy file {path}: {exc.strerror or exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"policy file {path} is not valid TOML: {exc}") from None
        return cls.parse(data, source=str(path))

    @classmethod
    def parse(cls, data: Mapping[str, Any], source: str = "policy") -> Policy:
        unknown = set(data) - {"rule"}
        if unknown:
            raise ConfigError(
                f"{source}: unknown top-level keys {', '.join(sorted(unknown))}: a policy is a "
                "list of [[rule]] tables"
            )
        raw_rules = data.get("rule", [])
        if not isinstance(raw_rules, list):
            raise ConfigError(f"{source}: 'rule' must be an array of tables ([[rule]])")
        rules = [_parse_rule(raw, i + 1, source) for i, raw in enumerate(raw_rules)]
        names = [r.name for r in rules]
        for name in names:
            if names.count(name) > 1:
                raise ConfigError(f"{source}: two rules are named {name!r}; names must be unique")
        return cls(tuple(rules), source)


def _check_settings(api: Any, namespace: str, settings: Mapping[str, Any], rule: Rule,
                    where: str) -> None:
    functions = settings.get("functions")
    if functions is not None:
        known = tuple(api.function_names())
        missing = sorted(set(functions) - set(known))
        if missing:
            raise ConfigError(
                f'{where}: host_apis."{namespace}".functions names {", ".join(missing)}, '
                f"which {namespace} does not have (it has: {', '.join(known)})"
            )
    options = {k: v for k, v in settings.items() if k != "functions"}
    if not options:
        return
    narrow = getattr(api, "narrow", None)
    if narrow is None:
        raise ConfigError(
            f"{where}: gives settings for {namespace}, which that host API cannot be narrowed "
            "by: remove them, or deny the API"
        )
    try:
        narrow({}, {**options, "rule": rule.name})
    except ConfigError as exc:
        raise ConfigError(f"{where}: {namespace}: {exc}") from None


def _parse_rule(raw: Any, number: int, source: str) -> Rule:
    where = f"{source}: rule {number}"
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where} must be a table")
    unknown = set(raw) - set(_RULE_KEYS)
    if unknown:
        raise ConfigError(
            f"{where}: unknown keys {', '.join(sorted(unknown))} (known: {', '.join(_RULE_KEYS)})"
        )
    name = raw.get("name", f"rule {number}")
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{where}: 'name' must be a non-empty string")
    where = f"{source}: rule {name!r}"

    def strings(key: str) -> tuple[str, ...]:
        value = raw.get(key, [])
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise ConfigError(f"{where}: {key!r} must be a list of non-empty strings")
        return tuple(value)

    deny = strings("deny")
    for namespace in deny:
        if not namespace.startswith("okra."):
            raise ConfigError(f"{where}: deny names host APIs such as \"okra.http\", got {namespace!r}")
    host_apis = raw.get("host_apis", {})
    if not isinstance(host_apis, Mapping) or not all(
        isinstance(v, Mapping) for v in host_apis.values()
    ):
        raise ConfigError(
            f'{where}: host_apis must hold one table per API, e.g. [rule.host_apis."okra.http"]'
        )
    for namespace, settings in host_apis.items():
        functions = settings.get("functions")
        if functions is not None and (
            not isinstance(functions, list) or not all(isinstance(f, str) for f in functions)
        ):
            raise ConfigError(f"{where}: host_apis.{namespace!r}.functions must be a list of names")
    return Rule(
        name=name,
        services=strings("services"),
        packages=strings("packages"),
        tags=strings("tags"),
        deny=deny,
        host_apis={ns: dict(v) for ns, v in host_apis.items()},
        limits=_parse_limits(raw.get("limits", {}), where),
    )


def _parse_limits(raw: Any, where: str) -> dict[str, float]:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: limits must be a table")
    unknown = set(raw) - set(_LIMIT_KEYS)
    if unknown:
        raise ConfigError(
            f"{where}: unknown limits {', '.join(sorted(unknown))} (known: {', '.join(_LIMIT_KEYS)})"
        )
    out: dict[str, float] = {}
    for key, value in raw.items():
        if key == "timeout_seconds":
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ConfigError(f"{where}: limits.timeout_seconds must be a number > 0")
            out[key] = float(value)
        else:
            out[key] = parse_size(value, f"{where}: limits.{key}")
    return out
