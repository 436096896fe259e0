# Test plan: the fuel checks the wasm3 engine writes into modules
# (okra_plugins/engine_wasm3/_meter.py), held to a second opinion: every rewritten module
# must validate and behave the same on wasmtime, with okra_meter.refuel provided there.
#
# - every guest in tests/fixtures/ rewrites to a module wasmtime accepts
# - a module using what renumbering touches (imports, call, call_indirect through an
#   element segment, ref.func in a global and in an expression segment, an exported
#   function, a start function, return values) computes the same results after the
#   rewrite (on wasm3, the engine conformance suite and the Go guests run rewritten)
# - the wasm3 engine reports the imports of the module as built, without refuel
# - refuel runs once per FUEL checks: a loop of N iterations calls it about N / FUEL
#   times; a recursion with no loop is metered at each call
# - what one-by-one checks would miss is charged too: a deadline stops a loop whose
#   body is a long loop-free function (a check every STRAIGHT instructions) or a 16 MiB
#   memory.fill / memory.copy (bulk operations take fuel by length) within a second,
#   and bulk operations compute the same after the rewrite
# - a module with no type, import or global section gets them; one with no code is
#   left as it is; the debug name section is dropped
# - an instruction the rewrite does not know (SIMD) is Unsupported; the engine refuses
#   such a module before (its validator, limited to what wasm3 runs), naming what it runs
import pytest
import wasmtime

from okra_core.errors import DeployError
from okra_core.plugins import get_registry
from okra_plugins.engine_wasm3 import _meter
from support import FIXTURES_DIR

RENUMBERED = """
(module
  (import "env" "add" (func $add (param i32 i32) (result i32)))
  (type $unary (func (param i32) (result i32)))
  (table 2 funcref)
  (elem (i32.const 0) $double $triple)
  (elem declare func $triple)
  (global $g (mut i32) (i32.const 0))
  (global $f funcref (ref.func $double))
  (memory (export "memory") 1)
  (func $double (param i32) (result i32) (i32.mul (local.get 0) (i32.const 2)))
  (func $triple (param i32) (result i32) (i32.mul (local.get 0) (i32.const 3)))
  (func $start (global.set $g (i32.const 7)))
  (start $start)
  (func (export "via_table") (param i32 i32) (result i32)
    (call_indirect (type $unary) (local.get 1) (local.get 0)))
  (func (export "via_import") (param i32) (result i32)
    (call $add (local.get 0) (call $double (local.get 0))))
  (func (export "started") (result i32) (global.get $g))
  (func (export "loop") (param $n i32) (result i32) (local $i i32) (local $sum i32)
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $i) (local.get $n)))
        (local.set $sum (i32.add (local.get $sum) (local.get $i)))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $next)))
    (local.get $sum))
  (func $down (param i32) (result i32)
    (if (result i32) (i32.eqz (local.get 0))
      (then (i32.const 0))
      (else (i32.add (i32.const 1) (call $down (i32.sub (local.get 0) (i32.const 1)))))))
  (func (export "recurse") (param i32) (result i32) (call $down (local.get 0)))
  (func (export "ref") (result i32) (ref.is_null (ref.func $triple)))
)
"""


def run_on_wasmtime(wasm: bytes, refuels: list[int]):
    engine = wasmtime.Engine()
    store = wasmtime.Store(engine)
    module = wasmtime.Module(engine, wasm)
    linker = wasmtime.Linker(engine)
    i32 = wasmtime.ValType.i32()
    linker.define_func("env", "add", wasmtime.FuncType([i32, i32], [i32]), lambda a, b: a + b)
    if any(imp.module == _meter.NAMESPACE for imp in module.imports):

        def refuel():
            refuels.append(1)
            return _meter.FUEL

        linker.define_func(_meter.NAMESPACE, _meter.REFUEL, wasmtime.FuncType([], [i32]), refuel)
    instance = linker.instantiate(store, module)
    return lambda name, *args: instance.exports(store)[name](store, *args)


@pytest.mark.parametrize("fixture", sorted(p.name for p in FIXTURES_DIR.glob("*.wat")))
def test_every_fixture_rewrites_to_a_valid_module(fixture):
    wasm = bytes(wasmtime.wat2wasm((FIXTURES_DIR / fixture).read_text()))
    metered = _meter.instrument(wasm)
    module = wasmtime.Module(wasmtime.Engine(), metered)
    assert [(i.module, i.name) for i in module.imports][-1] == (_meter.NAMESPACE, _meter.REFUEL)


def test_renumbered_functions_compute_the_same():
    wasm = bytes(wasmtime.wat2wasm(RENUMBERED))
    plain = run_on_wasmtime(wasm, [])
    refuels: list[int] = []
    metered = run_on_wasmtime(_meter.instrument(wasm), refuels)
    for name, args in [
        ("via_table", (0, 5)), ("via_table", (1, 5)), ("via_import", (4,)), ("started", ()),
        ("loop", (100,)), ("recurse", (50,)), ("ref", ()),
    ]:
        assert metered(name, *args) == plain(name, *args), name
    assert plain("via_table", 1, 5) == 15 and plain("started") == 7


