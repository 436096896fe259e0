"""The package manifest, `okra.service.json`: what a package is and what it asks for.

The manifest is versioned by `"format"` so it can grow. A reader rejects format versions
it does not know, and in format 1 it rejects unknown keys too, so a typo such as
`"host_api"` fails loudly instead of silently granting nothing. Metadata for tools that
OKRA does not interpret goes under `"extensions"`, which is never checked beyond being JSON.
The full format is described in `docs/package.md`.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from okra_core.errors import PackageError

#: The newest manifest format this module reads and writes. Format 2 added "actor",
#: "limits" and "pool.queue", format 3 "tags", format 4 "engine"; a manifest is written
#: in the lowest format that can express it, so older readers still load it.
MANIFEST_FORMAT = 4
SUPPORTED_FORMATS = frozenset({1, 2, 3, 4})
#: Keys (top-level, or "pool.<key>") that arrived with a format, for the error that says
#: which format to declare.
_SINCE = {"actor": 2, "limits": 2, "pool.queue": 2, "tags": 3, "engine": 4}

#: The members of an `.okra.pkg`, and the ones whose digests the manifest records.
MANIFEST_MEMBER = "okra.service.json"
WASM_MEMBER = "service.wasm"
DESCRIPTORS_MEMBER = "service.pb.bin"
DIGESTED_MEMBERS = (WASM_MEMBER, DESCRIPTORS_MEMBER)

NAME_MAX = 64
POOL_MAX = 1024

_NAME = re.compile(r"[a-z][a-z0-9_-]*")
# Semantic Versioning 2.0.0 (semver.org), ASCII digits only.
_SEMVER = re.compile(
    r"(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)"
    r"(?:-((?:0|[1-9][0-9]*|[0-9]*[a-zA-Z-][0-9a-zA-Z-]*)"
    r"(?:\.(?:0|[1-9][0-9]*|[0-9]*[a-zA-Z-][0-9a-zA-Z-]*))*))?"
    r"(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?"
)
_VERSION_MAX = 128
_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
_SERVICE = re.compile(rf"{_IDENT}(?:\.{_IDENT})*")
_FUNCTION = re.compile(_IDENT)
_NAMESPACE = re.compile(r"okra(?:\.[a-z][a-z0-9_]*)+")
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")

_KEYS = (
    "format",
    "name",
    "version",
    "language",
    "abi_version",
    "services",
    "host_apis",
    "pool",
    "actor",
    "limits",
    "tags",
    "engine",
    "digests",
    "extensions",
)
_REQUIRED = ("format", "name", "version", "abi_version", "services")
_POOL_KEYS = ("min", "max", "queue")
_ACTOR_KEYS = ("kind", "key", "max_activations", "idle_seconds")
_LIMIT_KEYS = ("memory_bytes", "timeout_seconds", "request_bytes", "response_bytes")

#: Service kinds (`"actor": {"kind": ...}`); see docs/actors.md.
REGULAR, SINGLETON, KEYED = "regular", "singleton", "keyed"
KINDS = (REGULAR, SINGLETON, KEYED)
QUEUE_MAX = 1_000_000
ACTIVATIONS_MAX = 1_000_000
#: A metadata key: lower-case header name characters (gRPC metadata keys are lower case).
_METADATA_KEY = re.compile(r"[a-z0-9][a-z0-9_.-]*")


def sha256_digest(data: bytes) -> str:
    """The digest of a member as the manifest records it: `sha256:<lower-case hex>`."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class _Invalid(Exception):
    """A manifest defect; becomes PackageError("manifest: ...")."""


def _fail(message: str) -> PackageError:
    return PackageError(f"manifest: {message}")


@dataclasses.dataclass(frozen=True)
class PoolConfig:
    """How many instances of each service the runtime may keep: at least `min` warm
    (0 allows scaling to zero), never more than `max`."""

    min: int = 1
    max: int = 4
    #: Callers that may wait for an instance when all `max` are busy; beyond that a call
    #: fails at once with RESOURCE_EXHAUSTED. None: the runtime's default.
    queue: int | None = None

    def __post_init__(self) -> None:
        try:
            _check_pool(self.min, self.max)
            _check_queue(self.queue)
        except _Invalid as exc:
            raise _fail(str(exc)) from None


