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
    "BUILD_WHERE",
    "BUILD_HOW",
    "BUILD_ONLY",
    "RUN",
    "SERVE",
    "SMOKE",
    "PROMOTE",
    "CACHE_BACKENDS",
    "DEFAULT_TRAIN_ENV",
    "TRAIN_ENV",
    "INFERENCE_ENV",
    "VERSIONS",
    "SPEC_ENV",
    "MODEL_REPOSITORY",
    "PACKAGE_REPOSITORY",
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


def O(name: str, *flags: str, **kw: Any) -> Option:  # noqa: E743, N802 - a short constructor for the tables below
    return Option(name, flags, **kw)


# where an environment's image lives (every command that names an environment)
BUILD_WHERE = (
    O("registry", "--registry", env="ML_ENV_REGISTRY", config="registry",
      help="registry host[:port] the image lives in (without it the image stays in the engine)"),
    O("repository", "--repository", env="ML_ENV_REPOSITORY", config="repository",
      help="repository in the registry; {name} is the environment's name (default ml-envs/{name})"),
    O("pin_base", "--pin-base", kind="flag", default=False, help="hash the base tag's digest (a moved tag means a new hash)"),
    O("locked", "--locked", kind="flag", default=False, help="install exactly the lock file beside the spec"),
    O("insecure", "--insecure", kind="flag", default=False, config="insecure",
      help="allow plain HTTP to a registry that is not on loopback"),
)  # fmt: skip

# how it is built
BUILD_HOW = (
    O("cache", "--cache", kind="choice", choices=CACHE_BACKENDS, default="auto", env="ML_ENV_CACHE", config="cache",
      help="BuildKit cache backend (auto: registry, else local, else inline)"),
    O("cache_ref", "--cache-ref", help="registry cache reference (default <namespace>/buildcache:<dependency key>)"),
    O("cache_dir", "--cache-dir", kind="path", help="directory for --cache local"),
    O("ca_bundle", "--ca-bundle", kind="path", env="ML_ENV_CA_BUNDLE", config="ca_bundle",
      help="extra CA bundle for pip during the build (a build secret, never stored in the image)"),
    O("network", "--network", env="ML_ENV_BUILD_NETWORK", config="network", help="build network, e.g. host"),
    O("build_on_check_error", "--build-on-check-error", kind="flag", default=False,
      help="build when the 'already built?' check fails instead of stopping"),
    O("log_dir", "--log-dir", kind="path", default=lambda: Path(".ml-env/logs"), config="log_dir",
      help="where build logs are saved"),
    O("builder", "--builder", env="ML_ENV_BUILDER", config="builder",
      help="buildx builder to build with, any driver; none given: the current one"),
)  # fmt: skip

BUILD_ONLY = (
    O("force", "--force", kind="flag", default=False, help="rebuild even if the image exists"),
    O("upgrade", "--upgrade", kind="flag", default=False,
      help="re-resolve unpinned packages (no cache for the build) and rewrite the lock"),
    O("check_reproducible", "--check-reproducible", kind="flag", default=False,
      help="build a second time with no cache and compare: name the files that differ (exit 1 if any)"),
    O("tags", "--tag", kind="list", gha="tags", metavar="TAG", words=True,
      help="extra tag, TAG or host/repository:TAG (several allowed); applied to a reused image too"),
    O("labels", "--label", kind="list", commas=False, gha="labels", metavar="KEY=VALUE",
      help="extra image label (one per line in an input), not part of the content hash (written when the image is built)"),
    O("annotations", "--annotation", kind="list", commas=False, gha="annotations", metavar="KEY=VALUE",
      help="manifest annotation (one per line in an input), not part of the content hash (written when the image is pushed by a build)"),
    O("cache_from", "--cache-from", kind="list", commas=False, gha="cache-from", metavar="SPEC",
      help="extra cache to import, buildx syntax: type=registry,ref=host/repo:tag (several: one per line)"),
    O("cache_to", "--cache-to", metavar="SPEC",
      help="export the cache here instead of ml-env's choice, buildx syntax: type=registry,ref=...,mode=max"),
    O("platforms", "--platform", kind="list", gha="platforms", metavar="OS/ARCH",
      help="target platform: the engine's own only (the content hash names no platform)"),
)  # fmt: skip

RUN = (
    O("experiment", "--experiment", help="experiment name (default: the script's name)"),
    O("inputs", "--input", kind="list", gha="inputs", metavar="NAME=PATH",
      help="read-only input at /mnt/inputs/NAME ($ML_ENV_INPUT_NAME); NAME=volume:VOLUME mounts a volume the engine has"),
    O("env_vars", "--env-var", kind="list", gha="env-vars", metavar="NAME=VALUE",
      help="environment variable for the run (recorded)"),
    O("secrets", "--secret", kind="list", gha="secrets", metavar="NAME",
      help="pass $NAME from this environment (never recorded or printed)"),
    O("cpus", "--cpus", help="CPU limit of the run's container"),
    O("memory", "--memory", help="memory limit, e.g. 4g"),
    O("shm_size", "--shm-size", help="shared memory (default: the environment's docker.shm_size)"),
    O("gpus", "--gpus", help="all, a count, or device=ID[,ID]; an error when the engine has no GPUs"),
    O("timeout", "--timeout", kind="float", help="wall-clock limit in seconds"),
    O("runs_dir", "--runs-dir", kind="path", default=lambda: Path("runs"), env="ML_ENV_RUNS_DIR", config="runs_dir",
      help="where run records go"),
    O("user", "--user", help="uid:gid in the container (default: yours, so outputs are yours)"),
    O("max_snapshot_mb", "--max-snapshot-mb", kind="float", default=2000.0, help="largest source snapshot"),
)  # fmt: skip

