"""Host API `okra.config`: named configuration values a service reads at run time.

Values come from `[host_apis."okra.config"] values = {...}` in okra.toml; the runtime
merges deploy-time overrides (`Runtime.deploy(config=...)`, `okra serve --config`) into
`values` before building the functions, and an operator policy may pin values
(`narrow`). The guest sees only strings: numbers and booleans are rendered the way TOML
writes them, so `port = 8080` reads as "8080" and `debug = true` as "true".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from okra_core.errors import ConfigError
from okra_core.hookspecs import hookimpl
from okra_core.hostapi import HostContext, HostEnvironment, HostError, HostFunction, check_settings
from okra_core.status import StatusCode

#: Longest name, in characters.
MAX_NAME_CHARS = 256
#: Longest name in UTF-8 bytes: a key longer than this cannot name anything, so the host
#: refuses it before copying it out of guest memory.
MAX_NAME_BYTES = 4 * MAX_NAME_CHARS
#: Largest value, in UTF-8 bytes.
MAX_VALUE_BYTES = 64 * 1024

SETTINGS = ("values",)
POLICY_SETTINGS = ("values", "rule")


def render_value(name: str, value: Any, where: str = "okra.config values") -> str:
    """A setting's value as the string the guest reads; ConfigError for other types."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    raise ConfigError(
        f"{where}: {name!r} is a {type(value).__name__}: values must be strings, numbers "
        "or booleans"
    )


def parse_values(values: Any, where: str = "okra.config values") -> dict[str, str]:
    """Check a `values` table and render it: name -> string."""
    if not isinstance(values, Mapping):
        raise ConfigError(f"{where} must be a table of name = value, got {type(values).__name__}")
    out: dict[str, str] = {}
    for name, value in values.items():
        if not isinstance(name, str) or not name or len(name) > MAX_NAME_CHARS:
            raise ConfigError(
                f"{where}: {name!r} is not a valid name (non-empty, at most {MAX_NAME_CHARS} "
                "characters)"
            )
        text = render_value(name, value, where)
        try:
            name.encode()
            size = len(text.encode())
        except UnicodeEncodeError:
            raise ConfigError(f"{where}: {name!r} (or its value) is not valid Unicode") from None
        if size > MAX_VALUE_BYTES:
            raise ConfigError(
                f"{where}: value {name!r} is longer than {MAX_VALUE_BYTES} bytes"
            )
        out[name] = text
    return out


class ConfigAPI:
    namespace = "okra.config"
    description = "named configuration values, set in okra.toml or at deploy"

    def function_names(self) -> Sequence[str]:
        return ("get",)

    def functions(self, config: Mapping[str, Any], env: HostEnvironment) -> Sequence[HostFunction]:
        check_settings(config, SETTINGS, "okra.config settings")
        values = {
            name.encode(): text.encode()
            for name, text in parse_values(config.get("values", {})).items()
        }

        def get(ctx: HostContext, key_ptr: int, key_len: int, out_ptr: int, out_cap: int) -> int:
            if key_len > MAX_NAME_BYTES:
                raise HostError(
                    StatusCode.INVALID_ARGUMENT,
                    f"config names are at most {MAX_NAME_CHARS} characters (got {key_len} bytes)",
                )
            assert ctx.memory is not None
            key = ctx.memory.read(key_ptr, key_len)
            value = values.get(key)
            if value is None:
                name = key.decode("utf-8", "replace")
                raise HostError(
                    StatusCode.NOT_FOUND,
                    f'no config value named {name!r}: set it in values of [host_apis."okra.config"] '
                    f"in okra.toml, or at deploy (--config {name}=VALUE)",
                )
            return ctx.return_data(value, out_ptr, out_cap)

        return (HostFunction(self.namespace, "get", ("i32", "i32", "i32", "i32"), get, blocking=False),)

    def narrow(self, requested: Mapping[str, Any], policy: Mapping[str, Any]) -> Mapping[str, Any]:
        """Policy pins values: each name in the policy's `values` reads as the policy says,
        whatever the manifest (or a deploy-time override) set; other names are left as
        requested. Pinning adds no capability, so it never fails a deploy."""
        check_settings(policy, POLICY_SETTINGS, "okra.config policy settings")
        if "values" not in policy:
            return requested
        rule = policy.get("rule", "operator policy")
        pinned = parse_values(policy["values"], f"{rule}: okra.config values")
        merged = dict(parse_values(requested.get("values", {})))
        merged.update(pinned)
        return {**requested, "values": merged}


@hookimpl
def register_host_apis(register):
    register(ConfigAPI())
