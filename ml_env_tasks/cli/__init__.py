"""``ml-env``: the command line front. Thin: parse, call the core, print, exit.

Commands live one group per module (``build``, ``runs``, ``serve``, ``release``, ``catalog``,
``config``); only the module of the command being run is imported and only its parser is
built, so a no-op build pays for nothing else. Every option is declared once in
``ml_env_tasks.options``; every command takes ``--json`` (the result on stdout, progress on
stderr). The boundary: a user error is one line ``ml-env: error: <file>: <key>: <message>``
and its exit code; anything unexpected is one line naming where, exit 70.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from ..errors import EXIT_INTERNAL, MlEnvError, UsageError

__all__ = ["main", "run", "build_parser", "report_error", "report_internal", "COMMANDS"]

# command -> (module under ml_env_tasks.cli, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "build": ("build", "build an environment (or reuse it when its hash is already in the registry)"),
    "plan": ("build", "print the Dockerfile, hash and image tag without building"),
    "hash": ("build", "print the environment's content hash"),
    "explain": ("build", "list the fields that make two specs' hashes differ"),
    "train": ("runs", "run a training script inside an environment (built or reused by hash)"),
    "runs": ("runs", "run history: list, show, gc"),
    "serve": ("serve", "run a scoring server locally; serve list|stop|logs"),
    "smoke-test": ("serve", "build or reuse an inference image, start it, send sample requests, check the answers"),
    "promote": ("release", "copy an image by digest to another registry/repository and record it in the ledger"),
    "ledger": ("release", "the release ledger: show"),
    "verify": ("release", "check an image: content hash, tag, SBOM, provenance, ledger record, smoke test"),
    "import": ("catalog", "import an Azure ML environment (v1 directory, v2 YAML, conda file, requirements)"),
    "export": ("catalog", "export an environment file to Azure ML v1 (directory) or v2 (YAML)"),
    "register": ("catalog", "build (or reuse) and record a new version when the hash changed"),
    "list": ("catalog", "registered environments and curated ones"),
    "get": ("catalog", "print a registered version's environment file, or write it (-o DIR)"),
    "diff": ("catalog", "field-level differences between two registered versions"),
    "clone": ("catalog", "copy a curated (or any) environment under your own name"),
    "scaffold": ("catalog", "write a starter environment, requirements file and train script"),
    "config": ("config", "show every effective setting and where it came from"),
    "model": ("models", "model versions in a registry: register, list, get, download"),
    "package": ("models", "an inference image with its entry script and model inside (serve, smoke-test, promote it)"),
}


class Parser(argparse.ArgumentParser):
    """argparse with its usage error bounded: it echoes the offending arguments."""

    def error(self, message: str) -> NoReturn:
        from ..grammar import bounded, printable

        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {bounded(printable(message, 10_000), 500)}\n")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"ml-env {version('ml-env-tasks')}"
    except PackageNotFoundError:  # pragma: no cover
        return "ml-env (source)"


class _Version(argparse.Action):
    """``--version``, with the version looked up only when asked (importlib.metadata is slow)."""

    def __call__(self, parser: argparse.ArgumentParser, *args: object, **kw: object) -> None:
        print(_version())
        parser.exit()


def _selected(argv: Sequence[str]) -> str | None:
    """The command named on the command line (the first word that is one)."""
    skip = False
    for a in argv:
        if skip:
            skip = False
            continue
        if a == "--context":
            skip = True
            continue
        if not a.startswith("-"):
            return a if a in COMMANDS else None
    return None


def build_parser(argv: Sequence[str] = (), *, full: bool = False) -> Parser:
    """The parser, with only the selected command (if any) configured in full; ``full``: every
    command configured (shell completion needs them all)."""
    from ..errors import EXIT_CODES

    codes = "\n".join(f"  {c:>3}  {m}" for c, m in EXIT_CODES.items())
    parser = Parser(
        prog="ml-env",
        description="Content-addressed ML environment images.",
        epilog=f"exit codes (every command):\n{codes}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action=_Version, nargs=0, help="print the version and exit")
    parser.add_argument(
        "--context", help="the docker context to use (default: DOCKER_HOST, DOCKER_CONTEXT, the current one)"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    selected = _selected(argv)
    # a named command gets its own parser only (each parser costs argparse time); without one,
    # every command is listed for the help and the usage error
    for name in [selected] if selected else COMMANDS:
        module, help_ = COMMANDS[name]
        p = sub.add_parser(
            name,
            help=help_,
            description=help_,
            epilog=f"exit codes:\n{codes}",
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        if name == selected or full:
            importlib.import_module(f"{__name__}.{module}").configure(name, p)
    return parser


def _complete() -> None:
    """Shell completion through argcomplete (``eval "$(register-python-argcomplete ml-env)"``):
    it answers from the full parser and exits; nothing else is imported on a normal run."""
    import argcomplete

    argcomplete.autocomplete(build_parser(full=True))


def run(argv: Sequence[str] | None = None) -> int:
    """The one boundary: user errors are one line and their exit code; anything unexpected is one
    line naming where it happened, exit 70; a traceback only with ML_ENV_DEBUG=1."""
    if "_ARGCOMPLETE" in os.environ:
        _complete()
    argv = list(sys.argv[1:] if argv is None else argv)
    script_args: list[str] = []
    if "--" in argv and _selected(argv) == "train":
        i = argv.index("--")
        argv, script_args = argv[:i], argv[i + 1 :]
    parser = build_parser(argv)
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse: --help (0) or a usage error (2), already printed
        return int(e.code or 0) if isinstance(e.code, int) else 2
    args.script_args = script_args
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    json_mode = bool(getattr(args, "json", False))
    try:
        if args.context is not None:
            from ..engine import select_context

            select_context(args.context)
        from .common import resolve

        resolve(args)
        return int(args.func(args))
    except MlEnvError as e:
        _name_the_setting(e, args)
        report_error(e, json_mode=json_mode)
        return e.exit_code
    except KeyboardInterrupt:
        print("ml-env: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 141
    except Exception as e:  # a bug: never a raw traceback unless asked for
        report_internal(e, json_mode=json_mode)
        return EXIT_INTERNAL


def _name_the_setting(e: MlEnvError, args: argparse.Namespace) -> None:
    """An error about an option's value (``--builder '...' is not ...``) whose value the user did not
    type says where it came from: the config key and file, or the environment variable."""
    resolved = getattr(args, "o", None)
    if not isinstance(e, UsageError) or resolved is None or e.file:
        return
    for opt in getattr(args, "_options", ()):
        source = resolved.sources.get(opt.name, "flag")
        if source not in ("flag", "input", "default") and str(e.message).startswith(f"{opt.flags[0]} "):
            by = source if source.startswith("environment") else f"{opt.config} in {source}"
            e.hint = f"{e.hint}; set by {by}" if e.hint else f"set by {by}"
            return


def report_error(e: MlEnvError, *, json_mode: bool = False) -> None:
    from ..grammar import bounded
    from ..redact import redact_userinfo

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


def main(argv: Sequence[str] | None = None) -> None:
    sys.exit(run(argv))
