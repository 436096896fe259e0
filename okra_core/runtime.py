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
import concurrent.futures
import dataclasses
import inspect
import logging
import pathlib
import threading
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any

from okra_core import abi
from okra_core._activations import Activations
from okra_core._service import Guest, Invoke, ServiceActor, ServiceLimits
from okra_core._streaming import InvokeStream
from okra_core._supervisor import Supervisor
from okra_core._workers import CallRunner, WorkerThreads
from okra_core.actors import (
    ActorNotFound,
    ActorStopped,
    ActorSystem,
    local_actor_system,
)
from okra_core.audit import Audit
from okra_core.callchain import CallChain
from okra_core.clock import Clock, SystemClock
from okra_core.config import RuntimeConfig
from okra_core.descriptors import ServiceSchema
from okra_core.engine import CompiledModule, Engine, GuestTrap, InstanceLimits
from okra_core.errors import AbiError, DeployError, OkraError
from okra_core.grants import CONFIG_API, Grants, check_imports, grant, signature
from okra_core.hostapi import HostContext, HostEnvironment, HostError
from okra_core.manifest import KEYED, REGULAR, SINGLETON, Manifest, PoolConfig
from okra_core.metrics import Metrics
from okra_core.package import Package
from okra_core.plugins import Registry, get_registry
from okra_core.pool import InstancePool
from okra_core.secrets import SecretsProvider
from okra_core.state import StateStore
from okra_core.status import RpcError, StatusCode

log = logging.getLogger("okra.runtime")

Listener = Callable[[str, str], None]


