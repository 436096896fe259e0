"""Fuel checks written into a module, so that wasm3 can stop a running guest.

wasm3 has no way to interrupt wasm from outside (wasmtime has epoch checks), so the
engine adds one to the module itself: a mutable i32 global holding the fuel, taken by
one at the start of every function, of every loop iteration and every `STRAIGHT`
instructions of loop-free code, and by the length (one per 4 KiB) before every bulk
memory or table operation; when it runs out, a call to an imported host function looks
at the call's deadline and at `Instance.interrupt` and either refuels or stops the
call. So whatever a guest does, at most `FUEL` x `STRAIGHT` instructions, or `FUEL` x
4 KiB of bulk work, run between two looks (measured: stopped within a few ms of its
deadline).

The rewrite:

* a new type `() -> i32` at the end of the type section;
* a new function import `okra_meter.refuel` at the end of the import section, so every
  function defined in the module moves up one index: `call`, `return_call`,
  `ref.func`, exports, the start function, element segments and constant expressions
  are renumbered; the custom "name" section (debug names by index) is dropped;
* a new mutable global at the end of the global section (no index moves);
* at each function entry, each `loop` header and every `STRAIGHT` instructions::

      global.get $fuel  i32.eqz
      if  call $refuel  global.set $fuel  end
      global.get $fuel  i32.const 1  i32.sub  global.set $fuel

* before each bulk operation (its length on top of the stack), in a function given one
  more i32 local to hold it::

      local.tee $n  global.get $fuel  local.get $n  i32.const 12  i32.shr_u  i32.sub
      global.set $fuel  global.get $fuel  i32.const 1  i32.lt_s
      if  call $refuel  global.set $fuel  end

  (refuelling at once keeps the fuel from going below zero, which the checks above,
  comparing with zero, rely on);

Instructions are decoded, not pattern-matched: a module using an instruction this
decoder does not know (SIMD, exceptions, which wasm3 does not run either) raises
Unsupported.
"""

from __future__ import annotations

from okra_plugins.engine_wasm3 import _wasm

NAMESPACE = "okra_meter"
REFUEL = "refuel"
#: Checks between two calls of the refuel function.
FUEL = 10_000
#: The most instructions between two checks in code without loops (a long function).
STRAIGHT = 256
#: Bulk memory and table operations take one fuel per this many bytes (or elements).
BULK_SHIFT = 12  # 4 KiB
#: 0xFC operations whose work grows with their length operand (on top of the stack):
#: memory.init, memory.copy, memory.fill, table.init, table.copy, table.grow, table.fill.
_BULK = frozenset([8, 10, 11, 12, 14, 15, 17])

_TYPE, _IMPORT, _FUNCTION, _GLOBAL, _EXPORT, _START, _ELEMENT, _CODE, _DATACOUNT = (
    1, 2, 3, 6, 7, 8, 9, 10, 12,
)
#: Where a section goes, by id (the data count section sits between element and code).
_ORDER = {0: -1, 1: 1, 2: 2, 3: 3, 4: 4, 5: 5, 13: 5.5, 6: 6, 7: 7, 8: 8, 9: 9, 12: 9.5, 10: 10, 11: 11}


class Unsupported(ValueError):
    """The module holds something the rewrite does not understand."""


# -- reading ---------------------------------------------------------------------------

_NO_IMMEDIATE = frozenset(
    [0x00, 0x01, 0x05, 0x0B, 0x0F, 0x1A, 0x1B, 0xD1]
    + list(range(0x45, 0xC5))
)
_ONE_U32 = frozenset([0x0C, 0x0D, 0x20, 0x21, 0x22, 0x23, 0x24, 0x25, 0x26, 0x3F, 0x40])
_BLOCKS = frozenset([0x02, 0x03, 0x04])
_FUNC_REF = frozenset([0x10, 0x12, 0xD2])
_VALTYPE_BYTES = frozenset([0x40, 0x7F, 0x7E, 0x7D, 0x7C, 0x7B, 0x70, 0x6F])
# 0xFC sub-opcodes -> how many u32 immediates follow
_FC = {0: 0, 1: 0, 2: 0, 3: 0, 4: 0, 5: 0, 6: 0, 7: 0, 8: 2, 9: 1, 10: 2, 11: 1,
       12: 2, 13: 1, 14: 2, 15: 1, 16: 1, 17: 1}


