"""What a module imports, exports and declares as memory, read from its bytes.

wasm3's C API does not list a module's imports or exports, and the runtime checks
both before it instantiates anything (capabilities, the ABI). This reads the few
sections that say so, and rewrites the memory section to cap a memory's maximum (how
the engine enforces `InstanceLimits.memory_bytes`: wasm3 refuses `memory.grow` past
the declared maximum). Function bodies are not read.
"""

from __future__ import annotations

import dataclasses

from okra_core.engine import ExportSpec, ImportSpec

PAGE = 65536
_VALTYPES = {
    0x7F: "i32", 0x7E: "i64", 0x7D: "f32", 0x7C: "f64", 0x7B: "v128",
    0x70: "funcref", 0x6F: "externref",
}
_KINDS = {0: "func", 1: "table", 2: "memory", 3: "global", 4: "tag"}
_TYPE, _IMPORT, _FUNCTION, _MEMORY, _EXPORT = 1, 2, 3, 5, 7


class Malformed(ValueError):
    """The bytes are not a module this reader understands."""


@dataclasses.dataclass(frozen=True)
class Memory:
    """The module's memory 0: its initial and maximum size in pages (maximum None: none
    declared), and whether it is imported rather than defined."""

    initial: int
    maximum: int | None
    imported: bool


@dataclasses.dataclass(frozen=True)
class ModuleInfo:
    imports: tuple[ImportSpec, ...]
    exports: tuple[ExportSpec, ...]
    memory: Memory | None


class _Reader:
    __slots__ = ("data", "pos", "end")

    def __init__(self, data: bytes, pos: int = 0, end: int | None = None):
        self.data = data
        self.pos = pos
        self.end = len(data) if end is None else end

    def byte(self) -> int:
        if self.pos >= self.end:
            raise Malformed("unexpected end of section")
        b = self.data[self.pos]
        self.pos += 1
        return b

    def u32(self) -> int:
        result = shift = 0
        while True:
            b = self.byte()
            result |= (b & 0x7F) << shift
            if not b & 0x80:
                break
            shift += 7
            if shift > 28:
                raise Malformed("integer too long")
        if result >= 1 << 32:
            raise Malformed("integer too large")
        return result

    def name(self) -> str:
        n = self.u32()
        if self.pos + n > self.end:
            raise Malformed("name runs past the end of its section")
        raw = self.data[self.pos : self.pos + n]
        self.pos += n
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise Malformed("a name is not UTF-8") from None

    def valtype(self) -> str:
        code = self.byte()
        try:
            return _VALTYPES[code]
        except KeyError:
            raise Malformed(f"unknown value type 0x{code:02x}") from None

    def limits(self) -> tuple[int, int | None]:
        flags = self.byte()
        if flags & ~0x03:
            raise Malformed(f"unsupported limits flags 0x{flags:02x} (memory64?)")
        initial = self.u32()
        maximum = self.u32() if flags & 0x01 else None
        return initial, maximum


def _sections(data: bytes):
    """(id, header start, body start, end) of each section."""
    if data[:4] != b"\0asm" or data[4:8] != b"\x01\x00\x00\x00":
        raise Malformed("not a WebAssembly core module (version 1)")
    r = _Reader(data, 8)
    while r.pos < len(data):
        head = r.pos
        section = r.byte()
        size = r.u32()
        start = r.pos
        if start + size > len(data):
            raise Malformed(f"section {section} runs past the end of the module")
        yield section, head, start, start + size
        r.pos = start + size


def read(data: bytes) -> ModuleInfo:
    """Raise Malformed if the sections read cannot be decoded."""
    types: list[tuple[tuple[str, ...], tuple[str, ...]]] = []
    functions: list[int] = []  # type index of each function, imported ones first
    imports: list[ImportSpec] = []
    exports: list[tuple[str, int, int]] = []
    memory: Memory | None = None
    for section, _head, start, end in _sections(data):
        r = _Reader(data, start, end)
        if section == _TYPE:
            for _ in range(r.u32()):
                form = r.byte()
                if form != 0x60:
                    raise Malformed(f"unsupported type form 0x{form:02x}")
                params = tuple(r.valtype() for _ in range(r.u32()))
                results = tuple(r.valtype() for _ in range(r.u32()))
                types.append((params, results))
        elif section == _IMPORT:
            for _ in range(r.u32()):
                module, name, kind = r.name(), r.name(), r.byte()
                if kind == 0:
                    index = r.u32()
                    functions.append(index)
                    params, results = _type(types, index)
                    imports.append(ImportSpec(module, name, "func", params, results))
                    continue
                if kind == 1:
                    r.valtype()
                    r.limits()
                elif kind == 2:
                    initial, maximum = r.limits()
                    if memory is None:
                        memory = Memory(initial, maximum, imported=True)
                elif kind == 3:
                    r.valtype()
                    r.byte()
                elif kind == 4:
                    r.byte()
                    r.u32()
                else:
                    raise Malformed(f"unknown import kind {kind}")
                imports.append(ImportSpec(module, name, _KINDS[kind]))
        elif section == _FUNCTION:
            functions.extend(r.u32() for _ in range(r.u32()))
        elif section == _MEMORY:
            count = r.u32()
            if count and memory is None:
                initial, maximum = r.limits()
                memory = Memory(initial, maximum, imported=False)
        elif section == _EXPORT:
            for _ in range(r.u32()):
                exports.append((r.name(), r.byte(), r.u32()))
    specs = []
    for name, kind, index in exports:
        if kind == 0:
            if index >= len(functions):
                raise Malformed(f"export {name!r} names function {index}, which does not exist")
            specs.append(ExportSpec(name, "func", *_type(types, functions[index])))
        else:
            specs.append(ExportSpec(name, _KINDS.get(kind, "unknown")))
    return ModuleInfo(tuple(imports), tuple(specs), memory)


def _type(types, index: int) -> tuple[tuple[str, ...], tuple[str, ...]]:
    if index >= len(types):
        raise Malformed(f"type index {index} does not exist")
    return types[index]


def _leb(value: int) -> bytes:
    out = bytearray()
    while True:
        b = value & 0x7F
        value >>= 7
        if value:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def cap_memory(data: bytes, max_pages: int) -> bytes:
    """The module with its (defined) memory's maximum lowered to `max_pages`, if it
    declared none or a larger one. The caller checks the initial size first."""
    for section, head, start, end in _sections(data):
        if section != _MEMORY:
            continue
        r = _Reader(data, start, end)
        if r.u32() == 0:
            return data
        initial, maximum = r.limits()
        if maximum is not None and maximum <= max_pages:
            return data
        body = _leb(1) + b"\x01" + _leb(initial) + _leb(max_pages) + data[r.pos : end]
        header = bytes([_MEMORY]) + _leb(len(body))
        return data[:head] + header + body + data[end:]
    return data
