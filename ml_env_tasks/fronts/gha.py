"""GitHub Actions: the one place that turns library results into outputs, job summaries,
log groups and annotations. The composite actions under ``ci/github/`` (rendered from
``ml_env_tasks.actions``) call ``python -m ml_env_tasks.gha <action>``: the command of that name
in ``ml_env_tasks.commands``, its inputs read from ``INPUT_*`` environment variables (never
interpolated into a shell line) through the same option declarations as the CLI, so config files
and environment variables apply alike; its Outcome's outputs, summary and annotations written.

Escaping follows actions/toolkit ``command.ts``: data escapes ``%``, CR, LF; properties also
escape ``:`` and ``,``; other control characters are shown as ``\\xNN`` (an escape sequence
cannot rewrite the log). Multi-line outputs use ``name<<DELIM`` with a random delimiter.

Job summaries are markdown that GitHub renders: nothing in them comes from outside as markup
(each command's summary puts outside text through ``commands.common.cell`` or ``code``).
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, TextIO

from ..commands import Command, Outcome, Values, every
from ..commands.common import visible
from ..errors import MlEnvError, UsageError
from ..safe.fsutil import read_text_bounded
from ..safe.grammar import bounded
from ..safe.redact import redact_userinfo

__all__ = [
    "escape_data",
    "escape_property",
    "command",
    "set_output",
    "append_summary",
    "group",
    "mask",
    "annotate_error",
    "locate_key",
    "actions",
    "resolve_inputs",
    "run_action",
    "main",
]


# what is never written as it is: C0 and C1 controls but CR/LF/TAB, DEL, line and paragraph
# separators, bidirectional overrides (text that reads differently from what it is)
_UNSAFE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def _visible(s: str) -> str:
    return visible(s, _UNSAFE)


def escape_data(s: str) -> str:
    return s.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def escape_property(s: str) -> str:
    return escape_data(s).replace(":", "%3A").replace(",", "%2C")


def command(name: str, message: str = "", out: TextIO | None = None, **props: Any) -> None:
    """Print ``::name k=v,...::message`` with toolkit escaping; None properties are left out.
    Other control characters are shown escaped, but in ``add-mask``: a secret is masked as it is."""
    shown = (lambda s: s) if name == "add-mask" else _visible
    p = ",".join(f"{k}={escape_property(shown(str(v)))}" for k, v in props.items() if v is not None)
    print(f"::{name}{' ' + p if p else ''}::{escape_data(shown(message))}", file=out or sys.stdout, flush=True)


def set_output(name: str, value: str) -> None:
    path = os.environ.get("GITHUB_OUTPUT")
    if not path:
        raise MlEnvError("GITHUB_OUTPUT is not set: not running as a GitHub Actions step")
    with open(path, "a", encoding="utf-8") as f:
        if "\n" in value or "\r" in value:
            delim = f"ghadelimiter_{uuid.uuid4()}"
            f.write(f"{name}<<{delim}\n{value}\n{delim}\n")
        else:
            f.write(f"{name}={value}\n")


def append_summary(markdown: str) -> None:
    path = os.environ.get("GITHUB_STEP_SUMMARY")
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(markdown.rstrip("\n") + "\n\n")


@contextlib.contextmanager
def group(title: str) -> Iterator[None]:
    print(f"::group::{escape_data(_visible(title))}", flush=True)
    try:
        yield
    finally:
        print("::endgroup::", flush=True)


def mask(value: str | None) -> None:
    if value:
        for line in value.splitlines():
            if line.strip():
                command("add-mask", line)


def locate_key(path: str | Path, key: str | None) -> int | None:
    """The line of a dotted TOML key (``python.packages[2]``) in a file, for annotations."""
    if not key:
        return None
    try:
        lines = read_text_bounded(path, 4 * 2**20, error=MlEnvError).splitlines()
    except (OSError, MlEnvError):
        return None
    parts = [re.sub(r"\[\d+\]$", "", p) for p in key.split(":")[0].split(".")]
    leaf = parts[-1]
    table = ".".join(parts[:-1])
    current = ""
    fallback = None
    for i, raw in enumerate(lines, 1):
        s = raw.strip()
        m = re.match(r"^\[+\s*([^\]]+?)\s*\]+", s)
        if m:
            current = m.group(1).strip().strip('"')
            if current in (".".join(parts), table):
                fallback = fallback or i
            continue
        km = re.match(r'^"?([A-Za-z0-9_.\- ]+?)"?\s*=', s)
        if km:
            k = km.group(1)
            full = f"{current}.{k}" if current else k
            if full == ".".join(parts) or (current == table and k == leaf):
                return i
            if table and full == table:
                fallback = fallback or i
    return fallback


def annotate_error(e: MlEnvError) -> None:
    line = e.line or (locate_key(e.file, e.key) if e.file else None)
    msg = bounded(redact_userinfo(str(e)))
    if e.details:
        msg += "\n" + "\n".join(bounded(x, 500) for x in redact_userinfo(e.details).splitlines()[-15:])
    command("error", msg, file=e.file, line=line, title=f"ml-env: {type(e).__name__}")


# --- the actions: every command that declares an Action, run from INPUT_* variables ------------


class ActionConsole:
    """A command's console in a GitHub Actions step: progress as plain lines, a build's or a run's
    own output inside a log group where workflow commands are not processed."""

    json_mode = False
    actions = True

    def info(self, msg: str) -> None:
        print(f"ml-env: {msg}", flush=True)

    def warn(self, msg: str) -> None:
        print(f"ml-env: warning: {msg}", flush=True)

    def log(self, line: str) -> None:
        print(line, flush=True)

    @contextlib.contextmanager
    def section(self, title: str) -> Iterator[None]:
        with group(title), stop_commands():
            yield

    def progress(self) -> None:
        return None

    def emit(self, outcome: Outcome) -> None:
        print(outcome.text_now(), flush=True)


def actions() -> dict[str, Command]:
    """Action name -> its command: every command of the registry that declares an Action."""
    return {c.name: c for c in every() if c.action is not None}


def resolve_inputs(command: Command, environ: Mapping[str, str] | None = None) -> Values:
    """The step's inputs, resolved like the CLI's options (input > env > config > default), with
    the action's own defaults where nothing was given; what the action requires, checked."""
    from ..settings.files import load_layers
    from ..settings.options import FALSE, TRUE, Origin, Source, from_inputs

    assert command.action is not None
    values = from_inputs(command.options, environ, layers=load_layers())
    for name, default in command.action.defaults.items():
        if values.origin(name).source is Source.DEFAULT:
            values.values[name] = default
    env = os.environ if environ is None else environ
    for name, why in command.action.refused.items():
        if env.get(_input_var(name), "").strip():
            raise UsageError(f"input '{name}': {why}")
    for name, (option, sets, _d) in command.action.aliases.items():
        raw = env.get(_input_var(name), "").strip().lower()
        if raw and raw not in TRUE + FALSE:
            raise UsageError(f"input '{name}' must be true or false")
        if raw and (raw in TRUE) == (sets == "true"):
            values.values[option], values.sources[option] = True, Origin(Source.INPUT)
    for name, (_d, check) in command.action.checked.items():
        given = env.get(_input_var(name), "").strip()
        refusal = check(given.lower(), values) if given else None
        if refusal:
            raise UsageError(f"input '{name}': {refusal}")
    for name in command.action.required:
        if values.values.get(name) in (None, "", []):
            opt = command.option(name)
            also = f" (or {opt.config} in [tool.ml-env])" if opt.config else ""
            raise UsageError(f"input '{opt.input_name}' is required{also}")
    return values


