"""`okra`: init, build, dev, serve, call, plugins.

Every command is a thin wrapper over `okra_core`; errors print as one line (no
traceback) and exit with status 1. Set OKRA_DEBUG=1 to see tracebacks.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import json
import logging
import math
import os
import pathlib
import sys

# gRPC's C core writes its own log lines to stderr ("E1204 ... add_port.cc:83] Failed to
# add port") for failures that OKRA reports as one line anyway. Quiet unless asked for:
# this must happen before anything imports grpc (okra_core and the built-in plugins
# import it lazily, but a third-party plugin loaded below may not).
if not os.environ.get("OKRA_DEBUG"):
    os.environ.setdefault("GRPC_VERBOSITY", "NONE")

import rich_click as click
from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table

from okra_core.errors import OkraError
from okra_core.status import RpcError

# No emoji codes: an error quoting ":name:" (a host:port, a JSON key) must print as is.
err = Console(stderr=True, emoji=False)

click.rich_click.USE_MARKDOWN = True


def fail(message: str) -> None:
    err.print(f"[bold red]error:[/] {message}", highlight=False, markup=True, soft_wrap=True)
    sys.exit(1)


def errors_as_one_line(command):
    """Turn OKRA's own errors into one clear line and exit status 1."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except RpcError as exc:
            if os.environ.get("OKRA_DEBUG"):
                raise
            # A status message is one line, whatever the library that made it wrote.
            fail(_escape(" ".join(line.strip() for line in str(exc).splitlines() if line.strip())))
        except OkraError as exc:
            if os.environ.get("OKRA_DEBUG"):
                raise
            fail(_escape(str(exc)))
        except KeyboardInterrupt:
            sys.exit(130)

    return wrapper


def _escape(text: str) -> str:
    return text.replace("[", r"\[")


def setup_logging(level: str) -> None:
    handler = RichHandler(console=err, show_path=False, rich_tracebacks=False, markup=False)
    logging.basicConfig(level=level.upper(), format="%(name)s: %(message)s", handlers=[handler], force=True)
    # grpc and asyncio chatter is for debugging only.
    if level.upper() != "DEBUG":
        logging.getLogger("asyncio").setLevel(logging.WARNING)


class Seconds(click.FloatRange):
    """A number of seconds in a range, finite and at most `MAXIMUM` (FloatRange lets nan
    and inf through, and gRPC turns a deadline beyond 2262 into an instant
    DEADLINE_EXCEEDED)."""

    name = "number"
    MAXIMUM = 1e9  # about 31 years

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value} is not a finite number of seconds.", param, ctx)
        if number > self.MAXIMUM:
            self.fail(f"{value} is more than 1e9 seconds (about 31 years).", param, ctx)
        return number


class Size(click.ParamType):
    """A size such as 4MiB, 512KiB or 1048576 (bytes), at most `maximum`."""

    name = "size"

    def __init__(self, maximum: int = 2**31 - 1):
        self.maximum = maximum

    def convert(self, value, param, ctx):
        if isinstance(value, int):
            return value
        from okra_core.errors import ConfigError
        from okra_core.units import parse_size

        try:
            return parse_size(value, "size", maximum=self.maximum)
        except ConfigError as exc:
            self.fail(str(exc).removeprefix("size "), param, ctx)


def _allowed_header_names(ctx, param, names):
    """--allow-header: header names that a guest can actually be given."""
    from okra_core.metadata import PROTOCOL_HEADERS, RESERVED_PREFIXES, is_forwarded, is_header_name

    checked = []
    for given in names:
        name = given.strip()
        name = name.lower() if name.isascii() else name
        if "," in name:
            raise click.BadParameter(f"{given!r}: give one name per --allow-header (repeat the option)")
        if not is_header_name(name):
            raise click.BadParameter(
                f"{given!r} is not a header name (ASCII letters, digits and - _ .)"
            )
        if not is_forwarded(name, allow=(name,)):
            if name.startswith(RESERVED_PREFIXES):
                why = f"names starting with {name.split('-')[0]}- belong to the protocol"
            elif name in PROTOCOL_HEADERS:
                why = "it is a connection or framing header"
            elif name.endswith("-bin"):
                why = "it is a binary (-bin) header, and guest metadata is text"
            else:
                why = "see docs/transports.md"
            raise click.BadParameter(f"{given!r} is never forwarded to guests: {why}")
        checked.append(name)
    return tuple(checked)


