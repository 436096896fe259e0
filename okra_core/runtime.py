"""The OKRA runtime: deploys packages onto an actor system and routes calls to them.

Deploying a package checks it against this runtime (ABI version, host API grants,
operator policy, required exports), compiles its module through the engine plugin, probes
one instance, then starts one service actor per service, each with its worker pool. A
deploy is all or nothing. Calls (`invoke`) find the service's actor by its fully
qualified name and ask it; transports are thin layers over `invoke` and, for
server-streaming methods, `invoke_stream`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any

from okra_core import abi
from okra_core._activations import Activations
from okra_core._service import Guest, Invoke, ServiceActor, ServiceLimits
from okra_core._streaming import InvokeStream
from okra_core._supervisor import Supervisor
from okra_core._workers import CallRunner, WorkerThreads
from okra_core.actors import ActorNotFound, ActorStopped, ActorSystem, local_actor_system
from okra_core.callchain import CallChain
from okra_core.config import RuntimeConfig
from okra_core.descriptors import ServiceSchema
from okra_core.engine import CompiledModule, Engine, GuestTrap, InstanceLimits
from okra_core.errors import AbiError, CapabilityError, DeployError, OkraError, PluginError
from okra_core.hostapi import HostContext, HostFunction
from okra_core.manifest import KEYED, REGULAR, SINGLETON, Manifest, PoolConfig
from okra_core.package import Package
from okra_core.plugins import Registry, get_registry
from okra_core.pool import InstancePool
from okra_core.status import RpcError, StatusCode

log = logging.getLogger("okra.runtime")

Listener = Callable[[str, str], None]


@dataclasses.dataclass
class Deployment:
    """What one package put on the runtime."""

    package: Package
    services: dict[str, ServiceSchema]
    actors: dict[str, ServiceActor]

    @property
    def name(self) -> str:
        return self.package.manifest.name

    @property
    def version(self) -> str:
        return self.package.manifest.version


class Runtime:
    def __init__(
        self,
        config: RuntimeConfig | None = None,
        registry: Registry | None = None,
        actor_system: ActorSystem | None = None,
    ):
        self.config = config or RuntimeConfig()
        self.registry = registry or get_registry()
        self._actor_system = actor_system
        self._engine: Engine | None = None
        self._deployments: dict[str, Deployment] = {}  # by package name
        self._owner: dict[str, str] = {}  # service -> package name
        self._listeners: list[Listener] = []
        self._deploy_lock: asyncio.Lock | None = None

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        if self._actor_system is None:
            self._actor_system = local_actor_system()
        if self._engine is None:
            self._engine = self.registry.engine(self.config.engine, **self.config.engine_options)
        self._deploy_lock = asyncio.Lock()

    async def close(self, grace: float = 10.0) -> None:
        """Drain in-flight calls (up to `grace` seconds) and release every instance."""
        if self._actor_system is not None:
            await self._actor_system.shutdown(grace=grace)
        for name in list(self._deployments):
            for service in self._deployments.pop(name).services:
                self._owner.pop(service, None)
                self._emit("undeployed", service)

    async def __aenter__(self) -> Runtime:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            raise RuntimeError("runtime not started: call `await runtime.start()` first")
        return self._engine

    # -- discovery -------------------------------------------------------------------

    def services(self) -> list[str]:
        return sorted(self._owner)

    def schema(self, service: str) -> ServiceSchema | None:
        owner = self._owner.get(service)
        return self._deployments[owner].services[service] if owner else None

    def deployments(self) -> list[Deployment]:
        return list(self._deployments.values())

    def subscribe(self, listener: Listener) -> None:
        """`listener(event, service)` for "deployed" and "undeployed", on the loop."""
        self._listeners.append(listener)

    def unsubscribe(self, listener: Listener) -> None:
        """Stop calling a listener given to `subscribe` (no error if it is not there)."""
        if listener in self._listeners:
            self._listeners.remove(listener)

    def _emit(self, event: str, service: str) -> None:
        for listener in self._listeners:
            try:
                listener(event, service)
            except Exception:
                log.exception("runtime listener failed on %s %s", event, service)

    def stats(self, service: str) -> dict[str, Any]:
        """What a service's instances are doing and what happened to them: its kind, pool
        (or activations) and supervision event counts (see docs/actors.md)."""
        actor = self._actor(service)
        return {"kind": self._kind(service), **actor.stats()}

    def passivate(self, service: str) -> int:
        """Release a service's idle instances now, as idle time would; the service stays
        deployed and its next call starts an instance. Returns how many were released."""
        return self._actor(service).passivate()

    def _actor(self, service: str) -> ServiceActor:
        owner = self._owner.get(service)
        if owner is None:
            raise DeployError(f"service {service} is not deployed")
        return self._deployments[owner].actors[service]

    def _kind(self, service: str) -> str:
        return self._deployments[self._owner[service]].package.manifest.actor.kind

    # -- calls -----------------------------------------------------------------------

    async def invoke(
        self,
        service: str,
        method: str,
        payload: bytes,
        *,
        metadata: Sequence[tuple[str, str]] = (),
        timeout: float | None = None,
        chain: CallChain | None = None,
    ) -> bytes:
        """Call `service`/`method` with a binary protobuf request; return the binary
        response. Raises RpcError.

        `chain` is the call chain of the calling guest (`HostContext.chain`), for calls
        between services: a call that would come back into a busy singleton or keyed
        activation of its own chain fails at once (FAILED_PRECONDITION)."""
        system = self._actor_system
        if system is None:
            raise RpcError(StatusCode.UNAVAILABLE, "runtime is not started")
        try:
            ref = system.lookup(service)
        except ActorNotFound:
            raise RpcError(
                StatusCode.UNIMPLEMENTED, f"service {service} is not deployed"
            ) from None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (self.config.default_timeout if timeout is None else timeout)
        try:
            return await ref.ask(Invoke(method, payload, metadata, deadline, chain))
        except ActorStopped:
            raise RpcError(StatusCode.UNAVAILABLE, f"service {service} is shutting down") from None

    async def invoke_stream(
        self,
        service: str,
        method: str,
        payload: bytes,
        *,
        metadata: Sequence[tuple[str, str]] = (),
        timeout: float | None = None,
        chain: CallChain | None = None,
    ) -> AsyncIterator[bytes]:
        """Call a server-streaming method: yields each response message (binary
        protobuf) as the guest produces it. Raises RpcError, before or after some
        messages. Closing the iterator early (`aclose()`, or leaving an `async for`)
        cancels the call: the guest sees its next `okra.abi.send` fail.

        Nothing happens until the first message is asked for. A caller that reads
        slowly pauses the guest (a few messages are buffered, never the whole stream).
        """
        system = self._actor_system
        if system is None:
            raise RpcError(StatusCode.UNAVAILABLE, "runtime is not started")
        try:
            ref = system.lookup(service)
        except ActorNotFound:
            raise RpcError(
                StatusCode.UNIMPLEMENTED, f"service {service} is not deployed"
            ) from None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (self.config.default_timeout if timeout is None else timeout)
        try:
            stream = await ref.ask(InvokeStream(method, payload, metadata, deadline, chain))
        except ActorStopped:
            raise RpcError(StatusCode.UNAVAILABLE, f"service {service} is shutting down") from None
        try:
            async for message in stream:
                yield message
        finally:
            stream.close()

    # -- deploy ----------------------------------------------------------------------

    async def deploy(self, package: Package) -> list[str]:
        """Deploy (or redeploy) a package; returns its services. All or nothing: raises
        DeployError (or a subclass) and changes nothing if any check fails."""
        engine = self.engine
        assert self._deploy_lock is not None and self._actor_system is not None
        async with self._deploy_lock:
            manifest = package.manifest
            self._check_owners(package)
            self._check_abi_version(manifest.abi_version)
            grants = grant_host_functions(package.manifest, self.registry, self.config)
            module = await asyncio.to_thread(engine.compile, package.wasm)
            check_exports(module)
            check_imports(module, grants, manifest.host_apis, self.config, manifest.abi_version)
            schemas = {name: package.schema(name) for name in manifest.services}
            check_key_field(manifest, schemas)

            previous = self._deployments.get(manifest.name)
            actors: dict[str, ServiceActor] = {}
            try:
                for service in manifest.services:
                    before = previous.actors.get(service) if previous is not None else None
                    actors[service] = await self._start_service(
                        package, module, grants, schemas[service], before
                    )
            except BaseException:
                for actor in actors.values():
                    await actor.on_stop(0.0)
                raise

            for service, actor in actors.items():
                await self._actor_system.spawn(service, actor, replace=True)
            self._deployments[manifest.name] = Deployment(package, schemas, actors)
            if previous is not None:
                for gone in set(previous.services) - set(schemas):
                    await self._actor_system.stop(gone, grace=self.config.drain_timeout)
                    self._owner.pop(gone, None)
                    self._emit("undeployed", gone)
            for service in schemas:
                self._owner[service] = manifest.name
                self._emit("deployed", service)
            log.info(
                "deployed %s %s: %s", manifest.name, manifest.version, ", ".join(schemas)
            )
            return list(schemas)

    async def undeploy(self, name: str) -> list[str]:
        """Undeploy a package, by package name or by one of its service names; in-flight
        calls finish first (up to the drain timeout). Returns the services removed."""
        assert self._deploy_lock is not None and self._actor_system is not None
        async with self._deploy_lock:
            package_name = name if name in self._deployments else self._owner.get(name)
            if package_name is None:
                known = ", ".join(sorted(self._deployments)) or "none"
                raise DeployError(f"nothing named {name!r} is deployed (packages: {known})")
            deployment = self._deployments.pop(package_name)
            for service in deployment.services:
                self._owner.pop(service, None)
                self._emit("undeployed", service)
            await asyncio.gather(
                *(
                    self._actor_system.stop(service, grace=self.config.drain_timeout)
                    for service in deployment.services
                )
            )
            log.info("undeployed %s", package_name)
            return list(deployment.services)

    def _check_owners(self, package: Package) -> None:
        for service in package.manifest.services:
            owner = self._owner.get(service)
            if owner is not None and owner != package.manifest.name:
                raise DeployError(
                    f"service {service} is already deployed by package {owner!r}; "
                    "a service belongs to one package: undeploy that package first"
                )

    def _check_abi_version(self, version: int) -> None:
        if version not in abi.SUPPORTED_ABI_VERSIONS:
            supported = ", ".join(map(str, sorted(abi.SUPPORTED_ABI_VERSIONS)))
            plural = "s" if len(abi.SUPPORTED_ABI_VERSIONS) > 1 else ""
            raise AbiError(
                f"package speaks guest ABI version {version}, but this runtime supports "
                f"version{plural} {supported}: rebuild it with a matching SDK or upgrade OKRA"
            )

    async def _start_service(
        self,
        package: Package,
        module: CompiledModule,
        grants: Mapping[str, HostFunction],
        schema: ServiceSchema,
        predecessor: ServiceActor | None = None,
    ) -> ServiceActor:
        manifest = package.manifest
        config = self.config
        kind = manifest.actor.kind
        logger = logging.getLogger(f"okra.service.{schema.name}")
        functions = [*abi.abi_functions(manifest.abi_version), *grants.values()]
        configs = {ns: dict(cfg) for ns, cfg in manifest.host_apis.items()}
        limits = manifest.limits
        instance_limits = InstanceLimits(
            memory_bytes=_capped(limits.memory_bytes, config.max_memory_bytes)
        )

        def create() -> Guest:
            context = HostContext(schema.name, logger)
            context.config = configs
            watch = StderrWatch()
            try:
                instance = module.instantiate(
                    functions, stdio_to_log(logger, watch), context, limits=instance_limits
                )
            except GuestTrap as exc:
                raise DeployError(
                    watch.note(f"{schema.name}: the module traps while starting: {exc}")
                ) from None
            version = instance.abi_version()
            if version != manifest.abi_version:
                instance.close()
                raise AbiError(
                    f"module reports guest ABI version {version}, but its manifest says "
                    f"{manifest.abi_version}"
                )
            return Guest(instance, context, watch)

        _warn_capped(logger, manifest, config)
        defaults = PoolConfig()
        if kind == SINGLETON and (manifest.pool.min, manifest.pool.max) != (defaults.min, defaults.max):
            logger.warning("pool.min and pool.max do not apply to a singleton (one instance)")
        elif kind == KEYED and manifest.pool.min > defaults.min:
            logger.warning("pool.min does not apply to a keyed service (activations start on use)")
        supervisor = Supervisor(
            schema.name,
            create,
            logger,
            backoff=config.restart_backoff,
            max_backoff=config.max_restart_backoff,
        )
        if kind == REGULAR:
            max_size = min(manifest.pool.max, config.max_instances_per_service)
            min_size = min(manifest.pool.min, max_size)
        else:  # one instance per activation; activations run on these threads
            max_size = 1 if kind == SINGLETON else min(
                manifest.pool.max, config.max_instances_per_service
            )
            min_size = 0
        workers = WorkerThreads(max_size, name=f"okra:{schema.name}")

        def start_on(fn: Callable[[], Guest]) -> Any:
            """Start an instance on a worker; close it if its caller gave up meanwhile."""
            return workers.run(fn, abandoned=_close_abandoned)

        queue = _capped(manifest.pool.queue, config.max_queue, config.default_queue)
        idle = manifest.actor.idle_seconds
        if idle is None and kind == KEYED:
            idle = config.default_keyed_idle_seconds
        try:
            # The probe: one instance proves the module links, initialises and speaks
            # the ABI before the service is announced; it then serves as a warm one.
            probe = await workers.run(create)
            supervisor.event("started", "deploy probe")
        except BaseException:
            workers.close()
            raise
        pool = activations = None
        if kind == REGULAR:
            pool = InstancePool(
                supervisor.start,
                min_size=min_size,
                max_size=max_size,
                run_blocking=start_on,
                name=schema.name,
                queue=queue,
                idle_seconds=idle,
                on_event=supervisor.event,
            )
            pool.adopt(probe)
            try:
                await pool.start()
            except BaseException:
                await pool.close(grace=0)
                workers.close()
                raise
        else:
            # A keyed service's instances belong to keys, and a singleton's one instance
            # must not exist twice while the previous version finishes: no warm probe.
            probe.close()
            activations = Activations(
                schema.name,
                lambda: start_on(supervisor.start),
                max_activations=1 if kind == SINGLETON else _capped(
                    manifest.actor.max_activations,
                    config.max_activations,
                    config.default_max_activations,
                ),
                queue=queue,
                idle_seconds=idle,
                on_event=supervisor.event,
                predecessor=predecessor.activations if predecessor is not None else None,
                singleton=kind == SINGLETON,
            )
        # Inline calls are only for guests none of whose host functions may block, and
        # never for activations: stopping an inline call discards its instance, and an
        # activation's instance holds its key's state.
        runner = CallRunner(
            workers,
            inline_allowed=kind == REGULAR
            and config.inline_calls
            and not any(f.blocking for f in functions),
        )
        return ServiceActor(
            schema,
            pool,
            workers,
            runner,
            logger,
            validate_output=config.validate_output,
            abi_version=manifest.abi_version,
            stream_buffer=config.stream_buffer,
            activations=activations,
            key=manifest.actor.key,
            limits=ServiceLimits(
                call_seconds=_capped(limits.timeout_seconds, config.max_call_seconds),
                call_seconds_source="limits.timeout_seconds"
                if limits.timeout_seconds is not None
                and limits.timeout_seconds <= config.max_call_seconds
                else "the operator's max_call_seconds, okra serve --max-call-time",
                request_bytes=_capped(limits.request_bytes, config.max_request_bytes),
                response_bytes=_capped(limits.response_bytes, config.max_response_bytes),
            ),
            supervisor=supervisor,
        )


def _close_abandoned(guest: Guest) -> None:
    try:
        guest.close()
    except Exception:
        log.exception("closing an instance nobody waited for failed")


def _warn_capped(logger: logging.Logger, manifest: Manifest, config: RuntimeConfig) -> None:
    """Say so when the operator's caps lower what a manifest asks for."""
    asked = [
        ("limits.memory_bytes", manifest.limits.memory_bytes, config.max_memory_bytes),
        ("limits.timeout_seconds", manifest.limits.timeout_seconds, config.max_call_seconds),
        ("limits.request_bytes", manifest.limits.request_bytes, config.max_request_bytes),
        ("limits.response_bytes", manifest.limits.response_bytes, config.max_response_bytes),
        ("pool.max", manifest.pool.max, config.max_instances_per_service),
        ("pool.queue", manifest.pool.queue, config.max_queue),
        ("actor.max_activations", manifest.actor.max_activations, config.max_activations),
    ]
    for name, value, cap in asked:
        if value is not None and value > cap:
            logger.warning(
                "%s asks for %s = %s, above the operator's cap: using %s", manifest.name,
                name, value, cap,
            )


