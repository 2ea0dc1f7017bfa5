"""What the command modules share: declaring a command's options, resolving them, the build
options every environment-naming command takes, and the output."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from ..options import Option, add_options, resolve_options
from .output import Output

__all__ = ["command", "resolve", "build_options", "output", "reporter"]


def command(
    p: argparse.ArgumentParser,
    func: Callable[[argparse.Namespace], int],
    *groups: Iterable[Option],
) -> None:
    """Give a parser its options (declared in ``ml_env_tasks.options``), ``--json`` and its function."""
    options = [o for g in groups for o in g]
    add_options(p, options)
    p.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    p.set_defaults(func=func, _options=options)


def resolve(args: argparse.Namespace) -> None:
    """Fill ``args.o`` with every declared option's value and source (flag > env > config > default)."""
    options = getattr(args, "_options", None)
    if options is None:
        return
    from ..config import load_layers

    layers = load_layers()
    args.o = resolve_options(options, args, layers=layers)
    env = args.o.values.get("env")
    if isinstance(env, str) and layers.project.path and args.o.sources.get("env", "").startswith("project"):
        # train_env / inference_env name a file of the project: relative to pyproject.toml's folder,
        # as a command run from a subfolder expects (an image or curated/NAME is left as it is)
        beside = layers.project.path.parent / env
        try:
            if not Path(env).is_absolute() and beside.is_file():
                args.o.values["env"] = str(beside)
        except OSError:
            pass
    for name, value in args.o.values.items():
        setattr(args, name, value)


def build_options(args: argparse.Namespace) -> Any:
    """BuildOptions from whichever build options this command took."""
    from ..build import BuildOptions

    opts = BuildOptions.from_values(args.o.values)
    if opts.registry:
        from ..registry import check_registry_host

        check_registry_host(opts.registry)
    return opts


def output(args: argparse.Namespace) -> Output:
    return Output(bool(getattr(args, "json", False)))


def reporter(out: Output, *, stream_logs: bool) -> Any:
    """A build Reporter that speaks through the command's Output."""
    from ..build import Reporter

    class _Rep(Reporter):
        def info(self, msg: str) -> None:
            out.info(msg)

        def warn(self, msg: str) -> None:
            out.warn(msg)

        def log(self, line: str) -> None:
            if self.stream_logs:
                print(line, file=out.err, flush=True)

    return _Rep(stream_logs=stream_logs)