SERVE = (
    O("entry", "--entry", kind="path", help="entry script: init() and run(raw_data) (not for a packaged image)"),
    O("model", "--model", kind="list", metavar="[NAME=]DIR",
      help="model directory, mounted read-only at AZUREML_MODEL_DIR (several: NAME=DIR each)"),
    O("scoring_timeout_ms", "--scoring-timeout-ms", kind="int", help="SCORING_TIMEOUT_MS for run()"),
    O("workers", "--workers", kind="int", help="WORKER_COUNT"),
    O("cpus", "--cpus", help="CPU limit of the scoring container"),
    O("memory", "--memory", help="memory limit of the scoring container, e.g. 2g"),
    O("max_body", "--max-body", help="largest request body the server accepts, e.g. 16m (413 beyond; default 16 MiB)"),
    O("read_timeout", "--read-timeout", kind="float",
      help="seconds a client has to send a request's head, and again its body (default 10 and 30)"),
)  # fmt: skip

SMOKE = (
    O("cases", "--cases", kind="path", help="JSON lines: request/request_text, expect_status, expect_json|expect_subset|expect_schema"),
    O("repeat", "--repeat", kind="int", default=1, help="send each case N times (latency p50/p95/max)"),
    O("ready_timeout", "--ready-timeout", kind="float", default=120.0, help="seconds to wait for readiness"),
    O("report_dir", "--report-dir", kind="path", default=lambda: Path(".ml-env/smoke"),
      help="where the JSON and JUnit XML reports go"),
    O("no_record", "--no-record", kind="flag", default=False,
      help="do not attach the result to the tested digest in its registry (promote --require smoke-test reads it)"),
)  # fmt: skip

PROMOTE = (
    O("tags", "--tag", kind="list", gha="tags", metavar="TAG", words=True,
      help="destination tag (several allowed; an input takes them separated by spaces, commas or newlines)"),
    O("allow_overwrite", "--allow-overwrite", kind="flag", default=False, help="move a tag that points at another digest"),
    O("dry_run", "--dry-run", kind="flag", default=False, help="print what would happen; write nothing"),
    O("insecure", "--insecure", kind="flag", default=False, config="insecure",
      help="allow plain HTTP to a registry that is not on loopback"),
    O("ledger", "--ledger", default="releases.toml", env="ML_ENV_LEDGER", config="ledger", metavar="FILE|oci://HOST/REPO|registry",
      help="the release ledger: a file, an OCI artifact in a registry (oci://HOST/REPO[:TAG]), or registry (the "
           "destination repository's own, tag ml-env-ledger)"),
    O("no_ledger", "--no-ledger", kind="flag", default=False, help="do not record the promotion"),
    O("no_referrers", "--no-referrers", kind="flag", default=False, help="do not copy signatures/attestations"),
    O("jobs", "--jobs", kind="int", default=4, help="blobs copied at once"),
    O("require", "--require", kind="list", gha="require", metavar="GATE", config="require",
      help="refuse (exit 5) unless the digest passed this gate: smoke-test (a passing smoke test recorded against it)"),
    O("spec", "--spec", kind="path", gha="spec",
      help="with --require smoke-test: the environment file whose lock the tested image must hold"),
)  # fmt: skip


# --- the environment a command runs in ----------------------------------------------------------

DEFAULT_TRAIN_ENV = "curated/minimal"
TRAIN_ENV = O("env", "--env", default=DEFAULT_TRAIN_ENV, env="ML_ENV_TRAIN_ENV", config="train_env",
              help="environment file, curated/NAME, NAME:VERSION, or an image reference (none given: train_env from the "
                   f"config files, else {DEFAULT_TRAIN_ENV}, as Azure ML gives a run that names none a default environment)")  # fmt: skip
VERSIONS = O(
    "versions",
    "--versions",
    kind="path",
    default=lambda: Path("envs/versions.toml"),
    env="ML_ENV_VERSIONS",
    config="versions",
    help="versions file, for NAME:VERSION environments (envs/versions.toml)",
)
# where model versions and packaged images go (the model and package commands)
MODEL_REPOSITORY = O("repository", "--repository", env="ML_ENV_MODEL_REPOSITORY", config="model_repository",
                     help="repository of the model; {name} is the model's name (default models/{name})")  # fmt: skip
PACKAGE_REPOSITORY = O("package_repository", "--package-repository", env="ML_ENV_PACKAGE_REPOSITORY",
                       config="package_repository",
                       help="repository of the image; {name} is the environment's name (default ml-packages/{name})")  # fmt: skip
# what environment files may read from this environment (the user's word only: never the project's)
SPEC_ENV = O("spec_env", "--spec-env", kind="list", env="ML_ENV_SPEC_ENV", config="spec_env", gha=None, metavar="NAME[@HOST]",
             help="environment variables an environment file may read: NAME (an index URL) or NAME@HOST (a registry "
                  "password, sent to HOST only)")  # fmt: skip
INFERENCE_ENV = O("env", "--env", env="ML_ENV_INFERENCE_ENV", config="inference_env",
                  help='inference environment (inference = true, or [inference] server = "azureml"), curated/NAME, '
                       "NAME:VERSION or an image")  # fmt: skip
