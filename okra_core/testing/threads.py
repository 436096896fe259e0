"""Running test code in several threads at once, for the conformance suites."""

from __future__ import annotations

import threading
from collections.abc import Callable


def run_together(targets: list[Callable[[], None]], timeout: float = 60) -> None:
    """Run each target in a thread of its own, started together; re-raise the first
    exception any of them raised. A target still running after `timeout` seconds fails
    the test (its daemon thread cannot keep the process alive)."""
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(targets))

    def guarded(target: Callable[[], None]) -> None:
        try:
            barrier.wait(timeout)
            target()
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=(t,), daemon=True) for t in targets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout)
        assert not thread.is_alive(), f"a call did not return within {timeout} s"
    if errors:
        raise errors[0]
