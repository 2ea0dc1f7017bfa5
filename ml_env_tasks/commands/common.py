"""What the commands share: the build options every environment-naming command takes, a build
reporter speaking through the command's console, ``curated/NAME`` as a path, markdown cells."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..options import BUILD_HOW, BUILD_ONLY, BUILD_WHERE, Option
from . import Console, Values

if TYPE_CHECKING:
    from ..build import BuildOptions, Reporter

__all__ = ["BUILD_NAMES", "build_options", "reporter", "spec_path", "cell", "SPEC"]

BUILD_NAMES = tuple(dict.fromkeys(o.name for o in BUILD_WHERE + BUILD_HOW + BUILD_ONLY))
SPEC = (Option("spec", ("spec",), help="environment file (envs/NAME.toml) or curated/NAME", gha="spec"),)


def build_options(v: Values, *, where: str = "--registry") -> BuildOptions:
    """BuildOptions from the build options this command took: every one it declares, by name (a
    name BuildOptions lacks is a TypeError, which the test over every command catches)."""
    from ..build import BuildOptions
    from ..registry import check_registry_host

    given: dict[str, Any] = {}
    for name in BUILD_NAMES:
        value = v.values.get(name)
        if value is not None:
            given[name] = tuple(value) if isinstance(value, list) else value
    opts = BuildOptions(**given)
    if opts.registry:
        check_registry_host(opts.registry, where)
    return opts


def reporter(io: Console, *, stream_logs: bool) -> Reporter:
    """A build Reporter that speaks through the command's console."""
    from ..build import Reporter

    class _Rep(Reporter):
        def info(self, msg: str) -> None:
            io.info(msg)

        def warn(self, msg: str) -> None:
            io.warn(msg)

        def log(self, line: str) -> None:
            if self.stream_logs:
                io.log(line)

    return _Rep(stream_logs=stream_logs)


def spec_path(spec: str) -> str:
    """An environment file's path; ``curated/NAME`` is the curated file of that name."""
    if not spec.startswith("curated/"):
        return spec
    from ..catalog import resolve_curated

    return str(resolve_curated(spec))


def cell(text: str) -> str:
    """Text safe inside a markdown table cell of a job summary."""
    return text.replace("|", "\\|").replace("\n", " ")
