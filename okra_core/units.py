"""Sizes as operators write them ("4MiB", "512KiB", 1048576), for options and settings."""

from __future__ import annotations

import re

from okra_core.errors import ConfigError

_SIZE = re.compile(r"^\s*(\d+)\s*(b|kb|kib|mb|mib|gb|gib)?\s*$", re.IGNORECASE)
_UNITS = {
    None: 1, "b": 1, "kb": 1000, "kib": 1024, "mb": 1000**2, "mib": 1024**2,
    "gb": 1000**3, "gib": 1024**3,
}


def parse_size(value: int | str, option: str = "size", maximum: int = 2**31 - 1) -> int:
    """Bytes from an int or a string like "4MiB"; a ConfigError naming `option` otherwise."""
    size = None
    if isinstance(value, int) and not isinstance(value, bool):
        size = value
    elif isinstance(value, str) and (match := _SIZE.match(value)):
        size = int(match[1]) * _UNITS[match[2] and match[2].lower()]
    if size is None or not 0 < size <= maximum:
        raise ConfigError(
            f"{option} {value!r} is not a size between 1 byte and {_human(maximum)}: "
            'write a number of bytes or e.g. "4MiB"'
        )
    return size


def _human(size: int) -> str:
    for unit, factor in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        for whole in (size, size + 1):  # 2**31 - 1 reads as "2 GiB" too
            if whole >= factor and whole % factor == 0:
                return f"{whole // factor} {unit}"
    return f"{size} bytes"
