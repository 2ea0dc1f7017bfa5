"""Every option, declared once: its flag, environment variable, config key, GitHub Actions input,
type, default and help. The CLI's parsers, the actions' input reader and the tests over
``ci/github/*/action.yml`` are all generated from (or checked against) these declarations.

A value is taken from, highest first: the command line (or the action input), the environment
variable, the project's ``[tool.ml-env]``, the user's config, the machine's config, the default.
"""

from __future__ import annotations

import argparse
import enum
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import UsageError
from ..safe.grammar import digits, has_control, printable
from ..safe.paths import no_link_out
from .files import Layers

__all__ = [
    "Option",
    "Origin",
    "Source",
    "Resolved",
    "add_options",
    "resolve_options",
    "from_inputs",
    "CACHE_BACKENDS",
]

CACHE_BACKENDS = ("auto", "inline", "registry", "local", "gha", "none")
TRUE = ("1", "true", "yes", "on")
FALSE = ("0", "false", "no", "off", "")


@dataclass(frozen=True)
class Option:
    name: str  # the attribute it becomes
    flags: tuple[str, ...]  # ("--registry",); a positional has one flag without dashes
    help: str
    kind: str = "str"  # str | path | flag | int | float | choice | list
    default: Any = None
    env: str | None = None  # an environment variable that sets it
    config: str | None = None  # a key of the config files
    gha: str | None = ""  # the action input ("" = the flag without dashes; None = not an input)
    choices: tuple[str, ...] = ()
    metavar: str | None = None
    required: bool = False
    commas: bool = True  # a list given as text splits on commas too (not for values that hold commas)
    words: bool = False  # ... and on spaces (tags, as metadata-action and the README write them: "1.4.0 prod")

    @property
    def positional(self) -> bool:
        return not self.flags[0].startswith("-")

    @property
    def input_name(self) -> str | None:
        if self.gha is None:
            return None
        return self.gha or self.flags[0].lstrip("-")

    def add_to(self, parser: argparse.ArgumentParser) -> None:
        kw: dict[str, Any] = {"help": self.help}
        if self.positional:
            kw["type"] = _TYPES[self.kind]
            if self.kind == "list":
                kw.pop("type")
                kw["nargs"] = "*"
            parser.add_argument(self.flags[0], metavar=self.metavar, **kw)
            return
        kw["dest"] = self.name
        kw["default"] = None  # "not given": the other layers decide
        if self.kind == "flag":
            parser.add_argument(*self.flags, action="store_const", const=True, **kw)
            return
        if self.kind == "list":
            parser.add_argument(*self.flags, action="append", type=_text, metavar=self.metavar, **kw)
            return
        if self.choices:
            kw["choices"] = self.choices
        parser.add_argument(*self.flags, type=_TYPES[self.kind], metavar=self.metavar, required=self.required, **kw)

    def parse_text(self, text: str, where: str) -> Any:
        """A value given as text (an environment variable, an action input)."""
        if self.kind == "flag":
            t = text.strip().lower()
            if t in TRUE:
                return True
            if t in FALSE:
                return False
            raise UsageError(f"{where} must be true or false")
        if self.kind == "list":
            text = text.replace(",", "\n") if self.commas else text
            text = "\n".join(text.split()) if self.words else text
            return [x.strip() for x in text.splitlines() if x.strip() and not x.strip().startswith("#")]
        if self.choices and text not in self.choices:
            raise UsageError(f"{where} must be one of {', '.join(self.choices)}")
        try:
            return _TYPES[self.kind](text)
        except argparse.ArgumentTypeError as e:
            raise UsageError(f"{where}: {e}") from None

    def from_config(self, value: Any, where: str) -> Any:
        return value if not isinstance(value, str) or self.kind == "str" else self.parse_text(value, where)


class Source(enum.Enum):
    """Where a value came from, highest precedence first."""

    FLAG = "flag"
    INPUT = "input"  # a GitHub Actions input
    ENVIRONMENT = "environment"
    PROJECT = "project"
    USER = "user"
    SITE = "site"
    DEFAULT = "default"


@dataclass(frozen=True)
class Origin:
    """A value's source and, for a variable or a file, which one."""

    source: Source
    detail: str | None = None  # the variable's name, or the config file's path

    @property
    def given(self) -> bool:
        """Typed by the invoking user on this command (a flag or an action input)."""
        return self.source in (Source.FLAG, Source.INPUT)

    @property
    def from_config(self) -> bool:
        return self.source in (Source.PROJECT, Source.USER, Source.SITE)

    def __str__(self) -> str:
        return f"{self.source.value} ({self.detail})" if self.detail else self.source.value


FLAG, INPUT, DEFAULT = Origin(Source.FLAG), Origin(Source.INPUT), Origin(Source.DEFAULT)


