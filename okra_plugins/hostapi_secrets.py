"""Host API `okra.secrets`: a service reads the secrets its manifest names, and no others.

The values come from the runtime's secrets provider (`env`, `dir` or a plugin's), asked
at every read so a rotated secret is seen at once. A value never appears in a log line
or an error message: only names do.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from okra_core.errors import ConfigError, OkraError
from okra_core.hookspecs import hookimpl
from okra_core.hostapi import HostContext, HostEnvironment, HostError, HostFunction, check_settings
from okra_core.secrets import SECRET_NAME
from okra_core.status import StatusCode

#: Longest secret name (SECRET_NAME allows 128 characters, all ASCII).
MAX_NAME_BYTES = 128

SETTINGS = ("names",)
POLICY_SETTINGS = ("names", "rule")


def parse_names(names: Any, where: str) -> list[str]:
    """A `names` setting, checked: a list of unique names matching SECRET_NAME."""
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
        raise ConfigError(f'{where}: names must be a list of secret names, e.g. ["PAYMENT_TOKEN"]')
    for name in names:
        if not SECRET_NAME.fullmatch(name):
            raise ConfigError(
                f"{where}: {name!r} is not a valid secret name (a letter or _, then letters, "
                "digits or _; at most 128 characters)"
            )
    return list(dict.fromkeys(names))


class SecretsAPI:
    namespace = "okra.secrets"
    description = "the secrets the manifest names, from the operator's secrets provider"

    def function_names(self) -> Sequence[str]:
        return ("get",)

    def functions(self, config: Mapping[str, Any], env: HostEnvironment) -> Sequence[HostFunction]:
        check_settings(config, SETTINGS, "okra.secrets settings")
        granted = frozenset(parse_names(config.get("names", []), 'host_apis."okra.secrets"'))
        namespace = self.namespace
        if granted:
            # Open the provider at deploy, so a misconfigured one (a dir that does not
            # exist) fails the deploy rather than the first call. Any other failure (an
            # offline build check has no provider; a remote store is down) is left to
            # `get`, which reports it to the guest and retries on the next call.
            try:
                env.secrets()
            except OkraError:
                raise
            except Exception:
                pass

        def get(ctx: HostContext, name_ptr: int, name_len: int, out_ptr: int, out_cap: int) -> int:
            if not 0 < name_len <= MAX_NAME_BYTES:
                raise HostError(
                    StatusCode.INVALID_ARGUMENT,
                    f"a secret name is 1 to {MAX_NAME_BYTES} characters (got {name_len} bytes)",
                )
            assert ctx.memory is not None
            raw = ctx.memory.read(name_ptr, name_len)
            name = raw.decode("ascii", "replace")
            if not raw.isascii() or not SECRET_NAME.fullmatch(name):
                raise HostError(
                    StatusCode.INVALID_ARGUMENT,
                    f"{name!r} is not a secret name (a letter or _, then letters, digits or _)",
                )
            if name not in granted:
                env.audit.denied(
                    ctx.service, namespace, f"secret {name} is not granted", secret=name
                )
                raise HostError(
                    StatusCode.PERMISSION_DENIED,
                    f'secret {name} is not granted to {ctx.service}: add "{name}" to names in '
                    f'[host_apis."okra.secrets"] in okra.toml',
                )
            provider = None
            try:
                provider = env.secrets()
                value = provider.get(name)
            except Exception as exc:
                # The exception is the provider's (a path, an errno), never the value.
                if provider is None:
                    ctx.logger.error("the secrets provider could not be opened to read secret %s: %s", name, exc)
                else:
                    ctx.logger.error(
                        "secrets provider %s could not read secret %s: %s",
                        getattr(provider, "name", "?"), name, exc,
                    )
                raise HostError(
                    StatusCode.UNAVAILABLE,
                    f"secret {name} could not be read from the secrets provider "
                    "(the host's log says why)",
                ) from None
            if value is None:
                raise HostError(
                    StatusCode.NOT_FOUND,
                    f"secret {name} is granted but the secrets provider "
                    f"({getattr(provider, 'name', '?')}) has no value for it",
                )
            return ctx.return_data(bytes(value), out_ptr, out_cap)

        return (HostFunction(namespace, "get", ("i32", "i32", "i32", "i32"), get, blocking=True),)

    def narrow(self, requested: Mapping[str, Any], policy: Mapping[str, Any]) -> Mapping[str, Any]:
        """The names granted are the manifest's that the policy lists too; a name the
        manifest asks for and the policy does not list fails the deploy, naming both. A
        policy without `names` does not restrict names."""
        check_settings(policy, POLICY_SETTINGS, "okra.secrets policy settings")
        if "names" not in policy:
            return requested
        rule = str(policy.get("rule", "operator policy"))
        allowed = set(parse_names(policy["names"], f"policy rule {rule!r}: okra.secrets"))
        wanted = parse_names(requested.get("names", []), 'host_apis."okra.secrets"')
        refused = [name for name in wanted if name not in allowed]
        if refused:
            listed = ", ".join(refused)
            plural = len(refused) > 1
            raise ConfigError(
                f"policy rule {rule!r} does not allow secret{'s' if plural else ''} {listed}: "
                f'remove {"them" if plural else "it"} from names in [host_apis."okra.secrets"] '
                f"or ask the operator to allow {'them' if plural else 'it'}"
            )
        return {**requested, "names": [name for name in wanted if name in allowed]}


@hookimpl
def register_host_apis(register):
    register(SecretsAPI())