def test_refuel_runs_once_per_fuel_of_checks():
    wasm = _meter.instrument(bytes(wasmtime.wat2wasm(RENUMBERED)))
    refuels: list[int] = []
    call = run_on_wasmtime(wasm, refuels)
    iterations = 25 * _meter.FUEL
    assert call("loop", iterations) == sum(range(iterations)) & 0xFFFFFFFF
    assert 24 <= len(refuels) <= 27
    refuels.clear()
    call("recurse", 3 * _meter.FUEL // 2)  # no loop: one check per call
    assert 1 <= len(refuels) <= 2


def test_wasm3_reports_the_imports_of_the_module_as_built():
    # The runtime checks a package's imports against its grants: the refuel import the
    # engine adds must not show.
    engine = get_registry().engine("wasm3", cache_dir=None)
    module = engine.compile(wasmtime.wat2wasm((FIXTURES_DIR / "hostcall.wat").read_text()))
    assert _meter.NAMESPACE not in {i.module for i in module.imports}
    assert [i.qualified_name for i in module.imports] == ["okra.test.repeat", "okra.abi.take"]


def test_missing_sections_are_added_and_a_module_without_code_is_unchanged():
    bare = bytes(wasmtime.wat2wasm('(module (func (export "f") (result i32) (i32.const 4)))'))
    metered = _meter.instrument(bare)
    assert run_on_wasmtime(metered, [])("f") == 4
    assert len(wasmtime.Module(wasmtime.Engine(), metered).imports) == 1
    empty = bytes(wasmtime.wat2wasm("(module (memory 1))"))
    assert _meter.instrument(empty) == empty


def test_the_debug_name_section_is_dropped():
    named = bytes(wasmtime.wat2wasm('(module (func $named (export "f")))'))
    assert b"\x04name" in named
    assert b"\x04name" not in _meter.instrument(named)


def test_an_instruction_the_rewrite_does_not_know_is_refused():
    simd = bytes(wasmtime.wat2wasm(
        '(module (func (export "f") (result i32) (i32x4.extract_lane 0 (v128.const i32x4 1 2 3 4))))'
    ))
    with pytest.raises(_meter.Unsupported, match="instruction 0xfd"):
        _meter.instrument(simd)
    with pytest.raises(DeployError, match="engine wasm3 cannot run service.wasm: SIMD support is not enabled"):
        get_registry().engine("wasm3", cache_dir=None).compile(simd)


def spinning_guest(body: str, memory_pages: int = 1) -> bytes:
    """An ABI guest whose okra_handle runs `body` in an endless loop."""
    return bytes(wasmtime.wat2wasm(f"""
(module
  (memory (export "memory") {memory_pages})
  (func (export "okra_abi_version") (result i32) (i32.const 1))
  (func (export "okra_buffer") (param i32) (result i32) (i32.const 1024))
  {body}
  (func (export "okra_handle") (param i32 i32) (result i64) (loop $l (call $work) (br $l)) (i64.const 0)))
"""))


LONG_STRAIGHT = "(func $work " + "(drop (i32.const 1)) " * 20_000 + ")"
BULK = {
    "fill": "(func $work (memory.fill (i32.const 0) (i32.const 7) (i32.const 16777216)))",
    "copy": "(func $work (memory.copy (i32.const 0) (i32.const 8388608) (i32.const 8388608)))",
}


@pytest.mark.parametrize("body", [LONG_STRAIGHT, BULK["fill"], BULK["copy"]], ids=["straight", "fill", "copy"])
def test_a_deadline_stops_work_that_checks_one_by_one_would_miss(body):
    # Each iteration is a long loop-free function or a 16 MiB bulk operation: counted one
    # fuel per loop iteration, 10,000 iterations would run for many seconds.
    import logging
    import time

    from okra_core import abi
    from okra_core.engine import GuestTimeout
    from okra_core.hostapi import HostContext

    engine = get_registry().engine("wasm3", cache_dir=None)
    module = engine.compile(spinning_guest(body, memory_pages=256))
    instance = module.instantiate(abi.abi_functions(1), lambda fd, data: None, HostContext("t", logging.getLogger("t")))
    started = time.monotonic()
    with pytest.raises(GuestTimeout):
        instance.handle(abi.encode_request(abi.request_prefix("a.B", "M"), b""), deadline=started + 0.2)
    assert time.monotonic() - started < 1.5
    instance.close()


def test_bulk_operations_compute_the_same_after_the_rewrite():
    wasm = bytes(wasmtime.wat2wasm("""
(module
  (memory (export "memory") 1)
  (func (export "f") (param $n i32) (result i32) (local $x i32)
    (memory.fill (i32.const 0) (i32.const 9) (local.get $n))
    (memory.copy (i32.const 100) (i32.const 0) (local.get $n))
    (local.set $x (i32.load8_u (i32.const 100)))
    (i32.add (local.get $x) (i32.load8_u (i32.sub (i32.add (i32.const 100) (local.get $n)) (i32.const 1))))))
"""))
    plain = run_on_wasmtime(wasm, [])
    metered = run_on_wasmtime(_meter.instrument(wasm), [])
    for n in (1, 50, 4096, 30000):
        assert metered("f", n) == plain("f", n) == 18
