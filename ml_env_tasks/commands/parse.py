"""The command line of every command, generated from its declaration: argparse parsers, the
values resolved with their origins (flag > environment > project > user > machine > default),
"did you mean" for a mistyped command or option, and exit codes in ``--help``.

Only the command named on the command line is configured in full (each parser costs argparse
time, and each command's module an import): a no-op build pays for nothing else.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from ..errors import EXIT_CODES, UsageError
from ..safe.grammar import bounded, printable
from ..settings.options import Option, Resolved, Source, add_options, resolve_options
from . import REGISTRY, Command, load, top_level

__all__ = ["Parser", "Parsed", "build_parser", "parse", "selected", "EPILOG"]

EPILOG = "exit codes:\n" + "\n".join(f"  {c:>3}  {m}" for c, m in EXIT_CODES.items())


class Parser(argparse.ArgumentParser):
    """argparse whose usage error is one bounded line (it echoes what was typed), with a "did you
    mean" for a mistyped command or option, and JSON on stdout under ``--json``."""

    json_mode = False

    def error(self, message: str) -> NoReturn:
        hint = self._suggest(message)
        line = bounded(printable(message, 10_000), 500) + (f" ({hint})" if hint else "")
        self.print_usage(sys.stderr)
        if Parser.json_mode:
            print(json.dumps({"error": line, "file": None, "key": None, "line": None, "exit_code": 2}))
        self.exit(2, f"{self.prog}: error: {line}\n")

    def _suggest(self, message: str) -> str | None:
        import difflib  # only for a usage error: a command that parses never pays for it

        words: list[str] = []
        if message.startswith("unrecognized arguments:"):
            typed = [w.split("=", 1)[0] for w in message.split(":", 1)[1].split() if w.startswith("-")]
            known = [s for a in self._actions for s in a.option_strings]
            for act in self._actions:
                if isinstance(act, argparse._SubParsersAction):
                    for sp in act.choices.values():
                        known += [s for a in sp._actions for s in a.option_strings]
            for w in typed:
                words += difflib.get_close_matches(w, known, n=1, cutoff=0.6)
        elif "invalid choice:" in message:
            word = message.split("invalid choice:", 1)[1].split("(", 1)[0].strip().strip("'\"")
            choices = [str(c) for a in self._actions for c in (a.choices or ())]
            words += difflib.get_close_matches(word, choices, n=1, cutoff=0.5)
        return f"did you mean {' '.join(words)}?" if words else None


class _Version(argparse.Action):
    """``--version``, with the version looked up only when asked (importlib.metadata is slow)."""

    def __call__(self, parser: argparse.ArgumentParser, *args: object, **kw: object) -> None:
        from importlib.metadata import PackageNotFoundError, version

        try:
            print(f"ml-env {version('ml-env-tasks')}")
        except PackageNotFoundError:  # pragma: no cover
            print("ml-env (source)")
        parser.exit()


def selected(argv: Sequence[str]) -> str | None:
    """The command named on the command line: its first word, and its second when that makes a
    two-word command."""
    words: list[str] = []
    skip = False
    for a in argv:
        if skip:
            skip = False
            continue
        if a == "--context":
            skip = True
            continue
        if a == "--":
            break
        if a.startswith("-"):
            continue
        words.append(a)
        if len(words) == 2:
            break
    if not words:
        return None
    two = " ".join(words[:2])
    if two in REGISTRY:
        return two
    return words[0] if words[0] in REGISTRY or words[0] in top_level() else None


def _configure(p: argparse.ArgumentParser, command: Command) -> None:
    add_options(p, command.options)
    p.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    p.set_defaults(_command=command.name)
    if command.usage:
        p.usage = command.usage