def _capped(asked: Any, cap: Any, default: Any = None) -> Any:
    """A manifest's setting under the operator's cap (`default`, else the cap, if unset)."""
    if asked is None:
        asked = cap if default is None else default
    return min(asked, cap)


def check_key_field(manifest: Manifest, schemas: Mapping[str, ServiceSchema]) -> None:
    """A keyed service keyed by a request field needs that field, singular and scalar,
    in the input of every method. Raises DeployError naming the method."""
    key = manifest.actor.key
    if manifest.actor.kind != KEYED or key is None or key.field is None:
        return
    for schema in schemas.values():
        for method in schema.methods.values():
            field = method.input_class.DESCRIPTOR.fields_by_name.get(key.field)
            where = f"actor.key.field {key.field!r}: {method.full_path} takes {method.input.full_name}"
            if field is None:
                raise DeployError(
                    f"{where}, which has no field {key.field!r}; every method of a keyed "
                    "service needs the key field in its request"
                )
            if _is_repeated(field) or field.message_type is not None:
                raise DeployError(
                    f"{where}, whose field {key.field!r} is not a single scalar (a key is a "
                    "string, an integer, a bool, an enum or bytes)"
                )
            if field.type in (field.TYPE_FLOAT, field.TYPE_DOUBLE):
                raise DeployError(f"{where}, whose field {key.field!r} is a float: not a key")


