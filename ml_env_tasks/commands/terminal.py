"""Running a command from a command line, in a terminal or a pipe: the ``ml-env`` CLI and the nox
sessions both come here, side by side. A command's result goes to stdout as JSON (``--json``) or
text; what happens on the way (progress, warnings, a build's log under ``--json``) goes to stderr.

The one boundary: a user error is one line ``ml-env: error: <file>: <key>: <message>`` and its
exit code (and, under ``--json``, the same as JSON on stdout); anything unexpected is one line
naming where it happened, exit 70; a traceback only with ``ML_ENV_DEBUG=1``.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TextIO

from ..errors import EXIT_INTERNAL, MlEnvError, UsageError
from . import Command, Outcome, Values
from .parse import build_parser, parse, require

__all__ = ["Terminal", "run_argv", "execute", "report_error", "report_internal", "show"]


class Terminal:
    """The console of a command run from a command line."""

    actions = False

    def __init__(self, json_mode: bool = False, out: TextIO | None = None, err: TextIO | None = None) -> None:
        self.json_mode = json_mode
        self.out = out or sys.stdout
        self.err = err or sys.stderr

    def info(self, msg: str) -> None:
        print(f"ml-env: {msg}", file=self.err, flush=True)

    def warn(self, msg: str) -> None:
        print(f"ml-env: warning: {msg}", file=self.err, flush=True)

    def log(self, line: str) -> None:
        """A line of a build's or a run's own output: stdout for people, stderr under --json."""
        print(line, file=self.err if self.json_mode else self.out, flush=True)

    @contextlib.contextmanager
    def section(self, title: str) -> Iterator[None]:
        yield

    def progress(self) -> Callable[[Any], None] | None:
        if self.json_mode or not self.err.isatty():
            return None
        from .progress import copy_progress

        return copy_progress()

    def emit(self, outcome: Outcome) -> None:
        show(outcome, self)


def show(outcome: Outcome, console: Terminal) -> None:
    """The result: JSON, or text; then a tail (a container's last log lines) on stderr."""
    if outcome.shown:
        return
    if console.json_mode:
        print(json.dumps(outcome.data, indent=2, default=str), file=console.out, flush=True)
    else:
        body = outcome.text_now()
        if body:
            print(body, file=console.out, end="" if body.endswith("\n") else "\n", flush=True)
    if outcome.tail:
        title, text = outcome.tail
        print(f"--- {title} ---", file=console.err)
        print(text, file=console.err, flush=True)


def execute(command: Command, values: Values, console: Terminal) -> int:
    """Run one command and show its result; errors become one line and their exit code."""
    try:
        require(command, values)
        outcome = command.run(values, console)
        show(outcome, console)
        return outcome.exit_code
    except MlEnvError as e:
        _name_the_setting(e, command, values)
        report_error(e, json_mode=console.json_mode)
        return e.exit_code
    except KeyboardInterrupt:
        print("ml-env: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 141
    except Exception as e:  # a bug: never a raw traceback unless asked for
        report_internal(e, json_mode=console.json_mode)
        return EXIT_INTERNAL


def run_argv(argv: Sequence[str] | None = None) -> int:
    """``ml-env ARGS``: parse, resolve, run, show; the exit code."""
    if "_ARGCOMPLETE" in os.environ:
        import argcomplete

        argcomplete.autocomplete(build_parser(full=True))
    argv = list(sys.argv[1:] if argv is None else argv)
    json_mode = "--json" in argv
    try:
        parsed = parse(argv)
    except MlEnvError as e:  # a config file that cannot be read, a value that is not of its type
        report_error(e, json_mode=json_mode)
        return e.exit_code
    except Exception as e:
        report_internal(e, json_mode=json_mode)
        return EXIT_INTERNAL
    if parsed.command is None:
        return parsed.exit_code if parsed.exit_code is not None else 2
    if parsed.context is not None:
        from ..engine import select_context

        try:
            select_context(parsed.context)
        except MlEnvError as e:
            report_error(e, json_mode=parsed.json_mode)
            return e.exit_code
    return execute(parsed.command, parsed.values, Terminal(parsed.json_mode))


def _name_the_setting(e: MlEnvError, command: Command, values: Values) -> None:
    """An error about an option's value (``--builder '...' is not ...``) whose value the user did not
    type says where it came from: the config key and file, or the environment variable."""
    if not isinstance(e, UsageError) or e.file:
        return
    for opt in command.options:
        origin = values.origin(opt.name)
        if origin.given or origin.source.value == "default" or not opt.flags:
            continue
        if str(e.message).startswith(f"{opt.flags[0]} "):
            by = str(origin) if origin.source.value == "environment" else f"{opt.config} in {origin}"
            e.hint = f"{e.hint}; set by {by}" if e.hint else f"set by {by}"
            return


def report_error(e: MlEnvError, *, json_mode: bool = False) -> None:
    from ..safe.grammar import bounded
    from ..safe.redact import redact_userinfo

    if e.details:
        lines = redact_userinfo(e.details).splitlines()[-40:]
        print("\n".join(bounded(x, 500) for x in lines), file=sys.stderr)
    line = bounded(redact_userinfo(str(e)).replace("\n", " "))
    print(f"ml-env: error: {line}", file=sys.stderr)
    if json_mode:
        print(json.dumps({"error": line, "file": e.file, "key": e.key, "line": e.line, "exit_code": e.exit_code}))


def report_internal(e: BaseException, *, json_mode: bool = False) -> None:
    """Where the bug is (the innermost frame of this package), not what the exception says: its
    text could hold anything (a file's content, a secret)."""
    import traceback

    if os.environ.get("ML_ENV_DEBUG"):
        traceback.print_exc()
    where = "?"
    for frame in reversed(traceback.extract_tb(e.__traceback__)):
        if "ml_env_tasks" in frame.filename:
            where = f"{frame.filename.rsplit('ml_env_tasks', 1)[1].lstrip('/')}:{frame.lineno}"
            break
    line = f"internal error: {type(e).__name__} in {where} (run with ML_ENV_DEBUG=1 for the traceback)"
    print(f"ml-env: {line}", file=sys.stderr)
    if json_mode:
        print(json.dumps({"error": line, "file": None, "key": None, "line": None, "exit_code": EXIT_INTERNAL}))
