"""Secrets provider `dir`: secret NAME is the file `<path>/NAME`, its content the value.

This is the shape of a Kubernetes secret volume, Docker secrets (/run/secrets) and
systemd credentials ($CREDENTIALS_DIRECTORY). The file is read at every `get`, so a
rotated secret (a volume's atomic symlink swap, a rewritten file) is seen at the next
read. Symlinks are followed only while they stay inside the directory, so a secret file
cannot be made to point at the rest of the host's file system; a secret must be a regular
file (a FIFO or device would block or never end).
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import Any

from okra_core.errors import ConfigError
from okra_core.hookspecs import hookimpl
from okra_core.secrets import SECRET_NAME

#: Largest secret file read; a bigger one is a mistake (a log, an image) and reading it
#: whole into every caller's memory would hurt.
MAX_SECRET_BYTES = 1024 * 1024


class SecretRefused(PermissionError):
    """The file for a secret exists but may not be read as one (it escapes the
    directory, is not a regular file, or is too big)."""


class DirSecrets:
    """Secrets from the files of one directory."""

    name = "dir"

    def __init__(self, path: str | os.PathLike[str]):
        if not isinstance(path, (str, os.PathLike)) or not str(path):
            raise ConfigError("secrets provider dir needs option path: the secrets directory")
        self.path = Path(path)
        if not self.path.is_dir():
            what = "does not exist" if not self.path.exists() else "is not a directory"
            raise ConfigError(
                f"secrets provider dir: {self.path} {what}; create it (one file per secret, "
                "named as the secret) or point path at the secrets directory"
            )
        # Resolved once: the directory itself may legitimately be a symlink (/run/secrets).
        self._root = self.path.resolve(strict=True)

    def get(self, name: str) -> bytes | None:
        if not SECRET_NAME.fullmatch(name):
            raise ValueError(f"{name!r} is not a secret name")
        root = str(self._root)
        target = os.path.realpath(os.path.join(root, name))
        if target == root or os.path.commonpath((target, root)) != root:
            raise SecretRefused(
                f"secret file {os.path.join(root, name)} leads outside {root}; refused"
            )
        try:
            # O_NOFOLLOW: the path was resolved above; a symlink swapped in since is refused.
            # O_NONBLOCK: opening a FIFO must not wait for a writer.
            fd = os.open(target, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise SecretRefused(f"secret file {target} changed into a symlink; refused") from None
            raise
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise SecretRefused(f"secret file {target} is not a regular file; refused")
            chunks = []
            size = 0
            while size <= MAX_SECRET_BYTES:
                chunk = os.read(fd, MAX_SECRET_BYTES + 1 - size)
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
            data = b"".join(chunks)
        finally:
            os.close(fd)
        if len(data) > MAX_SECRET_BYTES:
            raise SecretRefused(f"secret file {target} is larger than {MAX_SECRET_BYTES} bytes")
        return data

    def __repr__(self) -> str:
        return f"DirSecrets(path={str(self.path)!r})"


def make_dir_secrets(**options: Any) -> DirSecrets:
    unknown = set(options) - {"path"}
    if unknown:
        raise ConfigError(
            f"unknown options for secrets provider dir: {', '.join(sorted(unknown))} (known: path)"
        )
    if "path" not in options:
        raise ConfigError("secrets provider dir needs option path: the secrets directory")
    return DirSecrets(options["path"])


@hookimpl
def register_secrets_providers(register):
    register("dir", make_dir_secrets)