def _check_queue(value: Any) -> None:
    if value is not None and (not _is_int(value) or not 0 <= value <= QUEUE_MAX):
        raise _Invalid(f'"pool.queue" must be an integer from 0 to {QUEUE_MAX}, got {value!r}')


def _check_pool(lo: Any, hi: Any) -> None:
    if not _is_int(lo) or lo < 0:
        raise _Invalid(f'"pool.min" must be an integer >= 0, got {lo!r}')
    if not _is_int(hi) or not 1 <= hi <= POOL_MAX:
        raise _Invalid(f'"pool.max" must be an integer from 1 to {POOL_MAX}, got {hi!r}')
    if lo > hi:
        raise _Invalid(f'"pool.min" ({lo}) is larger than "pool.max" ({hi}): lower min or raise max')


@dataclasses.dataclass(frozen=True)
class KeySource:
    """Where a keyed service finds a call's key: a request metadata key, or a top-level
    field of the request message (present in every method's input, checked at deploy)."""

    metadata: str | None = None
    field: str | None = None

    def __post_init__(self) -> None:
        if (self.metadata is None) == (self.field is None):
            raise _fail('"actor.key" takes exactly one of "metadata" and "field"')
        if self.metadata is not None and (
            not isinstance(self.metadata, str) or not _METADATA_KEY.fullmatch(self.metadata)
            or self.metadata.endswith("-bin") or len(self.metadata) > NAME_MAX
        ):
            raise _fail(
                f'"actor.key.metadata" must be a lower-case metadata key such as "x-user-id" '
                f"(not a -bin key), got {self.metadata!r}"
            )
        if self.field is not None and (
            not isinstance(self.field, str) or not _FUNCTION.fullmatch(self.field)
        ):
            raise _fail(f'"actor.key.field" must be a protobuf field name, got {self.field!r}')

    def describe(self) -> str:
        return f"metadata {self.metadata!r}" if self.metadata else f"request field {self.field!r}"


@dataclasses.dataclass(frozen=True)
class ActorConfig:
    """How the runtime places calls: any instance (regular), one instance (singleton) or
    one instance per key (keyed), and when idle instances are released (passivation)."""

    kind: str = REGULAR
    #: Keyed services only: where the key comes from.
    key: KeySource | None = None
    #: Keyed services only: live activations at most (None: the runtime's default);
    #: the least recently used idle one passivates first.
    max_activations: int | None = None
    #: Release the service's instances after this many seconds without calls (scale to
    #: zero). None: never for regular services and singletons, the runtime's default for
    #: keyed ones.
    idle_seconds: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise _fail(f'"actor.kind" must be one of {", ".join(KINDS)}, got {self.kind!r}')
        if self.kind == KEYED and self.key is None:
            raise _fail(
                '"actor.kind" is "keyed" but "actor.key" is missing: say where the key comes '
                'from, e.g. "key": {"field": "user_id"} or "key": {"metadata": "x-user-id"}'
            )
        if self.kind != KEYED:
            for name in ("key", "max_activations"):
                if getattr(self, name) is not None:
                    raise _fail(f'"actor.{name}" applies only to keyed services ("kind": "keyed")')
        if self.key is not None and not isinstance(self.key, KeySource):
            raise _fail(f'"actor.key" must be a KeySource, got {type(self.key).__name__}')
        value = self.max_activations
        if value is not None and (not _is_int(value) or not 1 <= value <= ACTIVATIONS_MAX):
            raise _fail(
                f'"actor.max_activations" must be an integer from 1 to {ACTIVATIONS_MAX}, '
                f"got {value!r}"
            )
        _check_seconds("actor.idle_seconds", self.idle_seconds)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind}
        if self.key is not None:
            out["key"] = {"metadata": self.key.metadata} if self.key.metadata else {"field": self.key.field}
        if self.max_activations is not None:
            out["max_activations"] = self.max_activations
        if self.idle_seconds is not None:
            out["idle_seconds"] = self.idle_seconds
        return out

    @classmethod
    def from_json(cls, data: Any) -> ActorConfig:
        if not isinstance(data, dict):
            raise _fail(f'"actor" must be an object like {{"kind": "singleton"}}, got {_json_type(data)}')
        _only_keys(data, "actor", _ACTOR_KEYS)
        key = data.get("key")
        if key is not None:
            if not isinstance(key, dict) or set(key) - {"metadata", "field"} or len(key) != 1:
                raise _fail(
                    '"actor.key" must be {"field": "<request field>"} or '
                    f'{{"metadata": "<metadata key>"}}, got {key!r}'
                )
            key = KeySource(metadata=key.get("metadata"), field=key.get("field"))
        return cls(
            kind=data.get("kind", REGULAR),
            key=key,
            max_activations=data.get("max_activations"),
            idle_seconds=data.get("idle_seconds"),
        )


