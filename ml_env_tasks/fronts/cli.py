"""``ml-env``: the command line front. Every command is declared in ``ml_env_tasks.commands``;
this front only hands the command line to ``commands.terminal`` (parse, resolve, run, show) and
exits with the command's code (``ml-env --help`` lists them)."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from ..commands.parse import build_parser
from ..commands.terminal import report_error, report_internal, run_argv

__all__ = ["main", "run", "build_parser", "report_error", "report_internal"]


def run(argv: Sequence[str] | None = None) -> int:
    """``ml-env ARGS`` in this process: the exit code."""
    return run_argv(argv)


def main(argv: Sequence[str] | None = None) -> None:
    sys.exit(run(argv))
