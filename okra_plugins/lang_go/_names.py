"""Go names for protobuf things: the rules protoc-gen-go follows, so generated code reads
like the Go protobuf code a Go developer already knows."""

from __future__ import annotations

import re

GO_KEYWORDS = frozenset(
    "break case chan const continue default defer else fallthrough for func go goto if "
    "import interface map package range return select struct switch type var".split()
)

_VERSION = re.compile(r"^v\d+((alpha|beta)\d*)?$")


def go_camel_case(name: str) -> str:
    """protoc-gen-go's CamelCase: `hello_world` -> `HelloWorld`, `_x` -> `XX`,
    `foo2bar` -> `Foo2Bar`, `a.B` -> `A_B`."""
    out: list[str] = []
    i = 0
    while i < len(name):
        c = name[i]
        if c == "." and i + 1 < len(name) and name[i + 1].islower() and name[i + 1].isascii():
            pass  # "." before a lower-case letter is dropped
        elif c == ".":
            out.append("_")
        elif c == "_" and (i == 0 or name[i - 1] == "."):
            out.append("X")  # a leading "_" would make the name unexported
        elif c == "_" and i + 1 < len(name) and _is_lower(name[i + 1]):
            pass  # "_x" -> "X": the next letter is upper-cased below
        elif c.isdigit() and c.isascii():
            out.append(c)
        else:
            if _is_lower(c):
                c = c.upper()
            out.append(c)
            while i + 1 < len(name) and _is_lower(name[i + 1]):
                i += 1
                out.append(name[i])
        i += 1
    return "".join(out)


def _is_lower(c: str) -> bool:
    return "a" <= c <= "z"


def go_package_name(proto_package: str) -> str:
    """The Go package name for a proto package: its last element, joined with the one
    before when the last is a version (`greeter.v1` -> `greeterv1`, as buf does)."""
    parts = [p for p in proto_package.split(".") if p]
    if not parts:
        return "gen"
    if len(parts) >= 2 and _VERSION.match(parts[-1]):
        name = parts[-2] + parts[-1]
    else:
        name = parts[-1]
    name = re.sub(r"[^a-z0-9]", "", name.lower()) or "pb"
    if name[0].isdigit():
        name = "pb" + name
    if name in GO_KEYWORDS or name in ("main", "init"):
        name += "pb"
    return name


class Namespace:
    """A set of Go identifiers: claim() hands out a name, adding `_` until it is free,
    as protoc-gen-go does for clashes."""

    def __init__(self, taken: set[str] | frozenset[str] = frozenset()):
        self._taken = set(taken)

    def claim(self, name: str) -> str:
        while name in self._taken:
            name += "_"
        self._taken.add(name)
        return name

    def __contains__(self, name: str) -> bool:
        return name in self._taken