@dataclasses.dataclass(frozen=True)
class Limits:
    """Per-service limits a package asks for; the operator's settings cap each one
    (`RuntimeConfig`). None means the operator's value."""

    #: Maximum linear memory of one instance; growth beyond it fails inside the guest.
    memory_bytes: int | None = None
    #: Hard execution deadline of one call (the caller's deadline may be shorter).
    timeout_seconds: float | None = None
    #: Largest request and response message (binary protobuf bytes).
    request_bytes: int | None = None
    response_bytes: int | None = None

    def __post_init__(self) -> None:
        for name in ("memory_bytes", "request_bytes", "response_bytes"):
            value = getattr(self, name)
            if value is not None and (not _is_int(value) or value < 1):
                raise _fail(f'"limits.{name}" must be a positive integer, got {value!r}')
        _check_seconds("limits.timeout_seconds", self.timeout_seconds)

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    @classmethod
    def from_json(cls, data: Any) -> Limits:
        if not isinstance(data, dict):
            raise _fail(f'"limits" must be an object, got {_json_type(data)}')
        _only_keys(data, "limits", _LIMIT_KEYS)
        return cls(**data)


def _only_keys(data: dict, section: str, known: Sequence[str]) -> None:
    for key in data:
        if key not in known:
            raise _fail(f'unknown key "{section}.{key}": "{section}" takes {", ".join(known)}')


def _check_seconds(where: str, value: Any) -> None:
    if value is None:
        return
    if (
        isinstance(value, bool) or not isinstance(value, (int, float))
        or not 0 < value <= 1e9 or value != value
    ):
        raise _fail(f'"{where}" must be a number of seconds > 0, got {value!r}')


