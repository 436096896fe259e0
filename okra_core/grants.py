"""Capability grants: which host functions a package's instances are linked with.

Effective grant = what the manifest asks for, narrowed by the operator: the runtime's
allowed set (`RuntimeConfig.allowed_host_apis`) and every matching rule of its policy
(`okra_core.policy`). Only granted functions are linked; a module that imports anything
else fails the deploy with a message that says what would grant it, or which rule
forbids it. Denials at deploy are audit events, like denials at run time.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from okra_core import abi
from okra_core.config import RuntimeConfig
from okra_core.engine import CompiledModule
from okra_core.errors import (
    AbiError,
    CapabilityError,
    ConfigError,
    DeployError,
    OkraError,
    PluginError,
)
from okra_core.hostapi import HostEnvironment, HostFunction
from okra_core.manifest import Manifest
from okra_core.plugins import Registry
from okra_core.policy import Policy, Rule

#: The host API whose settings deploy-time overrides (`Runtime.deploy(config=...)`) change.
CONFIG_API = "okra.config"


@dataclasses.dataclass(frozen=True)
class Grants:
    """What one package is granted on one runtime."""

    #: Granted host functions by qualified name ("okra.log.write").
    functions: dict[str, HostFunction]
    #: Effective settings per granted host API (the manifest's, narrowed by policy).
    settings: dict[str, dict[str, Any]]
    #: The operator's caps for this package: the runtime's, lowered by policy limits.
    config: RuntimeConfig
    #: The policy rules that matched the package, in order.
    rules: tuple[Rule, ...] = ()
    #: Namespace -> (rule name, functions) for the rules that narrowed functions.
    narrowed_functions: dict[str, tuple[str, tuple[str, ...]]] = dataclasses.field(
        default_factory=dict
    )
    #: RuntimeConfig cap -> who lowered it ("operator policy rule 'x'"), for messages.
    sources: dict[str, str] = dataclasses.field(default_factory=dict)


def grant(
    manifest: Manifest,
    registry: Registry,
    config: RuntimeConfig,
    env: HostEnvironment | None = None,
    *,
    overrides: Mapping[str, str] | None = None,
) -> Grants:
    """The grants of `manifest` on a runtime with `config` (and its policy). Raises
    CapabilityError (or DeployError for bad settings); denials are audited via `env`."""
    policy = config.policy or Policy()
    # The runtime checks its policy when it starts; checked here too, so no path to a
    # grant (a runtime, `okra build`) can skip it: a misspelt API must not grant more.
    try:
        policy.check(registry)
    except ConfigError as exc:
        raise DeployError(str(exc)) from None
    rules = tuple(policy.rules_for(manifest.name, manifest.services, manifest.tags))
    audit = env.audit if env is not None else None

    def deny(namespace: str, message: str) -> CapabilityError:
        if audit is not None:
            audit.denied(manifest.name, namespace, message, level=logging.DEBUG, at="deploy")
        return CapabilityError(message)

    requested = {ns: dict(s) for ns, s in manifest.host_apis.items()}
    if overrides:
        if CONFIG_API not in requested:
            raise DeployError(
                f"configuration overrides given for package {manifest.name!r}, which does not "
                f'ask for {CONFIG_API}: add [host_apis."{CONFIG_API}"] to its okra.toml'
            )
        values = dict(requested[CONFIG_API].get("values") or {})
        values.update(overrides)
        requested[CONFIG_API]["values"] = values

    functions: dict[str, HostFunction] = {}
    settings: dict[str, dict[str, Any]] = {}
    narrowed: dict[str, tuple[str, tuple[str, ...]]] = {}
    for namespace, asked in requested.items():
        if not config.allows(namespace):
            allowed = ", ".join(sorted(config.allowed_host_apis or ())) or "none"
            raise deny(namespace, (
                f"package {manifest.name!r} requests host API {namespace}, which "
                f"the operator policy does not allow (allowed: {allowed})"
            ))
        for rule in rules:
            if namespace in rule.deny:
                raise deny(namespace, (
                    f"package {manifest.name!r} requests host API {namespace}, which "
                    f"operator policy rule {rule.name!r} ({policy.source}) denies"
                ))
        try:
            api = registry.host_api(namespace)
        except PluginError:
            raise CapabilityError(
                f"package {manifest.name!r} requests host API {namespace}, but no "
                "installed plugin provides it (see `okra plugins`)"
            ) from None
        reserved = sorted(set(asked) & set(getattr(api, "internal_settings", ())))
        if reserved:
            raise DeployError(
                f"package {manifest.name!r}: {', '.join(reserved)} in "
                f'[host_apis."{namespace}"] {"is" if len(reserved) == 1 else "are"} set by '
                f"operator policy, not by a package: remove {'it' if len(reserved) == 1 else 'them'} "
                "from okra.toml"
            )
        options = {k: v for k, v in asked.items() if k != "functions"}
        wanted = asked.get("functions")
        known = tuple(api.function_names())
        if wanted is not None:
            unknown = sorted(set(wanted) - set(known))
            if unknown:
                raise CapabilityError(
                    f"host_apis[{namespace!r}].functions names {', '.join(unknown)}, "
                    f"which {namespace} does not have (it has: {', '.join(known)})"
                )
        for rule in rules:
            narrowing = dict(rule.host_apis.get(namespace) or {})
            if not narrowing:
                continue
            allowed_functions = narrowing.pop("functions", None)
            if allowed_functions is not None:
                base = known if wanted is None else wanted
                wanted = [f for f in base if f in allowed_functions]
                narrowed[namespace] = (rule.name, tuple(wanted))
            if narrowing:
                options = _narrow(api, namespace, options, narrowing, rule, policy, deny)
        try:
            built = api.functions(options, env) if env is not None else api.functions(options, _offline())
        except OkraError as exc:
            raise DeployError(f"host API {namespace}: {exc}") from None
        for fn in built:
            if wanted is None or fn.name in wanted:
                functions[fn.qualified_name] = fn
        settings[namespace] = options
    capped, sources = _capped_config(config, rules, policy)
    return Grants(functions, settings, capped, rules, narrowed, sources)


def _narrow(api: Any, namespace: str, options: dict, narrowing: dict, rule: Rule,
            policy: Policy, deny: Any) -> dict:
    narrow = getattr(api, "narrow", None)
    if narrow is None:
        raise DeployError(
            f"operator policy rule {rule.name!r} ({policy.source}) gives settings for "
            f"{namespace}, which that host API cannot be narrowed by: remove them, or deny "
            "the API"
        )
    try:
        return dict(narrow(options, {**narrowing, "rule": rule.name}))
    except ConfigError as exc:
        raise deny(namespace, (
            f"host API {namespace}: operator policy rule {rule.name!r} ({policy.source}): {exc}"
        )) from None


def _capped_config(
    config: RuntimeConfig, rules: Sequence[Rule], policy: Policy
) -> tuple[RuntimeConfig, dict[str, str]]:
    caps: dict[str, Any] = {}
    sources: dict[str, str] = {}
    fields = {
        "memory_bytes": "max_memory_bytes",
        "timeout_seconds": "max_call_seconds",
        "request_bytes": "max_request_bytes",
        "response_bytes": "max_response_bytes",
    }
    for rule in rules:
        for key, value in rule.limits.items():
            field = fields[key]
            if value < caps.get(field, getattr(config, field)):
                caps[field] = value
                sources[field] = f"operator policy rule {rule.name!r} ({policy.source})"
    return (dataclasses.replace(config, **caps) if caps else config), sources


def _offline() -> HostEnvironment:
    """An environment for checks that never call a host function (`okra build`)."""
    from okra_core.audit import Audit
    from okra_core.clock import SystemClock
    from okra_core.metrics import Metrics

    def unavailable(*_: Any, **__: Any) -> Any:
        raise RuntimeError("no runtime: host functions cannot run during a build check")

    return HostEnvironment(
        clock=SystemClock(), metrics=Metrics(), audit=Audit(), state=unavailable,
        secrets=unavailable, invoke=unavailable,
    )


def check_imports(
    module: CompiledModule,
    grants: Grants,
    requested: Mapping[str, Any],
    abi_version: int = abi.ABI_VERSION,
) -> None:
    """Every import must be WASI, `okra.abi` (as of the module's ABI version), or a
    granted host function; otherwise the error names the import and what would grant it."""
    abi_names = {fn.name: fn for fn in abi.abi_functions(abi_version)}
    for imp in module.imports:
        if imp.module == abi.WASI_NAMESPACE:
            continue  # the engine links WASI; an unknown WASI function fails at probe
        name = imp.qualified_name
        if imp.module == abi.ABI_NAMESPACE:
            fn = abi_names.get(imp.name)
            if fn is None:
                raise AbiError(_undefined_abi_function(name, imp.name, abi_version))
        elif imp.module.startswith(abi.HOST_API_PREFIX):
            fn = grants.functions.get(name)
            if fn is None:
                raise CapabilityError(_why_not_granted(imp.module, imp.name, requested, grants))
        else:
            raise CapabilityError(
                f"module imports {name} from namespace {imp.module!r}, which OKRA never "
                f"links: guests may import only {abi.WASI_NAMESPACE}, {abi.ABI_NAMESPACE} "
                "and granted okra.* host APIs"
            )
        if imp.kind != "func" or (imp.params, imp.results) != (fn.params, fn.results):
            raise AbiError(
                f"module imports {name} as {imp.kind} {signature(imp.params, imp.results)}, "
                f"but the host provides func {signature(fn.params, fn.results)}"
            )


def _undefined_abi_function(name: str, function: str, abi_version: int) -> str:
    message = f"module imports {name}, which guest ABI v{abi_version} does not define"
    for later in sorted(abi.SUPPORTED_ABI_VERSIONS):
        if later > abi_version and any(fn.name == function for fn in abi.abi_functions(later)):
            return (
                f"{message}; it arrived in v{later}: build the module for guest ABI v{later} "
                f'and say "abi_version": {later} in okra.service.json'
            )
    return message


def _why_not_granted(
    namespace: str, function: str, requested: Mapping[str, Any], grants: Grants
) -> str:
    name = f"{namespace}.{function}"
    if namespace not in requested:
        return (
            f"module imports {name}, but the manifest does not grant it: add "
            f'"{namespace}" to "host_apis" in okra.service.json '
            f'(in a project: a [host_apis."{namespace}"] table in okra.toml)'
        )
    functions = requested[namespace].get("functions")
    if functions is not None and function not in functions:
        return (
            f"module imports {name}, but the manifest grants only "
            f"{', '.join(functions) or 'no functions'} of {namespace}: add "
            f'"{function}" to host_apis["{namespace}"]["functions"] in okra.service.json '
            f'(in a project: to functions in [host_apis."{namespace}"] in okra.toml)'
        )
    if namespace in grants.narrowed_functions:
        rule, allowed = grants.narrowed_functions[namespace]
        return (
            f"module imports {name}, but operator policy rule {rule!r} grants only "
            f"{', '.join(allowed) or 'no functions'} of {namespace}"
        )
    return f"module imports {name}, but host API {namespace} has no function {function!r}"


def signature(params: Sequence[str], results: Sequence[str]) -> str:
    return f"({', '.join(params)}) -> ({', '.join(results)})"
