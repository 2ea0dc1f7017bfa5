"""Reusable nox sessions, for a guest in someone else's noxfile. Nothing is registered at import;
in your noxfile::

    import ml_env_tasks.nox
    ml_env_tasks.nox.register()                  # every session, over the environments in envs/

or choose, rename and point them elsewhere::

    ml_env_tasks.nox.register(prefix="ml-", only=["env_build", "train"], envs="environments/")

A session you already have under one of those names is never replaced: ``register`` refuses,
naming it (choose a ``prefix`` or ``only``). Then ``nox -l -t ml-env`` lists them. The
per-environment sessions (``env_build``, ``env_plan``, ``env_hash``) are parametrised over every
``*.toml`` in the folder::

    nox -s "env_build(env='sklearn')"            # one environment
    nox -s env_build                             # all of them
    nox -s env_build -- envs/other.toml --force  # a file of your choosing (built once)
    nox -s env_matrix                            # {"include": [...]} for a GitHub Actions matrix

Sessions only drive Docker and registries, so they need no virtualenv (``venv_backend="none"``)
and are not default sessions: a bare ``nox`` never starts a build. They call the same core as
the ``ml-env`` CLI, in-process; a user error fails the session with the CLI's one-line message
and ml-env's exit code with its meaning (nox itself exits 1). Third-party libraries' debug
logging stays out of nox's output while a session runs.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import nox
import nox.registry

from ..commands import Command, every
from ..commands.build import env_matrix, environments
from ..commands.terminal import Terminal, execute, report_error
from ..errors import MlEnvError, exit_meaning

__all__ = ["register", "run_cli", "environments"]

TAGS = ["ml-env"]
_registered: list[str] = []


class _OnlyOurs(logging.Filter):
    """Below WARNING, only nox's and ml-env's own records reach nox's handlers."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or record.name.split(".")[0] in ("nox", "ml_env_tasks")


@contextmanager
def _quiet_third_parties() -> Iterator[None]:
    """nox logs at DEBUG on the root logger; python-on-whales, py-serializable and the like would
    print every command they run into it. A filter on the root's handlers, for the session only."""
    handlers = list(logging.getLogger().handlers)
    keep = _OnlyOurs()
    for h in handlers:
        h.addFilter(keep)
    try:
        yield
    finally:
        for h in handlers:
            h.removeFilter(keep)


def run_cli(session: nox.Session, command: str, args: Iterable[str]) -> None:
    """``ml-env COMMAND ARGS`` in this process (as the CLI parses and runs it), quietly."""
    from ..commands.parse import parse

    argv = [*command.split(), *args]
    session.log("ml-env " + " ".join(argv))
    with _quiet_third_parties():
        try:
            parsed = parse(argv)
        except MlEnvError as e:
            report_error(e)
            rc = e.exit_code
        else:
            if parsed.command is None:
                rc = parsed.exit_code if parsed.exit_code is not None else 2
            else:
                console = Terminal(parsed.json_mode)
                rc = execute(parsed.command, parsed.values, console)
    if rc != 0:
        session.error(f"ml-env {command} failed: exit {rc}, {exit_meaning(rc)}")


def _sessions() -> dict[str, Command]:
    """Session name -> the command it runs (the registry's commands that offer one)."""
    return {c.session.name: c for c in every() if c.session is not None}


def _plain(name: str, command: Command) -> Callable[[nox.Session], None]:
    word = command.words[0]  # a group's session (runs, ledger) takes the subcommand in its arguments

    def session_fn(session: nox.Session) -> None:
        if not session.posargs:
            session.error(f"usage: nox -s {name} -- ARGS; see `ml-env {word} --help`")
        run_cli(session, word, session.posargs)

    assert command.session is not None
    session_fn.__doc__ = command.session.doc
    session_fn.__name__ = name
    return session_fn


def _per_env(name: str, command: Command, envs: Path, names: list[str]) -> Callable[..., None]:
    @nox.parametrize("env", names)
    def session_fn(session: nox.Session, env: str) -> None:
        args = list(session.posargs)
        if args and args[0].endswith(".toml"):
            # a file named on the command line: done once, by the first parametrisation
            if env != names[0]:
                session.skip(f"{args[0]} is handled once, by {name}(env='{names[0]}')")
            run_cli(session, command.name, args)
        else:
            run_cli(session, command.name, [str(envs / f"{env}.toml"), *args])

    assert command.session is not None
    session_fn.__doc__ = command.session.doc
    session_fn.__name__ = name
    return session_fn  # type: ignore[no-any-return]  # nox.parametrize is untyped


def _matrix(envs: Path, command: Command) -> Callable[[nox.Session], None]:
    def session_fn(session: nox.Session) -> None:
        try:
            matrix = env_matrix(envs)
        except MlEnvError as e:  # a broken environment file: one line, like every other session
            report_error(e, json_mode=False)
            session.error(f"env_matrix failed: exit {e.exit_code}, {exit_meaning(e.exit_code)}")
        print(matrix)
        path = os.environ.get("GITHUB_OUTPUT")
        if path:
            with open(path, "a", encoding="utf-8") as f:
                f.write(f"matrix={matrix}\n")

    assert command.session is not None
    session_fn.__doc__ = command.session.doc
    session_fn.__name__ = "env_matrix"
    return session_fn


def register(prefix: str = "", only: Iterable[str] | None = None, envs: str | Path = "envs/") -> list[str]:
    """Register the sessions: a subset (``only``), renamed (``prefix``), over the environments in
    ``envs``. A second call replaces what the first registered; a session the noxfile already has
    under one of the names is refused (ValueError naming it), never replaced. Returns the names."""
    sessions = _sessions()
    chosen = list(sessions) if only is None else list(only)
    unknown = [n for n in chosen if n not in sessions]
    if unknown:
        raise ValueError(f"unknown ml-env sessions {unknown}; known: {list(sessions)}")
    registry = getattr(nox.registry, "_REGISTRY", None)
    if registry is None:  # pragma: no cover - a nox without the registry dict
        raise RuntimeError("this nox version keeps sessions differently: ml_env_tasks.nox cannot register")
    taken = [f"{prefix}{n}" for n in chosen if f"{prefix}{n}" in registry and f"{prefix}{n}" not in _registered]
    if taken:
        raise ValueError(
            f"ml_env_tasks.nox.register: your noxfile already has session(s) {taken}; ml-env leaves them alone. "
            + (
                f"Register under another prefix than {prefix!r}"
                if prefix
                else "Register under a prefix (register(prefix='ml-'))"
            )
            + " or choose others with only=[...]"
        )
    for old in _registered:
        registry.pop(old, None)
    _registered.clear()
    env_dir = Path(envs)
    names = environments(env_dir)
    for name in chosen:
        command = sessions[name]
        assert command.session is not None
        full = f"{prefix}{name}"
        if command.name == "matrix":
            fn = _matrix(env_dir, command)
        elif command.session.per_env and names:
            fn = _per_env(full, command, env_dir, names)
        else:
            fn = _plain(full, command)
        nox.session(name=full, venv_backend="none", tags=TAGS, default=False)(fn)
        _registered.append(full)
    return list(_registered)
