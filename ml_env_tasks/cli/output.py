"""One place that prints: human text on a terminal, JSON for machines, progress on stderr."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any, TextIO

__all__ = ["Output"]


class Output:
    """A command's result goes to stdout as JSON (``--json``) or as lines of text; what happens on
    the way (progress, warnings) goes to stderr. GitHub Actions' front subclasses it."""

    def __init__(self, json_mode: bool = False, out: TextIO | None = None, err: TextIO | None = None) -> None:
        self.json_mode = json_mode
        self.out = out or sys.stdout
        self.err = err or sys.stderr

    def info(self, msg: str) -> None:
        print(f"ml-env: {msg}", file=self.err, flush=True)

    def warn(self, msg: str) -> None:
        print(f"ml-env: warning: {msg}", file=self.err, flush=True)

    def log(self, line: str) -> None:
        """A line of a build's or a run's own output: stdout for humans, stderr under --json."""
        print(line, file=self.err if self.json_mode else self.out, flush=True)

    def result(self, data: Any, text: str | Callable[[], str] | None = None) -> None:
        """The command's result: ``data`` as JSON, or ``text`` (a string or a function making it)."""
        if self.json_mode:
            print(json.dumps(data, indent=2, default=str), file=self.out, flush=True)
        elif text is not None:
            body = text() if callable(text) else text
            if body:
                print(body, file=self.out, end="" if body.endswith("\n") else "\n", flush=True)
