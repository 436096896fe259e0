# Test plan: the engine conformance suite (okra_core/testing/engine_conformance.py)
#
# Every engine registered through the plugin registry (get_registry().names("engines"),
# built-in and third-party alike) runs the whole suite, one parameter per engine name,
# so an engine that registers is held to it without touching this file. ENGINE_OPTIONS
# gives an engine the factory options the suite needs (no on-disk caches).
#
# What the suite checks is in its module docstring and docs/engines.md: the request
# path, every host function call shape, traps and ABI faults (and that a failed
# instance refuses later calls), threads, WASI, instantiation and compilation errors,
# close/interrupt, and, gated by Engine.capabilities(), deadlines, interrupting a
# running call and memory limits.
#
# Wasmtime without epoch checks (epoch_interruption=false) runs it too: it has neither
# the deadline nor the interrupt capability, so it shows those tests skip, and the
# sticky interrupt still holds.
#
# The suite's guests ship compiled (engine_fixtures/*.wasm, so okra_core needs no
# engine to run it): each .wasm must be exactly wasmtime.wat2wasm of its .wat, and
# every .wat must have its .wasm.

from __future__ import annotations

import pathlib

import pytest
import wasmtime

from okra_core.plugins import get_registry
from okra_core.testing.engine_conformance import SMALLEST, TYPE_INVALID, EngineConformance

#: Factory options an engine needs under test, by engine name (others get none).
ENGINE_OPTIONS: dict[str, dict] = {"wasmtime": {"cache_dir": None}, "wasm3": {"cache_dir": None}}
#: Extra configurations worth running the suite on: (id, engine name, options).
VARIANTS = [("wasmtime-no-epoch", "wasmtime", {"cache_dir": None, "epoch_interruption": False})]

ENGINES = [(name, name, ENGINE_OPTIONS.get(name, {})) for name in get_registry().names("engines")]
FIXTURES = pathlib.Path(__file__).parent.parent / "okra_core" / "testing" / "engine_fixtures"


class TestEngineConformance(EngineConformance):
    @pytest.fixture(params=[*ENGINES, *VARIANTS], ids=lambda case: case[0])
    def make_engine(self, request):
        _, name, options = request.param
        registry = get_registry()
        return lambda: registry.engine(name, **options)


def test_the_built_in_engine_is_registered():
    assert "wasmtime" in [name for name, _, _ in ENGINES]


def test_the_variants_lack_the_capabilities_they_are_there_for():
    for _, name, options in VARIANTS:
        capabilities = get_registry().engine(name, **options).capabilities()
        assert not capabilities.deadline and not capabilities.interrupt


@pytest.mark.parametrize("wat", sorted(FIXTURES.glob("*.wat")), ids=lambda path: path.stem)
def test_shipped_wasm_is_its_wat_compiled(wat):
    wasm = wat.with_suffix(".wasm")
    regenerate = (
        "regenerate with: python -c \"import pathlib, wasmtime; "
        "[p.with_suffix('.wasm').write_bytes(wasmtime.wat2wasm(p.read_text())) "
        "for p in pathlib.Path('okra_core/testing/engine_fixtures').glob('*.wat')]\""
    )
    assert wasm.exists(), f"{wasm.name} is missing: {regenerate}"
    assert wasm.read_bytes() == wasmtime.wat2wasm(wat.read_text()), (
        f"{wasm.name} is not {wat.name} compiled: {regenerate}"
    )


def test_every_shipped_wasm_has_its_wat():
    assert {p.stem for p in FIXTURES.glob("*.wasm")} == {p.stem for p in FIXTURES.glob("*.wat")}


def test_the_hand_written_modules_are_what_they_say():
    assert SMALLEST == wasmtime.wat2wasm("(module (func (result i32) (i32.const 1)))")
    assert TYPE_INVALID != SMALLEST and len(TYPE_INVALID) == len(SMALLEST)