@click.group()
@click.version_option(package_name="okra")
def cli():
    """OKRA: secure, type-safe backend services written as WebAssembly and described
    in Protobuf.

    Start with `okra init NAME`, then `okra dev` in the new directory.
    """


# -- init / build ---------------------------------------------------------------------


@cli.command()
@click.argument("name")
@click.option("--lang", "language", default="go", show_default=True, help="Guest language.")
@click.option(
    "--dir", "directory", type=click.Path(file_okay=False, path_type=pathlib.Path),
    help="Where to create the project (default: ./NAME).",
)
@errors_as_one_line
def init(name: str, language: str, directory: pathlib.Path | None):
    """Create a new service project NAME: a .proto, okra.toml and guest code."""
    from okra_core.plugins import get_registry

    target = directory or pathlib.Path(name)
    if target.exists() and any(target.iterdir()):
        raise OkraError(f"{target} already exists and is not empty")
    files = get_registry().language(language).init_project(target, name)
    click.echo(f"Created {language} project {name} in {target}:")
    for file in files:
        click.echo(f"  {pathlib.Path(file).relative_to(target.resolve()) if pathlib.Path(file).is_absolute() else file}")
    click.echo(f"\nNext: cd {target} && okra dev")


@cli.command()
@click.argument("path", default=".", type=click.Path(exists=True, path_type=pathlib.Path))
@errors_as_one_line
def build(path: pathlib.Path):
    """Build the project at PATH into dist/NAME-VERSION.okra.pkg."""
    from okra_core.build import build_project

    result = build_project(path)
    click.echo(f"Built {result.path} ({', '.join(result.services)}) in {result.seconds:.1f}s")


@cli.command()
@click.argument("path", default=".", type=click.Path(exists=True, path_type=pathlib.Path))
@errors_as_one_line
def generate(path: pathlib.Path):
    """Generate the guest code for the project at PATH from its protos, without
    compiling (so an editor sees the types). `okra build` does this too."""
    from okra_core.build import generate_project

    files = generate_project(path)
    click.echo(f"Generated {len(files)} file(s)")


# -- serve / dev ----------------------------------------------------------------------


