"""`okra dev`: serve a project and redeploy it whenever its sources change.

The watcher polls the files that the project's language names as sources
(`Language.source_globs()`, plus `okra.toml`); the build's own output (generated code,
`.okra/`, `dist/`) never matches, so a build never triggers another. A change is built
once the files have stopped changing for one poll; a successful build is redeployed on
the running runtime (in-flight calls finish on the old version, new calls go to the new
one), and a failed build is logged while the previous version keeps serving.
"""

from __future__ import annotations

import asyncio
import logging
import pathlib
from collections.abc import Iterable

from okra_core.build import build_project
from okra_core.errors import OkraError
from okra_core.package import load_package
from okra_core.plugins import Registry, get_registry
from okra_core.project import PROJECT_FILE, load_project
from okra_core.runtime import Runtime

log = logging.getLogger("okra.dev")

Snapshot = dict[pathlib.Path, tuple[int, int]]


class SourceWatcher:
    """Finds what changed under a project among the files matching `globs`."""

    #: Directory names that only ever hold build output or tooling state.
    IGNORED = frozenset({"dist", "node_modules", "__pycache__"})

    def __init__(self, root: pathlib.Path, globs: Iterable[str]):
        self.root = root
        self.globs = tuple(dict.fromkeys([*globs, PROJECT_FILE]))
        self._last = self.snapshot()

    def _ignored(self, path: pathlib.Path) -> bool:
        parts = path.relative_to(self.root).parts[:-1]
        return any(part.startswith(".") or part in self.IGNORED for part in parts)

    def snapshot(self) -> Snapshot:
        files: Snapshot = {}
        for pattern in self.globs:
            for path in self.root.glob(pattern):
                if path.is_file() and not self._ignored(path):
                    try:
                        info = path.stat()
                    except OSError:
                        continue  # removed while we looked
                    files[path] = (info.st_mtime_ns, info.st_size)
        return files

    def changes(self) -> list[pathlib.Path]:
        """Files added, removed or modified since the last call."""
        current = self.snapshot()
        changed = sorted(
            path
            for path in current.keys() | self._last.keys()
            if current.get(path) != self._last.get(path)
        )
        self._last = current
        return changed


async def reload_on_change(
    runtime: Runtime,
    project_dir: str | pathlib.Path,
    *,
    registry: Registry | None = None,
    interval: float = 0.5,
) -> None:
    """Watch the project at `project_dir` and redeploy it on `runtime` after each
    change, until cancelled."""
    registry = registry or get_registry()
    project = load_project(project_dir)
    language = registry.language(project.language)
    watcher = SourceWatcher(project.dir, language.source_globs())
    while True:
        await asyncio.sleep(interval)
        changed = watcher.changes()
        if not changed:
            continue
        while more := watcher.changes():  # wait until the editor has finished writing
            changed += more
            await asyncio.sleep(interval)
        names = ", ".join(sorted({str(p.relative_to(project.dir)) for p in changed}))
        log.info("changed: %s; rebuilding", names)
        try:
            result = await asyncio.to_thread(build_project, project.dir, registry)
            services = await runtime.deploy(load_package(result.path))
        except OkraError as exc:
            log.error("%s", exc)
            log.error("still serving the previous version")
            continue
        log.info("reloaded %s in %.1fs: %s", result.path.name, result.seconds, ", ".join(services))