def _skip_leb(data: bytes, pos: int, end: int) -> int:
    start = pos
    while True:
        if pos >= end:
            raise Unsupported("truncated integer")
        b = data[pos]
        pos += 1
        if not b & 0x80:
            return pos
        if pos - start > 10:
            raise Unsupported("integer too long")


def _u32(data: bytes, pos: int, end: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= end:
            raise Unsupported("truncated integer")
        b = data[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 28:
            raise Unsupported("integer too long")


_leb = _wasm._leb


class _Rewriter:
    """Copies instructions, renumbering function indices and adding fuel checks."""

    def __init__(self, data: bytes, imported_funcs: int, refuel: int, fuel_global: int):
        self.data = data
        self.imported = imported_funcs
        self.refuel = refuel
        g = self.fuel_global = _leb(fuel_global)
        self.check = bytes(
            b"\x23" + g + b"\x45" + b"\x04\x40" + b"\x10" + _leb(refuel) + b"\x24" + g + b"\x0b"
            + b"\x23" + g + b"\x41\x01" + b"\x6b" + b"\x24" + g
        )

    def bulk_charge(self, scratch: int) -> bytes:
        """Take length >> BULK_SHIFT fuel, the length being on top of the stack (kept
        there), and refuel at once if that leaves none: so fuel is never left below 0,
        which the one-by-one checks (fuel == 0) rely on."""
        s, g = _leb(scratch), self.fuel_global
        return bytes(
            b"\x22" + s  # local.tee $scratch
            + b"\x23" + g + b"\x20" + s + b"\x41" + _signed_leb(BULK_SHIFT) + b"\x76"
            + b"\x6b" + b"\x24" + g  # fuel -= scratch >> BULK_SHIFT
            + b"\x23" + g + b"\x41\x01" + b"\x48"  # fuel < 1 (signed)
            + b"\x04\x40" + b"\x10" + _leb(self.refuel) + b"\x24" + g + b"\x0b"
        )

    def func(self, index: int) -> int:
        return index + 1 if index >= self.imported else index

    def instructions(
        self, pos: int, end: int, out: bytearray, *, meter: bool, scratch: int | None = None
    ) -> tuple[int, bool]:
        """Copy instructions from `pos` up to the `end` that closes the sequence (a body
        or a constant expression); returns the position after it, and whether the
        `scratch` local was used (a bulk operation was charged)."""
        data = self.data
        depth = 0
        copied = pos  # data[copied:pos] is still to be copied verbatim
        since_check = 0
        used_scratch = False
        while True:
            if pos >= end:
                raise Unsupported("instructions run past their end")
            if meter:
                since_check += 1
                if since_check > STRAIGHT:  # a check before this instruction
                    out += data[copied:pos]
                    out += self.check
                    copied = pos
                    since_check = 0
            op = data[pos]
            pos += 1
            if op in _NO_IMMEDIATE:
                if op == 0x0B:
                    if depth == 0:
                        out += data[copied:pos]
                        return pos, used_scratch
                    depth -= 1
                continue
            if op in _ONE_U32:
                pos = _skip_leb(data, pos, end)
            elif op in _BLOCKS:
                depth += 1
                if data[pos] in _VALTYPE_BYTES:
                    pos += 1
                else:
                    pos = _skip_leb(data, pos, end)  # s33 type index
                if op == 0x03 and meter:
                    out += data[copied:pos]
                    out += self.check
                    copied = pos
                    since_check = 0
            elif op in _FUNC_REF:
                out += data[copied : pos]
                index, pos = _u32(data, pos, end)
                out += _leb(self.func(index))
                copied = pos
            elif 0x28 <= op <= 0x3E:  # memarg
                align, pos = _u32(data, pos, end)
                if align & 0x40:  # a memory index follows (multi-memory)
                    pos = _skip_leb(data, pos, end)
                pos = _skip_leb(data, pos, end)
            elif op == 0x41 or op == 0x42:
                pos = _skip_leb(data, pos, end)
            elif op == 0x43:
                pos += 4
            elif op == 0x44:
                pos += 8
            elif op == 0x0E:  # br_table
                count, pos = _u32(data, pos, end)
                for _ in range(count + 1):
                    pos = _skip_leb(data, pos, end)
            elif op == 0x11 or op == 0x13:  # call_indirect: type, table
                pos = _skip_leb(data, pos, end)
                pos = _skip_leb(data, pos, end)
            elif op == 0x1C:  # select t*
                count, pos = _u32(data, pos, end)
                pos += count
            elif op == 0xD0:  # ref.null t
                pos += 1
            elif op == 0xFC:
                if meter and scratch is not None and data[pos] in _BULK:
                    out += data[copied : pos - 1]
                    out += self.bulk_charge(scratch)
                    copied = pos - 1
                    used_scratch = True
                sub, pos = _u32(data, pos, end)
                if sub not in _FC:
                    raise Unsupported(f"instruction 0xfc {sub}")
                for _ in range(_FC[sub]):
                    pos = _skip_leb(data, pos, end)
            else:
                raise Unsupported(f"instruction 0x{op:02x}")


def instrument(data: bytes) -> bytes:
    """The module with fuel checks; Unsupported if it cannot be rewritten."""
    sections = [(section, start, end) for section, _, start, end in _wasm._sections(data)]
    heads = {start: head for _, head, start, _ in _wasm._sections(data)}
    present = {s for s, _, _ in sections}
    if _CODE not in present:
        return data  # no code, nothing to meter

    # What the rewrite needs to know first: types, imported functions and globals.
    type_count = imported_funcs = globals_count = 0
    type_params: list[int] = []
    params: list[int] = []  # of each defined function
    for section, start, end in sections:
        r = _wasm._Reader(data, start, end)
        if section == _TYPE:
            type_count = r.u32()
            for _ in range(type_count):
                if r.byte() != 0x60:
                    raise Unsupported("a type that is not a function type")
                n = r.u32()
                for _ in range(n):
                    r.valtype()
                type_params.append(n)
                for _ in range(r.u32()):
                    r.valtype()
        elif section == _FUNCTION:
            for _ in range(r.u32()):
                index = r.u32()
                if index >= len(type_params):
                    raise Unsupported(f"type index {index} does not exist")
                params.append(type_params[index])
        elif section == _IMPORT:
            for _ in range(r.u32()):
                r.name()
                r.name()
                kind = r.byte()
                if kind == 0:
                    r.u32()
                    imported_funcs += 1
                elif kind == 1:
                    r.valtype()
                    r.limits()
                elif kind == 2:
                    r.limits()
                elif kind == 3:
                    r.valtype()
                    r.byte()
                    globals_count += 1
                elif kind == 4:
                    r.byte()
                    r.u32()
                else:
                    raise Unsupported(f"import kind {kind}")
        elif section == _GLOBAL:
            globals_count += _wasm._Reader(data, start, end).u32()
    rewriter = _Rewriter(data, imported_funcs, imported_funcs, globals_count)

    new: dict[int, bytes] = {}
    for section, start, end in sections:
        if section == _TYPE:
            new[section] = _type_section(data, start, end)
        elif section == _IMPORT:
            new[section] = _import_section(data, start, end, type_count)
        elif section == _GLOBAL:
            new[section] = _global_section(data, start, end, rewriter)
        elif section == _EXPORT:
            new[section] = _export_section(data, start, end, rewriter)
        elif section == _START:
            index, _ = _u32(data, start, end)
            new[section] = _leb(rewriter.func(index))
        elif section == _ELEMENT:
            new[section] = _element_section(data, start, end, rewriter)
        elif section == _CODE:
            new[section] = _code_section(data, start, end, rewriter, params)
    if _TYPE not in present:
        new[_TYPE] = _leb(1) + b"\x60\x00\x01\x7f"
    if _IMPORT not in present:
        new[_IMPORT] = _leb(1) + _refuel_import(type_count)
    if _GLOBAL not in present:
        new[_GLOBAL] = _leb(1) + _fuel_global()

    out = bytearray(data[:8])
    pending = sorted(s for s in new if s not in present)
    for section, start, end in sections:
        if section == 0 and data[start:end].startswith(b"\x04name"):
            continue  # debug names by function index: now off by one
        while pending and section != 0 and _ORDER[pending[0]] < _ORDER.get(section, 99):
            _append(out, pending.pop(0), new)
        if section in new:
            _append(out, section, new)
        else:
            out += data[heads[start] : end]
    for section in pending:
        _append(out, section, new)
    return bytes(out)


def _append(out: bytearray, section: int, new: dict[int, bytes]) -> None:
    body = new[section]
    out += bytes([section]) + _leb(len(body)) + body


def _type_section(data, start, end) -> bytes:
    count, pos = _u32(data, start, end)
    return _leb(count + 1) + data[pos:end] + b"\x60\x00\x01\x7f"


def _refuel_import(type_index: int) -> bytes:
    return (
        _leb(len(NAMESPACE)) + NAMESPACE.encode() + _leb(len(REFUEL)) + REFUEL.encode()
        + b"\x00" + _leb(type_index)
    )


def _import_section(data, start, end, type_index: int) -> bytes:
    count, pos = _u32(data, start, end)
    return _leb(count + 1) + data[pos:end] + _refuel_import(type_index)


def _fuel_global() -> bytes:
    return b"\x7f\x01" + b"\x41" + _signed_leb(FUEL) + b"\x0b"


def _signed_leb(value: int) -> bytes:
    out = bytearray()
    while True:
        b = value & 0x7F
        value >>= 7
        if (value == 0 and not b & 0x40) or (value == -1 and b & 0x40):
            out.append(b)
            return bytes(out)
        out.append(b | 0x80)


def _global_section(data, start, end, rewriter: _Rewriter) -> bytes:
    count, pos = _u32(data, start, end)
    out = bytearray(_leb(count + 1))
    for _ in range(count):
        out += data[pos : pos + 2]  # valtype, mutability
        pos, _ = rewriter.instructions(pos + 2, end, out, meter=False)
    if pos != end:
        raise Unsupported("global section has trailing bytes")
    return bytes(out + _fuel_global())


def _export_section(data, start, end, rewriter: _Rewriter) -> bytes:
    r = _wasm._Reader(data, start, end)
    count = r.u32()
    out = bytearray(_leb(count))
    for _ in range(count):
        name_start = r.pos
        r.name()
        out += data[name_start : r.pos]
        kind = r.byte()
        index = r.u32()
        out += bytes([kind]) + _leb(rewriter.func(index) if kind == 0 else index)
    return bytes(out)


def _element_section(data, start, end, rewriter: _Rewriter) -> bytes:
    count, pos = _u32(data, start, end)
    out = bytearray(_leb(count))
    for _ in range(count):
        flags, pos = _u32(data, pos, end)
        out += _leb(flags)
        if flags > 7:
            raise Unsupported(f"element segment flags {flags}")
        if flags & 0x02 and not flags & 0x01:  # explicit table index
            table, pos = _u32(data, pos, end)
            out += _leb(table)
        if not flags & 0x01:  # active: an offset expression
            pos, _ = rewriter.instructions(pos, end, out, meter=False)
        if flags & 0x03:  # elemkind or reftype byte
            out += data[pos : pos + 1]
            pos += 1
        n, pos = _u32(data, pos, end)
        out += _leb(n)
        for _ in range(n):
            if flags & 0x04:  # expressions
                pos, _ = rewriter.instructions(pos, end, out, meter=False)
            else:
                index, pos = _u32(data, pos, end)
                out += _leb(rewriter.func(index))
    return bytes(out)


def _code_section(data, start, end, rewriter: _Rewriter, params: list[int]) -> bytes:
    """`params[i]`: the parameter count of the module's i-th defined function."""
    count, pos = _u32(data, start, end)
    if count != len(params):
        raise Unsupported("the code and function sections disagree")
    out = bytearray(_leb(count))
    for index in range(count):
        size, pos = _u32(data, pos, end)
        body_end = pos + size
        groups, p = _u32(data, pos, body_end)
        locals_count = 0
        for _ in range(groups):
            n, p = _u32(data, p, body_end)
            locals_count += n
            p += 1
        code = bytearray(rewriter.check)  # function entry
        # A bulk operation's charge keeps its length in a local added after the others.
        scratch = params[index] + locals_count
        p, used = rewriter.instructions(p, body_end, code, meter=True, scratch=scratch)
        if p != body_end:
            raise Unsupported("a function body has bytes after its end")
        locals_end = _locals_end(data, pos, body_end)
        if used:  # one more group: a single i32
            header = _leb(groups + 1) + data[_skip_leb(data, pos, body_end) : locals_end] + b"\x01\x7f"
        else:
            header = data[pos:locals_end]
        body = header + code
        out += _leb(len(body)) + body
        pos = body_end
    return bytes(out)


def _locals_end(data: bytes, pos: int, end: int) -> int:
    """Where a body's locals declarations end."""
    groups, p = _u32(data, pos, end)
    for _ in range(groups):
        p = _skip_leb(data, p, end)
        p += 1
    return p
