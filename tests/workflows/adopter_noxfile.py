"""An adopter's noxfile (tests/docker/test_workflows_act.py copies it into the adopter's
repository as noxfile.py): sessions of its own, and ml-env's as a guest. It already has a
`train` of its own, so ml-env's come under a prefix (register refuses to replace one)."""

from __future__ import annotations

import nox

import ml_env_tasks.nox


@nox.session(venv_backend="none")
def train(session: nox.Session) -> None:
    """acme's own training entry point, not ml-env's."""
    session.log("acme-models: our own train session, left alone by ml-env")


ml_env_tasks.nox.register(prefix="ml_")  # ml_env_build(env='scoring'), ml_train, ml_smoke_test, ...
