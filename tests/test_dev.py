# Test plan: `okra dev`'s reload loop (okra_core.dev).
# SourceWatcher (fast):
# - reports files added, modified and removed among the source globs, once each;
# - never reports build output: generated code, .okra/, dist/ (so a build cannot
#   trigger another build).
# reload_on_change with a real Go project on a real runtime (slow):
# - an edit to main.go is rebuilt and redeployed: the next call gets the new behaviour;
# - an edit that does not compile is logged and the previous version keeps serving;
# - a build alone (nothing edited) triggers nothing.
# `okra dev` as a user runs it (slow): a project from `okra init`, served; an edit to
#   main.go is served after the reload; a broken edit is logged and the last good
#   version keeps answering; SIGTERM stops it with status 0.
import asyncio
import logging
import shutil
import time
from pathlib import Path

import pytest

from okra_core.config import RuntimeConfig
from okra_core.dev import SourceWatcher, reload_on_change
from okra_core.runtime import Runtime

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "greeter"


def touch(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_watcher_reports_added_modified_and_removed_sources(tmp_path):
    touch(tmp_path / "main.go", "package main")
    touch(tmp_path / "proto" / "a.proto", "x")
    watcher = SourceWatcher(tmp_path, ["*.go", "**/*.proto"])
    assert watcher.changes() == []
    touch(tmp_path / "extra.go", "package main")
    (tmp_path / "proto" / "a.proto").write_text("changed, and longer")
    assert watcher.changes() == [tmp_path / "extra.go", tmp_path / "proto" / "a.proto"]
    assert watcher.changes() == []
    (tmp_path / "extra.go").unlink()
    assert watcher.changes() == [tmp_path / "extra.go"]
    (tmp_path / "okra.toml").write_text("")  # always watched
    assert watcher.changes() == [tmp_path / "okra.toml"]


def test_watcher_ignores_build_output(tmp_path):
    touch(tmp_path / "main.go", "package main")
    watcher = SourceWatcher(tmp_path, ["*.go", "**/*.proto", "internal/**/*.go"])
    touch(tmp_path / "gen" / "greeter" / "v1" / "greeter.okra.go", "generated")
    touch(tmp_path / ".okra" / "sdk" / "abi.go", "sdk copy")
    touch(tmp_path / ".okra" / "protos" / "x.proto", "copy")
    touch(tmp_path / "dist" / "x.proto", "copy")
    assert watcher.changes() == []


async def call_hello(runtime, name="Ada") -> str:
    schema = runtime.schema("greeter.v1.Greeter")
    method = schema.methods["SayHello"]
    output = await runtime.invoke("greeter.v1.Greeter", "SayHello", method.input_class(name=name).SerializeToString())
    return method.output_class.FromString(output).message


async def wait_for(predicate, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await predicate():
            return True
        await asyncio.sleep(0.2)
    return False


@pytest.mark.slow
async def test_edits_are_rebuilt_and_redeployed_and_broken_ones_are_not(tmp_path, caplog):
    from okra_core.build import build_project
    from okra_core.package import load_package

    project = tmp_path / "greeter"
    shutil.copytree(EXAMPLE, project, ignore=shutil.ignore_patterns("dist", ".okra", "gen"))
    built = await asyncio.to_thread(build_project, project)
    async with Runtime(RuntimeConfig(engine_options={"cache_dir": str(tmp_path / "cache")})) as runtime:
        await runtime.deploy(load_package(built.path))
        assert await call_hello(runtime) == "Hello, Ada!"
        with caplog.at_level(logging.INFO, logger="okra.dev"):
            task = asyncio.create_task(reload_on_change(runtime, project, interval=0.2))
            try:
                # Nothing edited: no rebuild, even though the first build just wrote files.
                await asyncio.sleep(1.0)
                assert "rebuilding" not in caplog.text

                main = project / "main.go"
                main.write_text(main.read_text().replace('"Hello"', '"Howdy"'))

                async def howdy():
                    return await call_hello(runtime) == "Howdy, Ada!"

                assert await wait_for(howdy), caplog.text
                assert "changed: main.go; rebuilding" in caplog.text

                main.write_text(main.read_text() + "\nthis is not Go\n")
                assert await wait_for(lambda: asyncio.sleep(0, "still serving the previous version" in caplog.text))
                assert await call_hello(runtime) == "Howdy, Ada!"
            finally:
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task


@pytest.mark.slow
def test_okra_dev_reloads_an_edited_project_as_a_user_runs_it(tmp_path):
    import json
    import os
    import re
    import subprocess
    import sys

    okra = str(Path(sys.executable).parent / "okra")
    env = {**os.environ, "OKRA_CACHE_DIR": str(tmp_path / "cache")}
    created = subprocess.run([okra, "init", "hello", "--lang", "go"], cwd=tmp_path, capture_output=True, text=True)
    assert created.returncode == 0, created.stderr
    project = tmp_path / "hello"
    log = (tmp_path / "dev.log").open("w+")
    server = subprocess.Popen(
        [okra, "dev", "--grpc-port", "0", "--http-port", "0", "--grace", "2"],
        cwd=project, stdout=subprocess.PIPE, stderr=log, text=True, env=env,
    )
    try:
        line = server.stdout.readline()
        match = re.match(r"gRPC listening on (\S+:\d+)", line)
        assert match, f"unexpected first line {line!r}"

        def hello() -> str:
            result = subprocess.run(
                [okra, "call", "--address", match[1], "hello.v1.Hello/SayHello", '{"name": "Ada"}'],
                capture_output=True, text=True, timeout=30,
            )
            assert result.returncode == 0, result.stderr
            return json.loads(result.stdout)["message"]

        def eventually(predicate, timeout=90.0) -> bool:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if predicate():
                    return True
                time.sleep(0.3)
            return False

        assert hello() == "Hello, Ada!"
        main = project / "main.go"
        main.write_text(main.read_text().replace('"Hello, "', '"Hi, "'))
        assert eventually(lambda: hello() == "Hi, Ada!"), Path(log.name).read_text()

        main.write_text(main.read_text() + "\nthis is not Go\n")
        assert eventually(lambda: "still serving the previous version" in Path(log.name).read_text())
        assert hello() == "Hi, Ada!"
    finally:
        server.terminate()
        assert server.wait(30) == 0
        log.close()