@dataclasses.dataclass(frozen=True)
class Manifest:
    """A validated manifest. Constructing one checks every field (PackageError on a
    defect), so an invalid manifest can neither be loaded nor written.

    `host_apis`, `digests` and `extensions` are copied on construction; treat them as
    read-only.
    """

    name: str
    version: str
    abi_version: int
    services: tuple[str, ...]
    #: Host API namespace -> its configuration; `"functions": [...]` narrows the grant.
    host_apis: dict[str, dict] = dataclasses.field(default_factory=dict)
    pool: PoolConfig = PoolConfig()
    #: Service kind and passivation, for every service of the package (docs/actors.md).
    actor: ActorConfig = ActorConfig()
    limits: Limits = Limits()
    #: Labels an operator's policy rules can select the package by (docs/policy.md).
    tags: tuple[str, ...] = ()
    #: The engine the package prefers (e.g. "wasm3"), if it is installed and the operator
    #: allows it; a preference, not a requirement (docs/engines.md).
    engine: str | None = None
    #: Member name -> `sha256:<hex>`; filled in by `write_package`.
    digests: dict[str, str] = dataclasses.field(default_factory=dict)
    #: The guest language, informational only.
    language: str | None = None
    #: The format; None picks the lowest that can express this manifest.
    format: int | None = None
    #: Metadata for other tools, never interpreted by OKRA (any JSON values).
    extensions: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        try:
            self._validate()
        except _Invalid as exc:
            raise _fail(str(exc)) from None

    def _validate(self) -> None:
        set_ = object.__setattr__
        needed = self._needed_format()
        if self.format is None:
            set_(self, "format", needed)
        _check_format(self.format)
        if self.format < needed:
            raise _Invalid(
                f'format {self.format} has no {self._newer_keys()}: declare "format": {needed}'
            )
        _check_name(self.name)
        _check_version(self.version)
        if not _is_int(self.abi_version) or self.abi_version < 1:
            raise _Invalid(f'"abi_version" must be an integer >= 1, got {self.abi_version!r}')
        set_(self, "services", _check_services(self.services))
        set_(self, "host_apis", _check_host_apis(self.host_apis))
        if not isinstance(self.pool, PoolConfig):
            raise _Invalid(f'"pool" must be a PoolConfig, got {type(self.pool).__name__}')
        if not isinstance(self.actor, ActorConfig):
            raise _Invalid(f'"actor" must be an ActorConfig, got {type(self.actor).__name__}')
        if not isinstance(self.limits, Limits):
            raise _Invalid(f'"limits" must be a Limits, got {type(self.limits).__name__}')
        set_(self, "tags", _check_tags(self.tags))
        check_engine_name(self.engine)
        set_(self, "digests", _check_digests(self.digests))
        if self.language is not None and (
            not isinstance(self.language, str) or not _NAME.fullmatch(self.language)
            or len(self.language) > NAME_MAX
        ):
            raise _Invalid(
                f'"language" must be a lower-case name such as "go", got {self.language!r}'
            )
        set_(self, "extensions", _check_extensions(self.extensions))

    def _uses(self) -> list[str]:
        used = []
        if isinstance(self.actor, ActorConfig) and self.actor != ActorConfig():
            used.append("actor")
        if isinstance(self.limits, Limits) and self.limits != Limits():
            used.append("limits")
        if isinstance(self.pool, PoolConfig) and self.pool.queue is not None:
            used.append("pool.queue")
        if self.tags:
            used.append("tags")
        if self.engine is not None:
            used.append("engine")
        return used

    def _needed_format(self) -> int:
        return max((_SINCE[key] for key in self._uses()), default=1)

    def _newer_keys(self) -> str:
        return ", ".join(f'"{key}"' for key in self._uses())

    @classmethod
    def from_json(cls, text: str | bytes) -> Manifest:
        """Parse and validate `okra.service.json`. Raises PackageError."""
        if isinstance(text, (bytes, bytearray, memoryview)):
            try:
                text = bytes(text).decode("utf-8")
            except UnicodeDecodeError as exc:
                raise _fail(f"not UTF-8 text (byte {exc.start}): write the manifest as UTF-8") from None
        try:
            data = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
        except _Invalid as exc:
            raise _fail(str(exc)) from None
        except json.JSONDecodeError as exc:
            raise _fail(
                f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
            ) from None
        except RecursionError:
            raise _fail("invalid JSON: nested too deeply") from None
        try:
            return cls._from_object(data)
        except _Invalid as exc:
            raise _fail(str(exc)) from None

    @classmethod
    def _from_object(cls, data: Any) -> Manifest:
        if not isinstance(data, dict):
            raise _Invalid(f"must be a JSON object, got {_json_type(data)}")
        if "format" in data:
            # Checked first: a newer format may legitimately have keys we do not know.
            _check_format(data["format"])
        for key in data:
            if key not in _KEYS:
                raise _Invalid(_unknown_key(key))
        for key in _REQUIRED:
            if key not in data:
                hint = ' add "format": 1' if key == "format" else f' add "{key}"'
                raise _Invalid(f'missing "{key}":{hint}')
        services = data["services"]
        if not isinstance(services, list):
            raise _Invalid(f'"services" must be a list of service names, got {_json_type(services)}')
        pool = data.get("pool", {})
        if not isinstance(pool, dict):
            raise _Invalid(f'"pool" must be an object like {{"min": 1, "max": 4}}, got {_json_type(pool)}')
        for key in pool:
            if key not in _POOL_KEYS:
                raise _Invalid(f'unknown key "pool.{key}": "pool" takes only "min", "max" and "queue"')
        defaults = PoolConfig()
        lo, hi = pool.get("min", defaults.min), pool.get("max", defaults.max)
        _check_pool(lo, hi)
        _check_queue(pool.get("queue"))
        for key in ("host_apis", "digests", "extensions"):
            if key in data and not isinstance(data[key], dict):
                raise _Invalid(f'"{key}" must be an object, got {_json_type(data[key])}')
        return cls(
            name=data["name"],
            version=data["version"],
            abi_version=data["abi_version"],
            services=tuple(services),
            host_apis=data.get("host_apis", {}),
            pool=PoolConfig(lo, hi, pool.get("queue")),
            actor=ActorConfig.from_json(data["actor"]) if "actor" in data else ActorConfig(),
            limits=Limits.from_json(data["limits"]) if "limits" in data else Limits(),
            tags=_tags_from_json(data.get("tags", [])),
            engine=data.get("engine"),
            digests=data.get("digests", {}),
            language=data.get("language"),
            format=data["format"],
            extensions=data.get("extensions", {}),
        )

    def to_json(self) -> str:
        """The manifest as JSON, byte-for-byte the same for equal manifests (fixed key
        order at the top, sorted keys below), ending in a newline."""
        out: dict[str, Any] = {"format": self.format, "name": self.name, "version": self.version}
        if self.language is not None:
            out["language"] = self.language
        out["abi_version"] = self.abi_version
        out["services"] = list(self.services)
        out["host_apis"] = _sorted(self.host_apis)
        out["pool"] = {"min": self.pool.min, "max": self.pool.max}
        if self.pool.queue is not None:
            out["pool"]["queue"] = self.pool.queue
        if self.actor != ActorConfig():
            out["actor"] = self.actor.to_json()
        if self.limits != Limits():
            out["limits"] = self.limits.to_json()
        if self.tags:
            out["tags"] = list(self.tags)
        if self.engine is not None:
            out["engine"] = self.engine
        out["digests"] = _sorted(self.digests)
        if self.extensions:
            out["extensions"] = _sorted(self.extensions)
        return json.dumps(out, indent=2, ensure_ascii=False, allow_nan=False) + "\n"

    def with_digests(self, wasm: bytes, descriptor_set: bytes) -> Manifest:
        """A copy whose digests describe these members."""
        return dataclasses.replace(
            self,
            digests={WASM_MEMBER: sha256_digest(wasm), DESCRIPTORS_MEMBER: sha256_digest(descriptor_set)},
        )


