"""The on-disk cache of compiled modules.

Compiling a Go module takes about a second; loading it back takes milliseconds. An entry
is named by the module's sha256 and a key for everything else that shapes the machine
code (wasmtime version, engine settings, CPU), so a changed module, engine or setting
never reuses a stale entry. Entries are written to a temporary file and renamed into
place, so readers never see half an entry; each carries a checksum, so a damaged entry
is detected, dropped and recompiled rather than handed to wasmtime.

Loading compiled code is trusted by wasmtime: whoever can write the cache can run code
in this process. So the directory is created private (0700), and a directory that
another user owns or that group or others may write is not read from at all.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pathlib
import tempfile

from okra_core.engine import cache_home

log = logging.getLogger(__name__)

MAGIC = b"OKRAcwasm\x00\x01\x00"  # format 1
_HEADER = len(MAGIC) + 32  # magic, then sha256 of the payload


def default_cache_dir() -> pathlib.Path:
    """`$OKRA_CACHE_DIR`, else `$XDG_CACHE_HOME/okra/modules`, else `~/.cache/okra/modules`."""
    explicit = os.environ.get("OKRA_CACHE_DIR")
    if explicit:
        return pathlib.Path(explicit).expanduser()
    return cache_home() / "modules"


class ModuleCache:
    """Compiled modules in `directory`, for one engine configuration (`config_key`)."""

    def __init__(self, directory: str | os.PathLike, config_key: str):
        self.directory = pathlib.Path(directory).expanduser()
        self.config_key = config_key
        self._warned = False

    def trusted(self) -> bool:
        """Whether entries may be loaded: the directory is ours and only we may write it."""
        try:
            info = self.directory.stat()
        except OSError:
            return False
        if info.st_uid != os.getuid() or info.st_mode & 0o022:
            if not self._warned:
                self._warned = True
                log.warning(
                    "not using compiled-module cache %s: it must be owned by this user and "
                    "not writable by group or others (chmod 700 %s)",
                    self.directory,
                    self.directory,
                )
            return False
        return True

    def path(self, digest: str) -> pathlib.Path:
        return self.directory / f"{digest}-{self.config_key}.cwasm"

    def load(self, digest: str) -> bytes | None:
        """The compiled bytes for the module with sha256 `digest`, or None (a miss, or an
        entry that was unreadable or damaged and has been removed)."""
        path = self.path(digest)
        if not self.trusted():
            return None
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warning("cannot read compiled-module cache entry %s: %s", path, exc)
            return None
        payload = data[_HEADER:]
        if (
            len(data) < _HEADER
            or not data.startswith(MAGIC)
            or hashlib.sha256(payload).digest() != data[len(MAGIC) : _HEADER]
        ):
            log.warning("compiled-module cache entry %s is damaged; recompiling", path)
            self.discard(digest)
            return None
        return payload

    def store(self, digest: str, payload: bytes) -> None:
        """Write an entry atomically. A cache that cannot be written is a warning, not an
        error: the module is compiled and works either way."""
        path = self.path(digest)
        tmp_name = None
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd, tmp_name = tempfile.mkstemp(
                prefix=f".{digest[:16]}-", suffix=".tmp", dir=self.directory
            )
            with os.fdopen(fd, "wb") as tmp:
                tmp.write(MAGIC)
                tmp.write(hashlib.sha256(payload).digest())
                tmp.write(payload)
            os.replace(tmp_name, path)
            tmp_name = None
        except OSError as exc:
            log.warning("cannot write compiled-module cache entry %s: %s", path, exc)
        finally:
            if tmp_name is not None:
                try:
                    os.unlink(tmp_name)
                except OSError:
                    pass

    def discard(self, digest: str) -> None:
        try:
            self.path(digest).unlink()
        except OSError:
            pass
