"""Writing generated trees without needless writes.

A file whose content is unchanged is not rewritten, so its modification time stays put:
file watchers, editors and the Go build cache see no change where there is none.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Callable, Mapping


def write_if_changed(path: pathlib.Path, content: str | bytes) -> bool:
    """Write `content` to `path` unless it already holds exactly that; True if written."""
    data = content.encode() if isinstance(content, str) else content
    try:
        if path.read_bytes() == data:
            return False
    except OSError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return True


def sync_tree(
    root: pathlib.Path,
    files: Mapping[str, str | bytes],
    owned: Callable[[pathlib.Path], bool],
) -> list[pathlib.Path]:
    """Make `root` hold `files` (relative posix paths -> content): write what changed,
    delete the files that `owned` claims but `files` no longer has, drop emptied
    directories. Returns the paths of all `files`."""
    wanted = {root / rel for rel in files}
    for rel, content in files.items():
        write_if_changed(root / rel, content)
    if root.is_dir():
        for path in sorted(root.rglob("*"), reverse=True):
            if path.is_file() and path not in wanted and owned(path):
                path.unlink()
            elif path.is_dir() and not any(path.iterdir()):
                path.rmdir()
    return sorted(wanted)
