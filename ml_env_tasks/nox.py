"""Reusable nox sessions. In your noxfile: ``import ml_env_tasks.nox`` and they are there.

    nox -s env_build -- envs/sklearn.toml --registry localhost:5000
    nox -s env_plan -- envs/sklearn.toml
    nox -s env_hash -- envs/sklearn.toml
    nox -s train -- --env envs/sklearn.toml --source src --script train.py -- --alpha 0.5
    nox -s runs -- list
    nox -s promote -- localhost:5000/ml-envs/sklearn:HASH localhost:5001/prod/sklearn --tag 1.4.0 --tag prod
    nox -s smoke_test -- --env envs/sklearn-inference.toml --entry score.py --model model --cases cases.jsonl

The sessions only drive Docker and registries, so they need no virtualenv
(``venv_backend="none"``): they call the same core as the ``ml-env`` CLI, in-process, with the
arguments after ``--``. A user error fails the session with the CLI's one-line message.
"""

from __future__ import annotations

from collections.abc import Callable

import nox

from . import cli

__all__ = ["SESSIONS", "run_cli"]


def run_cli(session: nox.Session, command: str, default_args: list[str] | None = None) -> None:
    argv = [command, *(session.posargs or default_args or [])]
    session.log("ml-env " + " ".join(argv))
    rc = cli.run(argv)
    if rc != 0:
        session.error(f"ml-env {command} failed (exit {rc})")


def _session(name: str, command: str, doc: str) -> Callable[[nox.Session], None]:
    def session_fn(session: nox.Session) -> None:
        if not session.posargs:
            session.error(f"usage: nox -s {name} -- ARGS; see `ml-env {command} --help`")
        run_cli(session, command)

    session_fn.__doc__ = doc
    session_fn.__name__ = name
    return session_fn


SESSIONS: dict[str, tuple[str, str]] = {
    "env_build": ("build", "Build an environment image, or reuse it when its hash is already in the registry."),
    "env_plan": ("plan", "Print an environment's Dockerfile, hash and image tag without building."),
    "env_hash": ("hash", "Print an environment's content hash."),
    "train": ("train", "Run a training script inside an environment: -- --env E --source D --script S [-- ARGS]."),
    "runs": ("runs", "Show run history: -- list | show RUN."),
    "serve": ("serve", "Run a scoring server locally: -- --env E --entry score.py --model DIR [--detach]."),
    "smoke_test": ("smoke-test", "Smoke-test an inference image: -- --env E --entry score.py --model DIR --cases C."),
    "promote": ("promote", "Promote an image by digest to another registry: -- SOURCE DEST --tag T."),
    "ledger": ("ledger", "Show the release ledger: -- show [--env NAME] [--tag prod]."),
}

for _name, (_command, _doc) in SESSIONS.items():
    nox.session(name=_name, venv_backend="none", tags=["ml-env"], default=False)(_session(_name, _command, _doc))
