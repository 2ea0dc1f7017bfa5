"""Every command, declared once: the one registry the fronts (the ``ml-env`` CLI, the nox
sessions, the GitHub actions and their ``action.yml`` files) are generated from.

A command is a ``Command`` in the module this table names: its options (``Option``: flag,
environment variable, config key, action input, type, default, help), one ``run(values, io) ->
Outcome``, and, when it is offered there, its GitHub action (``Action``: title, outputs, what it
requires) and its nox session (``Session``). ``Outcome`` carries the result once for every front:
JSON data, text, an exit code, GitHub outputs and a job summary. No front builds an options
object by hand, and no front imports another.

The table names modules, not objects, so a front imports only the command it runs (a no-op
build must not pay for the other twenty).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..settings.options import Option, Resolved

__all__ = [
    "REGISTRY",
    "GROUPS",
    "Command",
    "Action",
    "Session",
    "Outcome",
    "Annotation",
    "Console",
    "Values",
    "load",
    "every",
    "top_level",
]

Values = Resolved  # a command's option values, each with its typed Origin

# command -> (module under ml_env_tasks.commands, one-line help). Two words: a subcommand.
REGISTRY: dict[str, tuple[str, str]] = {
    "build": ("build", "build an environment (or reuse it when its hash is already in the registry)"),
    "plan": ("build", "print the Dockerfile, hash and image tag without building"),
    "hash": ("build", "print the environment's content hash"),
    "explain": ("build", "list the fields that make two specs' hashes differ"),
    "matrix": ("build", "the environments of a folder as a GitHub Actions matrix (JSON)"),
    "train": ("runs", "run a training script inside an environment (built or reused by hash)"),
    "runs list": ("runs", "list runs"),
    "runs show": ("runs", "show one run"),
    "runs gc": ("runs", "mark runs whose ml-env process died as lost; remove their containers"),
    "runs logs": ("runs", "a run's log (a cluster run's, so far)"),
    "runs wait": ("runs", "follow a cluster run to its end; exit with its exit code"),
    "runs cancel": ("runs", "cancel a cluster run (scancel) and record it cancelled"),
    "compute list": ("runs", "the compute targets the config files declare ([compute.NAME])"),
    "serve": ("serve", "run a scoring server locally; serve list|stop|logs"),
    "serve list": ("serve", "your services on the engine (--all: everyone's)"),
    "serve stop": ("serve", "stop and remove a service"),
    "serve logs": ("serve", "a service's log"),
    "smoke-test": ("serve", "build or reuse an inference image, start it, send sample requests, check the answers"),
    "promote": ("release", "copy an image by digest to another registry/repository and record it in the ledger"),
    "ledger show": ("release", "print promotions; with --tag, which digest the tag is now and since when"),
    "verify": ("release", "check an image: content hash, tag, SBOM, provenance, ledger record, smoke test, signatures"),
    "sign": ("release", "sign an image by digest with cosign, and attest its SBOM, provenance and smoke-test record"),
    "import": (
        "catalog",
        "import an Azure ML environment (v1 directory, v2 YAML, conda file, requirements), job or deployment",
    ),
    "export": ("catalog", "export an environment file to Azure ML v1 (directory) or v2 (YAML)"),
    "register": ("catalog", "build (or reuse) and record a new version when the hash changed"),
    "list": ("catalog", "registered environments and curated ones"),
    "get": ("catalog", "print a registered version's environment file, or write it (-o DIR)"),
    "diff": ("catalog", "field-level differences between two registered versions"),
    "clone": ("catalog", "copy a curated (or any) environment under your own name"),
    "scaffold": ("catalog", "write a starter environment, requirements file and train script"),
    "config": ("config", "show every effective setting and where it came from"),
    "model register": ("models", "store a model folder as the next version (same bytes: the same version)"),
    "model list": ("models", "every version of a model"),
    "model get": ("models", "one version's metadata (NAME: the latest)"),
    "model download": ("models", "a version's files into a new or empty folder"),
    "package": ("models", "an inference image with its entry script and model inside (serve, smoke-test, promote it)"),
    "login": ("login", "log in to a registry through the engine (docker login; the login action)"),
}
# the first word of a two-word command, when it is not a command itself
GROUPS: dict[str, str] = {
    "runs": "run history: list, show, logs, wait, cancel, gc",
    "compute": "compute targets: list",
    "ledger": "the release ledger: show",
    "model": "model versions in a registry: register, list, get, download",
}


@dataclass(frozen=True, eq=False, repr=False)  # a declaration: no generated methods it never uses
class Annotation:
    """An error or warning a front shows beside a file (GitHub: an annotation)."""

    message: str
    level: str = "error"  # error | warning | notice
    file: str | None = None
    line: int | None = None
    title: str | None = None


@dataclass(eq=False, repr=False)
class Outcome:
    """What a command gives every front: ``data`` is its JSON, ``text`` what a person reads (a
    string, or a function that makes it), ``outputs`` its GitHub outputs (or a function that
    computes them: only the actions front asks), ``summary`` the job summary's markdown."""

    data: Any = None
    text: str | Callable[[], str] | None = None
    exit_code: int = 0
    outputs: Mapping[str, str] | Callable[[], Mapping[str, str]] = field(default_factory=dict)
    summary: str | None = None
    annotations: tuple[Annotation, ...] = ()
    tail: tuple[str, str] | None = None  # (title, text): a log tail shown after the result, e.g. on failure
    shown: bool = False  # the command showed it already (``Console.emit``), before it went on

    def text_now(self) -> str:
        return (self.text() if callable(self.text) else self.text) or ""

    def outputs_now(self) -> Mapping[str, str]:
        return self.outputs() if callable(self.outputs) else self.outputs