@dataclass(frozen=True)
class Resolved:
    """Option values and where each came from; ``values.name`` reads one (an unknown name is an
    error, never None)."""

    values: dict[str, Any] = field(default_factory=dict)
    sources: dict[str, Origin] = field(default_factory=dict)

    def __getitem__(self, name: str) -> Any:
        return self.values[name]

    def __getattr__(self, name: str) -> Any:
        try:
            return self.__dict__["values"][name]
        except KeyError:
            raise AttributeError(f"no option {name!r}") from None

    def origin(self, name: str) -> Origin:
        return self.sources.get(name, DEFAULT)

    def with_values(self, **changes: Any) -> Resolved:
        unknown = set(changes) - set(self.values)
        if unknown:
            raise KeyError(f"no options {sorted(unknown)}")
        return Resolved({**self.values, **changes}, {**self.sources, **dict.fromkeys(changes, FLAG)})


def _resolve_one(
    opt: Option, given: Any, given_from: Origin, layers: Layers | None, environ: Mapping[str, str]
) -> tuple[Any, Origin]:
    value, origin = _resolve_value(opt, given, given_from, layers, environ)
    if opt.kind == "path" and isinstance(value, Path):
        no_link_out(value, opt.flags[0])
    return value, origin


def _resolve_value(
    opt: Option, given: Any, given_from: Origin, layers: Layers | None, environ: Mapping[str, str]
) -> tuple[Any, Origin]:
    if given is not None and given != []:
        return given, given_from
    if opt.env and environ.get(opt.env):
        return opt.parse_text(environ[opt.env], f"${opt.env}"), Origin(Source.ENVIRONMENT, opt.env)
    if opt.config == "require" and layers is not None:
        # a gate is a floor: the project may add gates, never drop the user's or the machine's
        gates: list[str] = []
        for layer in (layers.project, layers.user, layers.site):
            v = layer.get("require")
            gates += [g for g in (v or []) if isinstance(g, str) and g not in gates]
        if gates:
            name, first = next((n, f) for n, f in (("project", layers.project), ("user", layers.user),
                                                   ("site", layers.site)) if f.get("require"))  # fmt: skip
            return gates, Origin(Source(name), str(first.path))
    if opt.config and layers is not None:
        found = layers.find(opt.config)
        if found is not None:
            origin = Origin(Source(found[1]), str(found[2]))
            return opt.from_config(found[0], f"{origin}: {opt.config}"), origin
    default = opt.default() if callable(opt.default) else opt.default
    if default is None and opt.kind == "list":
        default = []
    return default, DEFAULT


def add_options(parser: argparse.ArgumentParser, options: Iterable[Option]) -> None:
    for opt in options:
        opt.add_to(parser)


def resolve_options(
    options: Iterable[Option],
    ns: argparse.Namespace,
    *,
    layers: Layers | None = None,
    environ: Mapping[str, str] | None = None,
) -> Resolved:
    """The value of every option of a parsed command line, with its source."""
    env = os.environ if environ is None else environ
    values, sources = {}, {}
    for opt in options:
        values[opt.name], sources[opt.name] = _resolve_one(opt, getattr(ns, opt.name, None), FLAG, layers, env)
    return Resolved(values, sources)


def from_inputs(
    options: Iterable[Option], environ: Mapping[str, str] | None = None, *, layers: Layers | None = None
) -> Resolved:
    """The value of every option from a GitHub Actions step's ``INPUT_*`` variables."""
    env = os.environ if environ is None else environ
    values, sources = {}, {}
    for opt in options:
        name = opt.input_name
        raw = env.get(f"INPUT_{name.upper().replace('-', '_')}", "").strip() if name else ""
        given = opt.parse_text(raw, f"input '{name}'") if raw else None
        if opt.kind == "flag" and given is False:
            given = None  # "false" is the actions' default: let the other layers speak
        values[opt.name], sources[opt.name] = _resolve_one(opt, given, INPUT, layers, env)
    return Resolved(values, sources)


# --- argument types ------------------------------------------------------------------------


def _text(text: str) -> str:
    if has_control(text):
        raise argparse.ArgumentTypeError("must not contain control characters (NUL, newline, ...)")
    return text


def _path(text: str) -> Path:
    return Path(_text(text))


def _int(text: str) -> int:
    if not digits(text) or len(text) > 9:
        raise argparse.ArgumentTypeError(f"{printable(text, 40)!r} is not a whole number")
    return int(text)


def _float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{printable(text, 40)!r} is not a number") from None
    if not (v == v and abs(v) < 1e12):  # NaN, inf
        raise argparse.ArgumentTypeError(f"{printable(text, 40)!r} is not a number")
    return v


def port(text: str) -> int:
    if not digits(text) or not 0 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError("a port is a number from 0 to 65535")
    return int(text)


_TYPES: dict[str, Any] = {"str": _text, "choice": _text, "path": _path, "int": _int, "float": _float, "port": port}


# --- the declarations ----------------------------------------------------------------------
