"""Wasmtime's multi-line failure reports, turned into the one-line messages OKRA shows."""

from __future__ import annotations

import re

_FRAME = re.compile(r"^\s*0:\s+(.*\S)\s*$", re.MULTILINE)
_NUMBERED = re.compile(r"^\d+:\s*")


def one_line(text: str) -> str:
    """Summarise an error or trap report in one line.

    A trap report looks like::

        error while executing at wasm backtrace:
            0:     0x5c - <unknown>!<wasm function 2>

        Caused by:
            wasm trap: wasm `unreachable` instruction executed

    and becomes "wasm `unreachable` instruction executed (at 0x5c - <unknown>!<wasm
    function 2>)": the cause first, then where it happened.
    """
    head, _, causes = text.partition("Caused by:")
    cause_lines = [_NUMBERED.sub("", line.strip()) for line in causes.splitlines()]
    cause = ": ".join(line for line in cause_lines if line)
    if head.lstrip().startswith("error while executing at wasm backtrace"):
        frame = _FRAME.search(head)
        message = cause.removeprefix("wasm trap: ") or "trap"
        return f"{message} (at {frame.group(1)})" if frame else message
    head_line = " ".join(line.strip() for line in head.splitlines() if line.strip())
    return ": ".join(part for part in (head_line, cause) if part) or "unknown error"