class Console(Protocol):
    """How a command speaks while it runs; each front has its own."""

    json_mode: bool
    actions: bool  # running as a GitHub Actions step

    def info(self, msg: str) -> None: ...

    def warn(self, msg: str) -> None: ...

    def log(self, line: str) -> None:
        """A line of a build's or a run's own output (as it comes)."""

    def section(self, title: str) -> AbstractContextManager[None]:
        """A block of such lines (GitHub: a log group that runs no workflow command)."""

    def progress(self) -> Callable[[Any], None] | None:
        """A callback for a copy's progress (a bar on a terminal), or None."""

    def emit(self, outcome: Outcome) -> None:
        """Show a result now, while the command goes on (a service that is ready, then its log)."""


@dataclass(frozen=True, eq=False, repr=False)
class Action:
    """A command offered as a composite GitHub action under ``ci/github/<name>/``."""

    title: str
    description: str
    outputs: dict[str, str] = field(default_factory=dict)  # name -> description
    required: tuple[str, ...] = ()  # option names the action requires
    extra: tuple[tuple[str, str, str], ...] = ()  # (input, description, default) of the action's own
    secret_inputs: tuple[str, ...] = ()  # inputs masked before anything runs
    defaults: dict[str, Any] = field(default_factory=dict)  # option defaults that differ in CI
    # another action's inputs (docker/build-push-action's), so that a step moved over keeps them
    # and none is silently ignored: mapped onto a flag option (input -> (option, the input's value
    # that sets it, description)), or refused with the reason (input -> reason, one line, exit 2)
    aliases: dict[str, tuple[str, str, str]] = field(default_factory=dict)
    refused: dict[str, str] = field(default_factory=dict)
    # ... or honoured in some steps only: input -> (description, check(value, the step's values)
    # -> the reason it is refused in this step, or None)
    checked: dict[str, tuple[str, Callable[[str, Values], str | None]]] = field(default_factory=dict)


@dataclass(frozen=True, eq=False, repr=False)
class Session:
    """A command offered as a nox session (``ml_env_tasks.nox.register``)."""

    name: str
    doc: str
    per_env: bool = False  # parametrised over the environment files of a folder


@dataclass(frozen=True, eq=False, repr=False)
class Command:
    name: str
    help: str
    options: tuple[Option, ...]
    run: Callable[[Values, Console], Outcome]
    usage: str | None = None
    required: tuple[str, ...] = ()  # option names every front requires (a flag's own words in the error)
    action: Action | None = None
    session: Session | None = None
    script_args: bool = False  # takes the script's own arguments after `--`

    @property
    def words(self) -> list[str]:
        return self.name.split()

    def option(self, name: str) -> Option:
        for o in self.options:
            if o.name == name:
                return o
        raise KeyError(name)


def load(name: str) -> Command:
    """The declaration of one command (its module is imported now, not before)."""
    module, _ = REGISTRY[name]
    found: dict[str, Command] = importlib.import_module(f"{__name__}.{module}").COMMANDS
    return found[name]


def every() -> Iterator[Command]:
    for name in REGISTRY:
        yield load(name)


def top_level() -> dict[str, str]:
    """The first words: commands and groups, with their help, in the registry's order."""
    out: dict[str, str] = {}
    for name, (_, help_) in REGISTRY.items():
        first = name.split()[0]
        if first not in out:
            out[first] = help_ if first == name else GROUPS.get(first, help_)
    return out