@dataclasses.dataclass
class Deployment:
    """What one package put on the runtime."""

    package: Package
    services: dict[str, ServiceSchema]
    actors: dict[str, ServiceActor]
    #: The name of the engine its services run on.
    engine: str = ""

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
        *,
        clock: Clock | None = None,
    ):
        self.config = config or RuntimeConfig()
        self.registry = registry or get_registry()
        #: What guests see as time (okra.time) and what state TTLs count in.
        self.clock = clock or SystemClock()
        #: The runtime's metrics and its services' (`metrics.render()`: Prometheus text).
        self.metrics = Metrics()
        #: Capability denials, logged to `okra.audit` and counted.
        self.audit = Audit(self.metrics)
        self._calls = self.metrics.counter(
            "okra_calls_total", "Unary calls answered, by service, method and status code",
            ("service", "method", "code"), single_writer=True,  # counted on the loop
        )
        self._latency = self.metrics.histogram(
            "okra_call_seconds", "Time to answer a unary call, by service",
            ("service",), single_writer=True,
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        self._call_metrics: dict[tuple[str, str, str], tuple[Any, Any]] = {}
        self._state: StateStore | None = None
        self._secrets: SecretsProvider | None = None
        self._host_lock = threading.Lock()
        #: What host APIs reach the world through (docs/plugins.md).
        self.host_environment = HostEnvironment(
            clock=self.clock, metrics=self.metrics, audit=self.audit,
            state=self._state_store, secrets=self._secrets_provider, invoke=self._invoke_from_guest,
        )
        self._actor_system = actor_system
        self._engine: Engine | None = None
        self._engines: dict[str, Engine] = {}  # by name, made on first use
        self._deployments: dict[str, Deployment] = {}  # by package name
        self._owner: dict[str, str] = {}  # service -> package name
        self._listeners: list[Listener] = []
        self._deploy_lock: asyncio.Lock | None = None

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        # A misspelt store or provider fails here, before anything is deployed.
        self.registry.get("state_stores", self.config.state_store)
        self.registry.get("secrets_providers", self.config.secrets_provider)
        if self.config.policy is not None:  # a misspelt host API too
            self.config.policy.check(self.registry)
        if self._actor_system is None:
            self._actor_system = local_actor_system()
        if self._engine is None:
            self._engine = self._engine_named(self.config.engine)
        self._deploy_lock = asyncio.Lock()

    async def close(self, grace: float = 10.0) -> None:
        """Drain in-flight calls (up to `grace` seconds) and release every instance."""
        if self._actor_system is not None:
            await self._actor_system.shutdown(grace=grace)
        for name in list(self._deployments):
            for service in self._deployments.pop(name).services:
                self._owner.pop(service, None)
                self._emit("undeployed", service)
        with self._host_lock:
            store, self._state = self._state, None
        if store is not None:
            await asyncio.to_thread(store.close)

    async def __aenter__(self) -> Runtime:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def engine(self) -> Engine:
        """The default engine."""
        if self._engine is None:
            raise RuntimeError("runtime not started: call `await runtime.start()` first")
        return self._engine

    def engine_for(self, manifest: Manifest) -> Engine:
        """The engine a package runs on: the one its manifest prefers if the operator
        allows it and it is installed, else the default (always the default when the
        operator forces it)."""
        default = self.engine
        wanted = manifest.engine
        if wanted is None or wanted == default.name or self.config.force_engine:
            return default
        allowed = self.config.engines
        if allowed is not None and wanted not in allowed:
            log.warning(
                "%s prefers engine %s, which the operator does not allow (allowed: %s); "
                "it runs on %s", manifest.name, wanted, ", ".join(sorted(allowed)), default.name,
            )
            return default
        try:
            return self._engine_named(wanted)
        except OkraError as exc:
            log.warning(
                "%s prefers engine %s, which is not available (%s); it runs on %s",
                manifest.name, wanted, exc, default.name,
            )
            return default

    def _engine_named(self, name: str) -> Engine:
        engine = self._engines.get(name)
        if engine is None:
            options = (
                self.config.engine_options if name == self.config.engine
                else self.config.engines_options.get(name, {})
            )
            engine = self._engines[name] = self.registry.engine(name, **options)
        return engine

    def _check_engine_limits(self, manifest: Manifest, grants: Grants, engine: Engine) -> None:
        """Refuse a package that requires a limit its engine cannot enforce, unless the
        operator accepts that (`allow_unenforced_limits`)."""
        capabilities = engine.capabilities()
        unenforced = []
        for able, field, config_field, what in (
            (capabilities.deadline, "timeout_seconds", "max_call_seconds", "a call time limit"),
            (capabilities.memory_limit, "memory_bytes", "max_memory_bytes", "a memory limit"),
        ):
            if able:
                continue
            asked = getattr(manifest.limits, field)
            if asked is not None:
                unenforced.append(f"{what} (limits.{field} = {asked:g} in its manifest)")
            elif config_field in grants.sources:
                unenforced.append(f"{what} (from {grants.sources[config_field]})")
        if not unenforced:
            return
        message = (
            f"{manifest.name} requires {' and '.join(unenforced)}, which engine {engine.name} "
            "cannot enforce (docs/engines.md)"
        )
        if self.config.allow_unenforced_limits:
            log.warning("%s; deploying it anyway, as the operator allows", message)
            return
        raise DeployError(
            f"{message}: run it on an engine that can (e.g. --engine wasmtime), or accept "
            "unenforced limits (--allow-unenforced-limits; RuntimeConfig."
            "allow_unenforced_limits)"
        )

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
        package = self._owner[service]
        denials = self.audit.denials(service)
        for api, count in self.audit.denials(package).items():
            if package != service:
                denials[api] = denials.get(api, 0) + count
        deployment = self._deployments[package]
        return {
            "kind": self._kind(service), "engine": deployment.engine, **actor.stats(),
            "denials": denials,
        }

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
        started = loop.time()
        deadline = started + (self.config.default_timeout if timeout is None else timeout)
        code = "OK"
        try:
            return await ref.ask(Invoke(method, payload, metadata, deadline, chain))
        except RpcError as exc:
            code = exc.code.name
            raise
        except ActorStopped:
            code = "UNAVAILABLE"
            raise RpcError(StatusCode.UNAVAILABLE, f"service {service} is shutting down") from None
        except asyncio.CancelledError:
            code = "CANCELLED"  # the caller went away
            raise
        finally:
            self._count_call(service, method, code, loop.time() - started)

    def _count_call(self, service: str, method: str, code: str, seconds: float) -> None:
        children = self._call_metrics.get((service, method, code))
        if children is None:
            children = self._call_metrics[(service, method, code)] = (
                self._calls.labels(service, method, code), self._latency.labels(service)
            )
        children[0].inc()
        children[1].observe(seconds)

    # -- what host APIs reach the world through ------------------------------------------

    def _invoke_from_guest(
        self,
        ctx: HostContext,
        service: str,
        method: str,
        payload: bytes,
        metadata: Sequence[tuple[str, str]] = (),
        timeout: float | None = None,
    ) -> bytes:
        """`Runtime.invoke` for a host function on a guest's worker thread: blocks that
        thread, not the loop, until the callee answers; the caller's chain goes along."""
        loop = self._loop
        if loop is None or loop.is_closed():
            raise RpcError(StatusCode.UNAVAILABLE, "runtime is not running")
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            raise HostError(
                StatusCode.INTERNAL,
                "a host function that calls services ran on the event loop; declare it "
                "blocking=True",
            )
        future = asyncio.run_coroutine_threadsafe(
            self.invoke(
                service, method, payload, metadata=metadata, timeout=timeout, chain=ctx.chain
            ),
            loop,
        )
        limit = self.config.default_timeout if timeout is None else timeout
        try:
            # The callee's deadline ends the call; the margin only guards against a loop
            # that stopped running, so a worker thread is never stuck for good.
            return future.result(limit + 5.0)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise RpcError(
                StatusCode.DEADLINE_EXCEEDED, f"{service}/{method}: no answer in time"
            ) from None
        except concurrent.futures.CancelledError:
            raise RpcError(StatusCode.CANCELLED, f"{service}/{method}: cancelled") from None

    def _state_store(self) -> StateStore:
        store = self._state
        if store is not None:  # the common case, on every okra.state call: no lock
            return store
        with self._host_lock:
            if self._state is None:
                options = dict(self.config.state_options)
                name = self.config.state_store
                if name == "sqlite" and "path" not in options:
                    directory = pathlib.Path(self.config.data_dir)
                    directory.mkdir(parents=True, exist_ok=True)
                    options["path"] = str(directory / "state.db")
                factory = self.registry.get("state_stores", name)
                if "clock" in inspect.signature(factory).parameters:
                    options.setdefault("clock", self.clock)
                self._state = factory(**options)
                log.info("state store: %s", name)
            return self._state

    def _secrets_provider(self) -> SecretsProvider:
        provider = self._secrets
        if provider is not None:
            return provider
        with self._host_lock:
            if self._secrets is None:
                self._secrets = self.registry.get("secrets_providers", self.config.secrets_provider)(
                    **self.config.secrets_options
                )
            return self._secrets

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

    async def deploy(
        self, package: Package, *, config: Mapping[str, str] | None = None
    ) -> list[str]:
        """Deploy (or redeploy) a package; returns its services. All or nothing: raises
        DeployError (or a subclass) and changes nothing if any check fails.

        `config` overrides values of the package's okra.config settings (the package
        must ask for okra.config)."""
        assert self._deploy_lock is not None and self._actor_system is not None
        async with self._deploy_lock:
            manifest = package.manifest
            engine = self.engine_for(manifest)
            self._check_owners(package)
            self._check_abi_version(manifest.abi_version)
            if config is None:
                config = self._config_overrides(manifest)
            grants = grant(
                package.manifest, self.registry, self.config, self.host_environment,
                overrides=config,
            )
            self._check_engine_limits(manifest, grants, engine)
            await self._open_host_resources(grants)
            module = await asyncio.to_thread(engine.compile, package.wasm)
            check_exports(module)
            check_imports(module, grants, manifest.host_apis, manifest.abi_version)
            schemas = {name: package.schema(name) for name in manifest.services}
            check_key_field(manifest, schemas)

            previous = self._deployments.get(manifest.name)
            actors: dict[str, ServiceActor] = {}
            try:
                for service in manifest.services:
                    before = previous.actors.get(service) if previous is not None else None
                    actors[service] = await self._start_service(
                        package, module, grants, schemas[service], before,
                        deadlines_enforced=engine.capabilities().deadline,
                    )
            except BaseException:
                for actor in actors.values():
                    await actor.on_stop(0.0)
                raise

            for service, actor in actors.items():
                await self._actor_system.spawn(service, actor, replace=True)
            self._deployments[manifest.name] = Deployment(package, schemas, actors, engine.name)
            if previous is not None:
                for gone in set(previous.services) - set(schemas):
                    await self._actor_system.stop(gone, grace=self.config.drain_timeout)
                    self._owner.pop(gone, None)
                    self._emit("undeployed", gone)
                    self._release(previous.package.manifest, [gone])
            for service in schemas:
                self._owner[service] = manifest.name
                self._emit("deployed", service)
            log.info(
                "deployed %s %s on %s: %s", manifest.name, manifest.version, engine.name,
                ", ".join(schemas),
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
            self._release(deployment.package.manifest, deployment.services)
            log.info("undeployed %s", package_name)
            return list(deployment.services)

    async def _open_host_resources(self, grants: Grants) -> None:
        """Open the state store and secrets provider a package is granted, so that a
        store that cannot be reached fails the deploy, not the package's first call."""
        for namespace, opener, what in (
            ("okra.state", self._state_store, f"state store {self.config.state_store!r}"),
            ("okra.secrets", self._secrets_provider,
             f"secrets provider {self.config.secrets_provider!r}"),
        ):
            if namespace in grants.settings:
                try:
                    await asyncio.to_thread(opener)
                except OkraError as exc:
                    raise DeployError(f"{namespace}: {what}: {exc}") from None
                except Exception as exc:
                    raise DeployError(f"{namespace}: cannot open {what}: {exc}") from None

    def _config_overrides(self, manifest: Manifest) -> dict[str, str] | None:
        """The operator's okra.config overrides for a package (RuntimeConfig)."""
        overrides = self.config.config_overrides
        merged: dict[str, str] = {}
        if CONFIG_API in manifest.host_apis:
            merged.update(overrides.get("", {}))
        merged.update(overrides.get(manifest.name, {}))
        return merged or None

    def _release(self, manifest: Manifest, services: Sequence[str]) -> None:
        """Services gone for good: their call metrics go, and each host API they were
        granted may drop what it kept for them (`HostAPI.release_service`)."""
        for service in services:
            for family in (self._calls, self._latency):
                family.remove_matching("service", service)
            self._call_metrics = {k: v for k, v in self._call_metrics.items() if k[0] != service}
            for namespace in manifest.host_apis:
                try:
                    release = getattr(self.registry.host_api(namespace), "release_service", None)
                    if release is not None:
                        release(service, self.host_environment)
                except Exception:
                    log.exception("host API %s failed to release %s", namespace, service)

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
        grants: Grants,
        schema: ServiceSchema,
        predecessor: ServiceActor | None = None,
        *,
        deadlines_enforced: bool = True,
    ) -> ServiceActor:
        manifest = package.manifest
        config = grants.config  # the operator's caps, lowered by matching policy rules
        kind = manifest.actor.kind
        logger = logging.getLogger(f"okra.service.{schema.name}")
        functions = [*abi.abi_functions(manifest.abi_version), *grants.functions.values()]
        configs = grants.settings
        limits = manifest.limits
        instance_limits = InstanceLimits(
            memory_bytes=_capped(limits.memory_bytes, config.max_memory_bytes),
            # starting an instance may take as long as a call
            start_seconds=_capped(limits.timeout_seconds, config.max_call_seconds),
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
        # Inline calls are only for guests none of whose host functions may block, on an
        # engine that can stop an overrunning call (it would hold the event loop), and
        # never for activations: stopping an inline call discards its instance, and an
        # activation's instance holds its key's state.
        runner = CallRunner(
            workers,
            inline_allowed=kind == REGULAR
            and config.inline_calls
            and deadlines_enforced
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
                else grants.sources.get(
                    "max_call_seconds", "the operator's max_call_seconds, okra serve --max-call-time"
                ),
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


def check_exports(module: CompiledModule) -> None:
    exports = {e.name: e for e in module.exports}
    for name, required in abi.REQUIRED_EXPORTS.items():
        export = exports.get(name)
        expected = "memory" if required is None else "func"
        if export is None or export.kind != expected:
            raise AbiError(
                f"module does not export {expected} {name!r} required by the guest ABI: "
                "was it built with an OKRA SDK?"
            )
        if required is not None and (export.params, export.results) != required:
            raise AbiError(
                f"export {name!r} has type {signature(export.params, export.results)}, but the "
                f"guest ABI requires {signature(*required)}"
            )


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