def build_parser(argv: Sequence[str] = (), *, full: bool = False) -> Parser:
    """The parser, with only the selected command configured in full; ``full``: every command
    (shell completion needs them all)."""
    raw = argparse.RawDescriptionHelpFormatter
    parser = Parser(prog="ml-env", description="Content-addressed ML environment images.", epilog=EPILOG,
                    formatter_class=raw)  # fmt: skip
    parser.add_argument("--version", action=_Version, nargs=0, help="print the version and exit")
    parser.add_argument(
        "--context", help="the docker context to use (default: DOCKER_HOST, DOCKER_CONTEXT, the current one)"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    chosen = selected(argv)
    first = chosen.split()[0] if chosen else None
    for name, help_ in top_level().items():
        if first and name != first:
            continue
        p = sub.add_parser(name, help=help_, description=help_, epilog=EPILOG, formatter_class=raw)
        if not (full or first == name):
            continue
        if name in REGISTRY:
            _configure(p, load(name))
        subs = [n for n in REGISTRY if n.startswith(name + " ") and (full or chosen in (None, name, n))]
        everything = [n for n in REGISTRY if n.startswith(name + " ")]
        if everything:
            metavar = "{" + ",".join(n.split()[1] for n in everything) + "}"
            group = p.add_subparsers(dest=f"{name}_command", metavar=metavar, parser_class=Parser)
            for n in everything:
                sp = group.add_parser(n.split()[1], help=REGISTRY[n][1], description=REGISTRY[n][1], epilog=EPILOG,
                                      formatter_class=raw)  # fmt: skip
                if n in subs and (full or chosen == n):
                    _configure(sp, load(n))
    return parser


@dataclass(frozen=True)
class Parsed:
    command: Command | None  # None: a group without its subcommand (its help was printed)
    values: Resolved
    json_mode: bool
    context: str | None
    exit_code: int | None = None  # set when parsing ended the command (--help: 0, a usage error: 2)


def parse(argv: Sequence[str]) -> Parsed:
    """Parse a command line and resolve every option of its command (flag > environment > project
    > user > machine > default); the script's arguments after ``--`` go to ``script_args``."""
    argv = list(argv)
    Parser.json_mode = "--json" in argv
    chosen = selected(argv)
    script: list[str] = []
    if chosen and "--" in argv and chosen in REGISTRY and load(chosen).script_args:
        i = argv.index("--")
        argv, script = argv[:i], argv[i + 1 :]
    parser = build_parser(argv)
    try:
        ns = parser.parse_args(argv)
    except SystemExit as e:  # --help (0) or a usage error (2), already printed
        code = int(e.code or 0) if isinstance(e.code, int) else 2
        return Parsed(None, Resolved(), Parser.json_mode, None, code)
    name = getattr(ns, "_command", None)
    if name is None:
        word = getattr(ns, "command", None)
        target: argparse.ArgumentParser = parser
        if word:  # a group without its subcommand: the group's own help
            target = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[word]
        target.print_help(sys.stderr)
        return Parsed(None, Resolved(), Parser.json_mode, ns.context, 2)
    command = load(name)
    from ..settings.files import load_layers

    layers = load_layers()
    values = resolve_options(command.options, ns, layers=layers)
    if command.script_args:
        values.values["script_args"] = script
    _beside_project(values, layers)
    return Parsed(command, values, bool(getattr(ns, "json", False)), ns.context)


def _beside_project(values: Resolved, layers: object) -> None:
    """train_env / inference_env name a file of the project: relative to pyproject.toml's folder,
    as a command run from a subfolder expects (an image or curated/NAME is left as it is)."""
    env = values.values.get("env")
    project = getattr(getattr(layers, "project", None), "path", None)
    if not isinstance(env, str) or project is None or values.origin("env").source is not Source.PROJECT:
        return
    beside = project.parent / env
    try:
        if not Path(env).is_absolute() and beside.is_file():
            if not beside.resolve().is_relative_to(project.parent.resolve()):
                raise UsageError(
                    "the project's config names a path outside the project",
                    file=str(project),
                    key="tool.ml-env.train_env"
                    if values.values.get("script") is not None
                    else "tool.ml-env.inference_env",
                    hint="paths in [tool.ml-env] must resolve (symlinks included) inside the project",
                )
            values.values["env"] = str(beside)
    except OSError:
        pass


def require(command: Command, values: Resolved, *, where: str = "flag") -> None:
    """Options the command cannot run without: one error naming the first that is missing."""
    for name in command.required:
        if values.values.get(name) in (None, "", []):
            opt = command.option(name)
            also = f" (or {opt.config} in [tool.ml-env])" if opt.config else ""
            what = f"input '{opt.input_name}'" if where == "input" else (opt.flags[0] if opt.flags else name)
            raise UsageError(f"{what} is required{also}")


def option_named(command: Command, flag: str) -> Option | None:
    return next((o for o in command.options if flag in o.flags), None)
