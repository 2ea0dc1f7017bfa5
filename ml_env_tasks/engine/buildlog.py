"""Reading BuildKit's plain progress: steps, cache hits, and why a build failed."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

__all__ = ["lines", "count_step", "failing_step", "text", "tail", "last_error_line", "TAIL_LINES", "MAX_LOG_LINE"]

TAIL_LINES = 40
MAX_LOG_LINE = 64 * 1024  # characters of one log line, streamed from a build or a run


def lines(stream: Iterator[str]) -> Iterator[str]:
    for chunk in stream:
        for line in chunk.splitlines():
            yield line if len(line) <= MAX_LOG_LINE else line[:MAX_LOG_LINE] + " … (line cut)"


def count_step(line: str, steps: set[str], cached: set[str]) -> None:
    """Count build steps and those that did not run.

    Plain progress says ``#7 [3/5] RUN ...`` and then either ``#7 CACHED`` (local cache) or,
    for a layer taken from an imported cache (registry/local after a prune), lines like
    ``#7 sha256:<blob> 29kB / 29kB done``; a step that runs prints no blob lines.
    """
    m = _STEP.match(line)
    if m:
        steps.add(m.group(1))
        return
    m = _CACHED.match(line)
    if m and (m.group(2) == "CACHED" or m.group(1) in steps):
        cached.add(m.group(1))


_STEP = re.compile(r"(#\d+) \[(?:[\w.-]+ )?\d+/\d+\] (?:RUN|COPY|ADD)\b")
_CACHED = re.compile(r"(#\d+) (CACHED$|sha256:[0-9a-f]{64} )")


def failing_step(tail_lines: list[str]) -> str | None:
    for line in reversed(tail_lines):
        if "ERROR: failed to solve:" in line or line.startswith("ERROR:"):
            s = line.split("failed to solve:", 1)[-1].strip()
            return s[:300]
    return None


def text(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, bytes):
        return v.decode(errors="replace")
    if isinstance(v, list):
        return "\n".join(map(str, v))
    return str(v)


def tail(s: str, n: int = TAIL_LINES) -> str:
    return "\n".join(s.splitlines()[-n:])


def last_error_line(s: str) -> str:
    found = [x for x in s.splitlines() if x.strip()]
    for x in reversed(found):
        if "error" in x.lower():
            return x.strip()[:300]
    return found[-1].strip()[:300] if found else "unknown error"