# -- field checks -------------------------------------------------------------------------

TAGS_MAX = 32


def check_engine_name(engine: Any) -> None:
    if engine is not None and (
        not isinstance(engine, str) or not _NAME.fullmatch(engine) or len(engine) > NAME_MAX
    ):
        raise _Invalid(f'"engine" must be an engine name such as "wasm3", got {engine!r}')


def _tags_from_json(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise _Invalid(f'"tags" must be a list of names such as ["payments"], got {_json_type(value)}')
    return tuple(value)


def _check_tags(tags: Any) -> tuple[str, ...]:
    tags = tuple(tags) if isinstance(tags, (list, tuple)) else tags
    if not isinstance(tags, tuple) or len(tags) > TAGS_MAX:
        raise _Invalid(f'"tags" must be a list of at most {TAGS_MAX} names')
    for tag in tags:
        if not isinstance(tag, str) or not _NAME.fullmatch(tag) or len(tag) > NAME_MAX:
            raise _Invalid(f'each tag must be a lower-case name such as "payments", got {tag!r}')
    if len(set(tags)) != len(tags):
        raise _Invalid('"tags" lists a tag twice')
    return tags



def _check_format(value: Any) -> None:
    if not _is_int(value):
        raise _Invalid(f'"format" must be an integer (this okra writes {MANIFEST_FORMAT}), got {value!r}')
    if value not in SUPPORTED_FORMATS:
        supported = ", ".join(map(str, sorted(SUPPORTED_FORMATS)))
        if value > max(SUPPORTED_FORMATS):
            raise _Invalid(
                f"format {value} is newer than this okra understands (it reads format "
                f"{supported}): upgrade okra to load this package"
            )
        raise _Invalid(f"format {value} is not a manifest format (this okra reads format {supported})")


def _check_name(value: Any) -> None:
    if not isinstance(value, str) or not _NAME.fullmatch(value) or len(value) > NAME_MAX:
        raise _Invalid(
            f'"name" must be 1 to {NAME_MAX} characters of a-z, 0-9, "-" and "_", starting '
            f"with a letter, got {value!r}"
        )


def _check_version(value: Any) -> None:
    if not isinstance(value, str):
        raise _Invalid(f'"version" must be a string such as "1.0.0", got {value!r}')
    if len(value) <= _VERSION_MAX and _SEMVER.fullmatch(value):
        return
    if value[:1] in ("v", "V") and _SEMVER.fullmatch(value[1:]):
        raise _Invalid(f'"version" {value!r} is not a semantic version: drop the leading "v"')
    raise _Invalid(
        f'"version" {value!r} is not a semantic version: write MAJOR.MINOR.PATCH, e.g. "1.0.0"'
    )


def _check_services(value: Any) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise _Invalid(f'"services" must be a list of service names, got {value!r}')
    if not value:
        raise _Invalid('"services" is empty: list at least one service, e.g. "greeter.v1.Greeter"')
    seen: set[str] = set()
    for index, service in enumerate(value):
        if not isinstance(service, str) or not _SERVICE.fullmatch(service):
            raise _Invalid(
                f'"services"[{index}] must be a fully qualified protobuf service name such as '
                f'"greeter.v1.Greeter", got {service!r}'
            )
        if service in seen:
            raise _Invalid(f'"services" lists {service} twice: list each service once')
        seen.add(service)
    return tuple(value)


def _check_host_apis(value: Any) -> dict[str, dict]:
    if not isinstance(value, Mapping):
        raise _Invalid(f'"host_apis" must be an object, got {value!r}')
    out: dict[str, dict] = {}
    for namespace, config in value.items():
        where = f'"host_apis"[{namespace!r}]'
        if not isinstance(namespace, str) or not _NAMESPACE.fullmatch(namespace):
            raise _Invalid(
                f'"host_apis" key {namespace!r} is not a host API namespace: host APIs are '
                'named "okra.<api>", e.g. "okra.log"'
            )
        if namespace == "okra.abi":
            raise _Invalid('"host_apis" lists okra.abi, which every module gets: remove it')
        if not isinstance(config, Mapping):
            raise _Invalid(f"{where} must be an object (use {{}} for the defaults), got {config!r}")
        for key in config:
            if not isinstance(key, str):
                raise _Invalid(f"{where} has a non-string key {key!r}")
        if "functions" in config:
            _check_functions(where, config["functions"])
        out[namespace] = _json_copy(config, where)
    return out


def _check_functions(where: str, functions: Any) -> None:
    if isinstance(functions, str) or not isinstance(functions, Sequence):
        raise _Invalid(f'{where}["functions"] must be a list of function names, got {functions!r}')
    if not functions:
        raise _Invalid(
            f'{where}["functions"] is empty: list the functions to grant, or remove the '
            '"functions" key to grant them all'
        )
    seen: set[str] = set()
    for name in functions:
        if not isinstance(name, str) or not _FUNCTION.fullmatch(name):
            raise _Invalid(f'{where}["functions"] holds {name!r}, which is not a function name')
        if name in seen:
            raise _Invalid(f'{where}["functions"] lists {name} twice: list each function once')
        seen.add(name)


def _check_digests(value: Any) -> dict[str, str]:
    if not isinstance(value, Mapping):
        raise _Invalid(f'"digests" must be an object, got {value!r}')
    for member, digest in value.items():
        if member not in DIGESTED_MEMBERS:
            raise _Invalid(
                f'"digests" has an entry for {member!r}; only {" and ".join(DIGESTED_MEMBERS)} '
                "are digested"
            )
        if not isinstance(digest, str) or not _DIGEST.fullmatch(digest):
            raise _Invalid(
                f'"digests"[{member!r}] must be "sha256:" and 64 lower-case hex digits, got {digest!r}'
            )
    return dict(value)


def _check_extensions(value: Any) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise _Invalid(f'"extensions" must be an object, got {value!r}')
    for key in value:
        if not isinstance(key, str) or not key:
            raise _Invalid(f'"extensions" keys must be non-empty strings, got {key!r}')
    return _json_copy(value, '"extensions"')


# -- JSON helpers -------------------------------------------------------------------------


def _json_copy(value: Mapping[str, Any], where: str) -> dict:
    """A deep copy that is plain JSON, so the manifest cannot be changed from outside
    and always serialises."""
    try:
        return json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise _Invalid(f"{where} must hold only JSON values: {exc}") from None


def _sorted(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _sorted(value[key]) for key in sorted(value)}
    if isinstance(value, list):
        return [_sorted(item) for item in value]
    return value


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _Invalid(f'key "{key}" appears twice in one object: keep one')
        out[key] = value
    return out


def _no_constant(name: str) -> Any:
    raise _Invalid(f"invalid JSON: {name} is not a JSON number")


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    return "an object"


def _unknown_key(key: str) -> str:
    message = f'unknown key "{key}"'
    close = difflib.get_close_matches(key, _KEYS, n=1)
    if close:
        message += f' (did you mean "{close[0]}"?)'
    return message + '; metadata for other tools goes under "extensions"'