def server_options(command):
    options = [
        click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on."),
        click.option(
            "--grpc-port", type=click.IntRange(0, 65535), default=50051, show_default=True,
            help="gRPC port; 0 picks a free one.",
        ),
        click.option(
            "--http-port", type=click.IntRange(0, 65535), default=8080, show_default=True,
            help="HTTP port for Connect, gRPC-Web and JSON; 0 picks a free one.",
        ),
        click.option(
            "--max-message-size", type=Size(), default="4MiB", show_default=True, metavar="SIZE",
            help="Largest request or response on either transport (e.g. 512KiB, 16MiB).",
        ),
        click.option(
            "--allow-header", "allow_headers", multiple=True, metavar="NAME", callback=_allowed_header_names,
            help="Forward this secret-looking request header to guests (repeat; see docs/transports.md).",
        ),
        click.option(
            "--cors-origin", "cors_origins", multiple=True, metavar="ORIGIN",
            help="Let browser pages from ORIGIN call the HTTP port (repeat; '*' for any). Off by default.",
        ),
        click.option(
            "--max-memory", type=Size(maximum=4 * 1024**3), default="256MiB", show_default=True,
            metavar="SIZE",
            help="Operator cap on one instance's linear memory (limits.memory_bytes asks for less).",
        ),
        click.option(
            "--max-call-time", type=Seconds(min=0, min_open=True), default=300.0, show_default=True,
            metavar="SECONDS",
            help="Operator cap on how long one call may run; the guest is stopped then.",
        ),
        click.option(
            "--allow-host-api", "allowed", multiple=True, metavar="NAMESPACE",
            help="Operator policy: host APIs guests may be granted (repeat; default: all installed).",
        ),
        click.option(
            "--policy", type=click.Path(exists=True, dir_okay=False), metavar="FILE",
            help="Operator policy file: deny, narrow and cap host APIs per service, package or tag (docs/policy.md).",
        ),
        click.option(
            "--state", "state", default="sqlite", show_default=True, metavar="STORE",
            callback=_state_options,
            help="State store behind okra.state: sqlite (in --data-dir), memory, or a redis:// URL.",
        ),
        click.option(
            "--data-dir", type=click.Path(file_okay=False), default=".okra", show_default=True,
            help="Where the runtime keeps state that outlives it (the sqlite state store).",
        ),
        click.option(
            "--secrets", default="env", show_default=True, metavar="PROVIDER",
            callback=_secrets_options,
            help="Secrets provider behind okra.secrets: env (OKRA_SECRET_<NAME> variables) or dir:PATH (one file per secret).",
        ),
        click.option(
            "--config", "config_values", multiple=True, metavar="[PACKAGE:]NAME=VALUE",
            callback=_config_values,
            help="Set an okra.config value at deploy, for every package or for PACKAGE (repeat).",
        ),
        click.option(
            "--engine", metavar="NAME",
            help="Run every package on this engine, whatever its manifest prefers (see okra plugins).",
        ),
        click.option(
            "--default-engine", default="wasmtime", show_default=True, metavar="NAME",
            help="Engine for packages that prefer none, or one not allowed or not installed.",
        ),
        click.option(
            "--allow-engine", "allowed_engines", multiple=True, metavar="NAME",
            help="Engines packages may prefer (repeat; default: every installed one).",
        ),
        click.option(
            "--allow-unenforced-limits", is_flag=True,
            help="Deploy packages whose time or memory limit their engine cannot enforce (e.g. wasm3 with meter=false), with a warning.",
        ),
        click.option(
            "--engine-option", "engine_settings", multiple=True, metavar="ENGINE.KEY=VALUE",
            callback=_engine_settings,
            help="An engine option, e.g. wasm3.meter=false or wasmtime.pooling_slots=64 (repeat; docs/engines.md).",
        ),
        click.option("--cache-dir", type=click.Path(file_okay=False), help="wasmtime's compiled-module cache directory."),
        click.option(
            "--log-level", default="info", show_default=True,
            type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
        ),
        click.option(
            "--grace", type=Seconds(min=0), default=10.0, show_default=True, metavar="SECONDS",
            help="Seconds to drain calls on shutdown (0: stop at once).",
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _config_values(ctx, param, values) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    for item in values:
        target, sep, value = item.partition("=")
        package, colon, name = target.rpartition(":")
        if not sep or not name:
            raise click.BadParameter(f"{item!r}: write NAME=VALUE or PACKAGE:NAME=VALUE")
        out.setdefault(package if colon else "", {})[name] = value
    return out


def _engine_settings(ctx, param, values) -> dict[str, dict[str, object]]:
    out: dict[str, dict[str, object]] = {}
    for item in values:
        target, sep, raw = item.partition("=")
        engine, dot, key = target.partition(".")
        if not sep or not dot or not engine or not key:
            raise click.BadParameter(f"{item!r}: write ENGINE.KEY=VALUE, e.g. wasm3.meter=false")
        out.setdefault(engine, {})[key] = _option_value(raw)
    return out


def _option_value(raw: str) -> object:
    """true/false, null, a number, else the text."""
    lowered = raw.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("null", "none"):
        return None
    for kind in (int, float):
        try:
            return kind(raw)
        except ValueError:
            pass
    return raw


def _state_options(ctx, param, state: str) -> tuple[str, dict]:
    if state.startswith(("redis://", "rediss://", "unix://")):
        return "redis", {"url": state}
    return state, {}


def _secrets_options(ctx, param, secrets: str) -> tuple[str, dict]:
    name, colon, path = secrets.partition(":")
    if name == "dir":
        if not path:
            raise click.BadParameter("dir needs a directory: --secrets dir:/run/secrets")
        return "dir", {"path": path}
    if colon:
        raise click.BadParameter(f"{secrets!r}: only dir takes a path (dir:PATH)")
    return name, {}


def _serve(
    packages, *, host, grpc_port, http_port, max_message_size, max_memory, max_call_time,
    allow_headers, cors_origins, allowed, policy, state, data_dir, secrets, config_values,
    engine, default_engine, allowed_engines, allow_unenforced_limits, engine_settings,
    cache_dir, log_level, grace, background=(),
):
    from okra_core.config import RuntimeConfig
    from okra_core.policy import Policy
    from okra_core.serve import Listener, Server, serve_until_signalled
    setup_logging(log_level)
    default = engine or default_engine
    engines_options = {name: dict(options) for name, options in engine_settings.items()}
    if cache_dir:
        engines_options.setdefault("wasmtime", {}).setdefault("cache_dir", cache_dir)
    engines_allowed = frozenset(allowed_engines) if allowed_engines else None
    message_size = max_message_size
    state_store, state_options = state
    secrets_provider, secrets_options = secrets
    config = RuntimeConfig(
        engine=default,
        engine_options=engines_options.get(default, {}),
        engines=engines_allowed,
        engines_options=engines_options,
        force_engine=engine is not None,
        allow_unenforced_limits=allow_unenforced_limits,
        policy=Policy.load(policy) if policy else None,
        data_dir=data_dir,
        state_store=state_store,
        state_options=state_options,
        secrets_provider=secrets_provider,
        secrets_options=secrets_options,
        config_overrides=config_values,
        allowed_host_apis=frozenset(allowed) if allowed else None,
        max_memory_bytes=max_memory,
        max_call_seconds=max_call_time,
        # The transports refuse larger messages first; the runtime agrees with them.
        max_request_bytes=message_size,
        max_response_bytes=message_size,
    )
    listeners = [
        Listener(
            "grpc", host, grpc_port,
            {"max_message_size": max_message_size, "allow_headers": allow_headers},
        ),
        Listener(
            "connect", host, http_port,
            {
                "max_body_size": max_message_size,
                "allow_headers": allow_headers,
                "cors_origins": cors_origins,
            },
        ),
    ]
    server = Server(packages, listeners, config=config, grace=grace)

    def ready(server: Server) -> None:
        for name, bound_host, port in server.addresses:
            label = {"grpc": "gRPC", "connect": "HTTP"}.get(name, name)
            click.echo(f"{label} listening on {_host_port(bound_host, port)}")
        for service in server.runtime.services():
            click.echo(f"  serving {service} ({server.runtime.stats(service)['engine']})")
        sys.stdout.flush()

    asyncio.run(serve_until_signalled(server, ready, background=background))


def _host_port(host: str, port: int) -> str:
    """host:port, with an IPv6 literal in brackets ([::1]:50051) as URLs and gRPC
    targets write it, so the line can be pasted into `okra call --address`."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@cli.command()
@click.argument("packages", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@server_options
@errors_as_one_line
def serve(packages, **options):
    """Serve built .okra.pkg PACKAGES until SIGINT/SIGTERM."""
    from okra_core.package import load_package

    loaded = [load_package(p) for p in packages]
    _serve(loaded, **options)


@cli.command()
@click.argument("paths", nargs=-1, type=click.Path(exists=True, path_type=pathlib.Path))
@server_options
@click.option("--reload/--no-reload", default=True, show_default=True,
              help="Rebuild and redeploy when the project's sources change.")
@errors_as_one_line
def dev(paths: tuple[pathlib.Path, ...], reload: bool, **options):
    """Build the projects at PATHS (default: .) and serve them locally; rebuild and
    redeploy each whenever its sources change (a failed build is logged and the previous
    version keeps serving). Several projects: services that call each other."""
    from okra_core.build import build_project
    from okra_core.dev import reload_on_change
    from okra_core.package import load_package

    packages = []
    for path in paths or (pathlib.Path("."),):
        with err.status(f"building {path}..."):
            result = build_project(path)
        err.print(f"built {result.path} in {result.seconds:.1f}s", highlight=False)
        packages.append(load_package(result.path))
    background = []
    if reload:
        for path in paths or (pathlib.Path("."),):
            background.append(
                lambda server, path=path: reload_on_change(server.runtime, path, registry=server.registry)
            )
    _serve(packages, background=background, **options)


# -- call -----------------------------------------------------------------------------


def _address(ctx, param, address: str) -> str:
    from okra_plugins.transport_grpc.client import parse_address

    try:
        return parse_address(address)
    except RpcError as exc:
        raise click.BadParameter(exc.message) from None


def _metadata(ctx, param, headers) -> list[tuple[str, str | bytes]]:
    """-H 'key: value' as gRPC metadata, refused here if gRPC would refuse it. A key
    ending in -bin is binary metadata: its value is given in base64."""
    from okra_plugins.transport_grpc.client import metadata_problem

    metadata = []
    for header in headers:
        key, sep, text = header.partition(":")
        if not sep:
            raise click.BadParameter(f"header {header!r} must look like 'key: value'")
        key, text = key.strip(), text.strip()
        if not key:
            raise click.BadParameter(f"header {header!r} has no name before the ':'")
        key = key.lower() if key.isascii() else key
        value: str | bytes = text
        if key.endswith("-bin"):
            try:
                value = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
            except ValueError:  # binascii.Error
                raise click.BadParameter(
                    f"header {key!r}: a -bin header is binary; give its value in base64"
                ) from None
        problem = metadata_problem(key, value)
        if problem:
            raise click.BadParameter(f"header {key!r}: {problem}")
        metadata.append((key, value))
    return metadata


@cli.command()
@click.argument("target", metavar="SERVICE/METHOD")
@click.argument("body", default="{}", metavar="[JSON]")
@click.option(
    "--address", default="127.0.0.1:50051", show_default=True, callback=_address,
    help="HOST:PORT of a gRPC server ([::1]:PORT for IPv6).",
)
@click.option("--package", type=click.Path(exists=True, dir_okay=False), help="Learn the schema from this .okra.pkg instead of server reflection.")
@click.option(
    "--timeout", type=Seconds(min=0, min_open=True), default=30.0, show_default=True, metavar="SECONDS",
    help="Deadline in seconds.",
)
@click.option(
    "-H", "--header", "headers", multiple=True, metavar="KEY: VALUE", callback=_metadata,
    help="Request metadata (repeat). A KEY ending in -bin takes a base64 VALUE.",
)
@errors_as_one_line
def call(target: str, body: str, address: str, package: str | None, timeout: float, headers):
    """Call SERVICE/METHOD with a JSON request (default {}; use - to read it from stdin)
    and print the JSON response (each response of a server stream, as it arrives)."""
    from okra_plugins.transport_grpc.client import call_json_stream

    if body == "-":
        body = sys.stdin.read()
    for response in call_json_stream(address, target, body, package=package, timeout=timeout, metadata=headers):
        click.echo(response)


# -- plugins --------------------------------------------------------------------------


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@errors_as_one_line
def plugins(as_json: bool):
    """List the loaded plugins and what each provides."""
    from okra_core.plugins import get_registry

    registry = get_registry()
    provided = registry.provided()
    engines = _engine_capabilities(registry)
    if as_json:
        by_plugin: dict[str, dict[str, list[str]]] = {}
        for item in provided:
            by_plugin.setdefault(item.plugin, {}).setdefault(item.kind, []).append(item.name)
        for name in registry.pm.list_name_plugin():
            by_plugin.setdefault(name[0], {})
        listed = []
        for name, kinds in sorted(by_plugin.items()):
            entry: dict = {"name": name, "provides": kinds}
            if "engines" in kinds:  # what each engine enforces (docs/engines.md)
                entry["engines"] = {e: engines[e] for e in kinds["engines"] if e in engines}
            listed.append(entry)
        click.echo(json.dumps(listed, indent=2))
        return
    table = Table("plugin", "kind", "provides")
    for item in sorted(provided, key=lambda p: (p.plugin, p.kind, p.name)):
        table.add_row(item.plugin, item.kind.replace("_", " ").rstrip("s"), item.name)
    console = Console()
    console.print(table)
    table = Table(
        "engine", "deadline", "interrupt", "memory", "parallel", "WASI", "components",
        title="Engines: what each enforces (docs/engines.md)",
    )
    yes_no = {True: "yes", False: "no"}
    unavailable = []
    for name, described in engines.items():
        if "unavailable" in described:
            table.add_row(name, "-", "-", "-", "-", "-", "-")
            unavailable.append(f"{name}: unavailable: {described['unavailable']}")
            continue
        caps = described["capabilities"]
        table.add_row(
            name, yes_no[caps["deadline"]], yes_no[caps["interrupt"]],
            yes_no[caps["memory_limit"]], yes_no[caps["parallel"]], caps["wasi"],
            yes_no[caps["component_model"]],
        )
    console.print(table)
    for line in unavailable:  # as text: "okra[wasm3]" is not markup
        console.print(line, markup=False, highlight=False)


def _engine_capabilities(registry) -> dict[str, dict]:
    """Each engine's capabilities and version, or why it cannot be used here."""
    out: dict[str, dict] = {}
    for name in registry.names("engines"):
        try:
            engine = registry.engine(name)
            out[name] = {
                "capabilities": engine.capabilities().to_json(),
                "version": engine.describe().get("version", ""),
            }
        except OkraError as exc:
            out[name] = {"unavailable": str(exc)}
    return out


def _load_plugin_commands() -> None:
    """Commands from plugins. A plugin that fails to load is reported once, as the
    error of the first command that needs the plugins, not here."""
    from okra_core.plugins import get_plugin_manager

    try:
        get_plugin_manager().hook.register_commands(cli=cli)
    except OkraError:
        pass


_load_plugin_commands()