def _is_repeated(field: Any) -> bool:
    label = getattr(field, "label", None)
    return label == field.LABEL_REPEATED if label is not None else bool(field.is_repeated)


def grant_host_functions(
    manifest: Manifest, registry: Registry, config: RuntimeConfig
) -> dict[str, HostFunction]:
    """The host functions a package's manifest is granted on a runtime with `config`, by
    qualified name. Raises CapabilityError (or DeployError for bad host API settings)."""
    granted: dict[str, HostFunction] = {}
    for namespace, settings in manifest.host_apis.items():
        if not config.allows(namespace):
            allowed = ", ".join(sorted(config.allowed_host_apis or ())) or "none"
            raise CapabilityError(
                f"package {manifest.name!r} requests host API {namespace}, which "
                f"the operator policy does not allow (allowed: {allowed})"
            )
        try:
            api = registry.host_api(namespace)
        except PluginError:
            raise CapabilityError(
                f"package {manifest.name!r} requests host API {namespace}, but no "
                "installed plugin provides it (see `okra plugins`)"
            ) from None
        options = {k: v for k, v in settings.items() if k != "functions"}
        wanted = settings.get("functions")
        if wanted is not None:
            unknown = sorted(set(wanted) - set(api.function_names()))
            if unknown:
                raise CapabilityError(
                    f"host_apis[{namespace!r}].functions names {', '.join(unknown)}, "
                    f"which {namespace} does not have (it has: "
                    f"{', '.join(api.function_names())})"
                )
        try:
            functions = api.functions(options)
        except OkraError as exc:
            raise DeployError(f"host API {namespace}: {exc}") from None
        for fn in functions:
            if wanted is None or fn.name in wanted:
                granted[fn.qualified_name] = fn
    return granted