def _input_var(name: str) -> str:
    return f"INPUT_{name.upper().replace('-', '_')}"


def run_action(name: str) -> int:
    """One composite action's step: inputs, the command, then outputs, summary and annotations."""
    cmd = actions()[name]
    assert cmd.action is not None
    for secret in cmd.action.secret_inputs:  # before anything else can print it
        mask(os.environ.get(f"INPUT_{secret.upper().replace('-', '_')}"))
    values = resolve_inputs(cmd)
    for secret_name in values.values.get("secrets") or ():
        mask(os.environ.get(secret_name))
    outcome = cmd.run(values, ActionConsole())
    text = outcome.text_now()
    if text:  # it can hold what a run, a cases file or a server said: no line of it is a workflow command
        with stop_commands():
            print(text, flush=True)
    for key, value in outcome.outputs_now().items():
        set_output(key, value)
    if outcome.summary:
        append_summary(outcome.summary)
    for a in outcome.annotations:
        command(a.level, a.message, file=a.file, line=a.line, title=a.title)
    if outcome.tail:
        title, tail = outcome.tail
        with group(title), stop_commands():
            print(tail)
    return outcome.exit_code


@contextlib.contextmanager
def stop_commands() -> Iterator[None]:
    """Lines a build or a script prints can look like workflow commands (``::set-output``,
    ``::add-mask::``...): between these markers the runner does not process them."""
    token = f"ml-env-{uuid.uuid4().hex}"
    print(f"::stop-commands::{token}", flush=True)
    try:
        yield
    finally:
        print(f"::{token}::", flush=True)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    known = actions()
    if not argv or argv[0] not in known:
        print(f"usage: python -m ml_env_tasks.gha {{{','.join(known)}}}", file=sys.stderr)
        return 2
    try:
        return run_action(argv[0])
    except MlEnvError as e:
        annotate_error(e)
        print(f"ml-env: error: {bounded(redact_userinfo(str(e)))}", file=sys.stderr)
        return e.exit_code
    except Exception as e:  # a bug: one line and an annotation, like the CLI
        from ..commands.terminal import report_internal
        from ..errors import EXIT_INTERNAL

        report_internal(e)
        command("error", f"internal error: {type(e).__name__} (see the step log)", title="ml-env")
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
