"""Reading BuildKit's plain progress: steps, cache hits, and why a build failed."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

__all__ = [
    "lines",
    "count_step",
    "failing_step",
    "step_output",
    "failure_message",
    "text",
    "tail",
    "last_error_line",
    "TAIL_LINES",
    "MAX_LOG_LINE",
]

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


_STEP_ERROR = re.compile(r"(#\d+) ERROR: .*exit code: (\d+)\s*$")
_STEP_OUTPUT = re.compile(r"(#\d+) \d+\.\d+ (.*)$")
_MISSING = re.compile(r"(?:^|[\s:])([\w./+-]+): (?:not found|No such file or directory)\s*$")


def step_output(tail_lines: list[str], n: int = 3) -> tuple[list[str], int | None]:
    """The failing step's own last ``n`` output lines (what pip or the script printed, without
    BuildKit's timestamps) and its exit code: the RUN line alone says only that it failed."""
    for line in reversed(tail_lines):
        m = _STEP_ERROR.match(line)
        if m:
            step, code = m.group(1), int(m.group(2))
            out = [o.group(2).strip() for x in tail_lines if (o := _STEP_OUTPUT.match(x)) and o.group(1) == step]
            out = [x for x in out if x and not x.startswith("[notice]")]
            return out[-n:], code
    return [], None


def failure_message(tail_lines: list[str]) -> tuple[str, str | None]:
    """(message, hint) for a failed build: the step that failed, ending with its tool's own last
    lines; a base image without the interpreter the environment installs with says so."""
    failing = failing_step(tail_lines)
    out, code = step_output(tail_lines)
    missing = next((m.group(1) for x in reversed(out) if (m := _MISSING.search(x))), None)
    if code == 127 and missing and "venv" in (failing or ""):
        return (
            f"the base image has no {missing} (exit code 127 creating the environment's virtualenv)",
            "use a base with Python, set python.interpreter to the base's interpreter, or set "
            "python.user_managed_dependencies = true if the base brings its own packages",
        )
    msg = "the build failed"
    if failing:
        msg += f" at step: {failing[:160]}{'…' if len(failing) > 160 else ''}"
    if out:
        msg += " — its last lines: " + " / ".join(x[:300] for x in out)
    return msg, None


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