def check_exports(module: CompiledModule) -> None:
    exports = {e.name: e for e in module.exports}
    for name, signature in abi.REQUIRED_EXPORTS.items():
        export = exports.get(name)
        expected = "memory" if signature is None else "func"
        if export is None or export.kind != expected:
            raise AbiError(
                f"module does not export {expected} {name!r} required by the guest ABI: "
                "was it built with an OKRA SDK?"
            )
        if signature is not None and (export.params, export.results) != signature:
            raise AbiError(
                f"export {name!r} has type {_sig(export.params, export.results)}, but the "
                f"guest ABI requires {_sig(*signature)}"
            )


def check_imports(
    module: CompiledModule,
    grants: Mapping[str, HostFunction],
    requested: Mapping[str, Any],
    config: RuntimeConfig,
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
            fn = grants.get(name)
            if fn is None:
                raise CapabilityError(_why_not_granted(imp.module, imp.name, requested, config))
        else:
            raise CapabilityError(
                f"module imports {name} from namespace {imp.module!r}, which OKRA never "
                f"links: guests may import only {abi.WASI_NAMESPACE}, {abi.ABI_NAMESPACE} "
                "and granted okra.* host APIs"
            )
        if imp.kind != "func" or (imp.params, imp.results) != (fn.params, fn.results):
            raise AbiError(
                f"module imports {name} as {imp.kind} {_sig(imp.params, imp.results)}, but "
                f"the host provides func {_sig(fn.params, fn.results)}"
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
    namespace: str, function: str, requested: Mapping[str, Any], config: RuntimeConfig
) -> str:
    name = f"{namespace}.{function}"
    if namespace not in requested:
        return (
            f"module imports {name}, but the manifest does not grant it: add "
            f'"{namespace}" to "host_apis" in okra.service.json '
            f'(in a project: a [host_apis."{namespace}"] table in okra.toml)'
        )
    if not config.allows(namespace):  # pragma: no cover - refused earlier, by grant_host_functions
        return f"module imports {name}, but the operator policy denies {namespace}"
    functions = requested[namespace].get("functions")
    if functions is not None and function not in functions:
        return (
            f"module imports {name}, but the manifest grants only "
            f"{', '.join(functions) or 'no functions'} of {namespace}: add "
            f'"{function}" to host_apis["{namespace}"]["functions"] in okra.service.json '
            f'(in a project: to functions in [host_apis."{namespace}"] in okra.toml)'
        )
    return f"module imports {name}, but host API {namespace} has no function {function!r}"


def _sig(params: Sequence[str], results: Sequence[str]) -> str:
    return f"({', '.join(params)}) -> ({', '.join(results)})"


#: Longest guest stdout/stderr line logged; the rest of a longer line is counted, not kept.
MAX_STDIO_LINE = 8 * 1024


class StderrWatch:
    """The first line a guest wrote to stderr since `reset`: a Go panic's or an
    out-of-memory's reason, which the trap itself ("unreachable") does not carry."""

    __slots__ = ("line",)

    def __init__(self) -> None:
        self.line: str | None = None

    def reset(self) -> None:
        self.line = None

    def note(self, message: str) -> str:
        """`message`, with what the guest wrote, if anything."""
        if self.line is None:
            return message
        line = self.line if len(self.line) <= 300 else self.line[:300] + "..."
        return f"{message} (the guest wrote to stderr: {line!r})"


def stdio_to_log(
    logger: logging.Logger, watch: StderrWatch | None = None
) -> Callable[[int, bytes], None]:
    """A sink for guest stdout (INFO) and stderr (WARNING) that logs whole lines, each
    cut to MAX_STDIO_LINE bytes (a guest must not make logging arbitrarily expensive).
    `watch` keeps the first stderr line since its last reset."""
    pending = {1: bytearray(), 2: bytearray()}
    dropped = {1: 0, 2: 0}
    levels = {1: logging.INFO, 2: logging.WARNING}

    def emit(fd: int, line: bytes) -> None:
        text = line.decode("utf-8", "replace")
        if dropped[fd]:
            text += f"... [{dropped[fd]} more bytes]"
            dropped[fd] = 0
        logger.log(levels[fd], "%s", text)
        if fd == 2 and watch is not None and watch.line is None and text.strip():
            watch.line = text.strip()

    def sink(fd: int, data: bytes) -> None:
        if fd not in pending:
            return
        buffer = pending[fd]
        *lines, rest = data.split(b"\n")
        for line in lines:
            room = MAX_STDIO_LINE - len(buffer)
            dropped[fd] += max(0, len(line) - room)
            emit(fd, bytes(buffer) + line[: max(0, room)])
            buffer.clear()
        room = MAX_STDIO_LINE - len(buffer)
        dropped[fd] += max(0, len(rest) - room)
        buffer += rest[: max(0, room)]

    return sink
