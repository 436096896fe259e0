"""The project configuration file, `okra.toml`: what `okra build` and `okra dev` read.

```toml
[service]
name = "greeter"
version = "0.1.0"
language = "go"
proto = ["greeter/v1/greeter.proto"]   # relative to proto_root
proto_root = "proto"
services = ["greeter.v1.Greeter"]      # optional: default, every service in `proto`
tags = ["public"]                      # optional: labels operator policy can select by
engine = "wasm3"                       # optional: the engine it prefers (docs/engines.md)

[host_apis."okra.log"]                 # one table per host API, holding its config

[pool]
min = 1
max = 4
queue = 64                             # callers that may wait when all are busy

[actor]                                # optional: service kind and passivation (docs/actors.md)
kind = "keyed"
key = { field = "user_id" }
idle_seconds = 300

[limits]                               # optional: per-service limits (docs/actors.md)
memory_bytes = 67108864
timeout_seconds = 10
```
"""

from __future__ import annotations

import dataclasses
import pathlib
import re
import tomllib
from collections.abc import Mapping
from typing import Any

from okra_core.errors import ConfigError, PackageError
from okra_core.manifest import (
    ActorConfig,
    Limits,
    _check_queue,
    _check_tags,
    _Invalid,
    check_engine_name,
)

PROJECT_FILE = "okra.toml"
_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")


@dataclasses.dataclass(frozen=True)
class Project:
    dir: pathlib.Path
    name: str
    version: str
    language: str
    proto: tuple[str, ...]
    proto_root: pathlib.Path
    services: tuple[str, ...] | None
    host_apis: Mapping[str, Mapping[str, Any]]
    pool_min: int
    pool_max: int
    pool_queue: int | None = None
    actor: ActorConfig = ActorConfig()
    limits: Limits = Limits()
    tags: tuple[str, ...] = ()
    engine: str | None = None

    @property
    def dist_dir(self) -> pathlib.Path:
        return self.dir / "dist"

    @property
    def work_dir(self) -> pathlib.Path:
        return self.dir / ".okra"

    @property
    def package_path(self) -> pathlib.Path:
        return self.dist_dir / f"{self.name}-{self.version}.okra.pkg"


def find_project(start: str | pathlib.Path) -> pathlib.Path:
    """The directory holding okra.toml: `start` itself or one of its parents."""
    start = pathlib.Path(start).resolve()
    for directory in (start, *start.parents):
        if (directory / PROJECT_FILE).is_file():
            return directory
    raise ConfigError(
        f"no {PROJECT_FILE} in {start} or its parents: run `okra init NAME` to create a project"
    )


def load_project(path: str | pathlib.Path) -> Project:
    directory = find_project(path)
    file = directory / PROJECT_FILE
    try:
        data = tomllib.loads(file.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{file}: {exc}") from None
    where = str(file)

    tables = ("service", "host_apis", "pool", "actor", "limits")
    unknown = set(data) - set(tables)
    if unknown:
        raise ConfigError(
            f"{where}: unknown table(s) {', '.join(sorted(unknown))} (known: {', '.join(tables)})"
        )
    service = _table(data, "service", where)
    unknown = set(service) - {
        "name", "version", "language", "proto", "proto_root", "services", "tags", "engine",
    }
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) in [service]: {', '.join(sorted(unknown))}")
    name = _str(service, "name", where)
    if not _NAME.match(name):
        raise ConfigError(
            f"{where}: service.name {name!r} must be lower case letters, digits, '-' or '_', "
            "starting with a letter"
        )
    proto = service.get("proto")
    if not isinstance(proto, list) or not proto or not all(isinstance(p, str) for p in proto):
        raise ConfigError(f"{where}: service.proto must be a non-empty list of .proto paths")
    proto_root = directory / service.get("proto_root", ".")
    for item in proto:
        if not (proto_root / item).is_file():
            raise ConfigError(f"{where}: proto file {item} not found under {proto_root}")
    services = service.get("services")
    if services is not None and (
        not isinstance(services, list) or not all(isinstance(s, str) for s in services)
    ):
        raise ConfigError(f"{where}: service.services must be a list of service names")
    tags = service.get("tags", [])
    try:
        tags = _check_tags(tags)
    except _Invalid as exc:
        raise ConfigError(f"{where}: service.{exc}") from None
    engine = service.get("engine")
    try:
        check_engine_name(engine)
    except _Invalid:
        raise ConfigError(
            f'{where}: service.engine must be an engine name such as "wasm3", got {engine!r}'
        ) from None

    host_apis = data.get("host_apis", {})
    if not isinstance(host_apis, dict) or not all(isinstance(v, dict) for v in host_apis.values()):
        raise ConfigError(f'{where}: each host API is a table, e.g. [host_apis."okra.log"]')
    pool = _table(data, "pool", where, required=False)
    unknown = set(pool) - {"min", "max", "queue"}
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) in [pool]: {', '.join(sorted(unknown))} (known: min, max, queue)"
        )
    try:
        _check_queue(pool.get("queue"))
        actor = ActorConfig.from_json(_table(data, "actor", where, required=False))
        limits = Limits.from_json(_table(data, "limits", where, required=False))
    except (_Invalid, PackageError) as exc:
        # The manifest's words ("actor.kind"), which are the table keys here too.
        raise ConfigError(f"{where}: {str(exc).removeprefix('manifest: ')}") from None
    pool_min, pool_max = pool.get("min", 1), pool.get("max", 4)
    if not (isinstance(pool_min, int) and isinstance(pool_max, int) and 0 <= pool_min <= pool_max and pool_max >= 1):
        raise ConfigError(
            f"{where}: [pool] needs 0 <= min <= max and max >= 1 (got min = {pool_min!r}, "
            f"max = {pool_max!r}; min defaults to 1, max to 4)"
        )

    return Project(
        dir=directory,
        name=name,
        version=_str(service, "version", where),
        language=_str(service, "language", where),
        proto=tuple(proto),
        proto_root=proto_root,
        services=tuple(services) if services is not None else None,
        host_apis={k: dict(v) for k, v in host_apis.items()},
        pool_min=pool_min,
        pool_max=pool_max,
        pool_queue=pool.get("queue"),
        actor=actor,
        limits=limits,
        tags=tags,
        engine=engine,
    )


def _table(data: Mapping[str, Any], key: str, where: str, required: bool = True) -> dict:
    value = data.get(key)
    if value is None and not required:
        return {}
    if value is None:
        raise ConfigError(f"{where}: missing [{key}] table")
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: {key} must be a table, e.g. [{key}] on a line of its own")
    return value


def _str(table: Mapping[str, Any], key: str, where: str) -> str:
    value = table.get(key)
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}: [service] needs {key} = \"...\"")
    return value
