"""``login``: ``docker login`` through the command's engine; the login action (docker/login-action's
inputs) is the same command."""

from __future__ import annotations

from pathlib import Path

from ..errors import MlEnvError
from ..settings.options import Option
from . import Action, Command, Console, Outcome, Values

__all__ = ["COMMANDS"]

PREFIX = "ml-env-login-"  # the job's docker config: RUNNER_TEMP/ml-env-login-XXXX/docker


def run_login(v: Values, io: Console) -> Outcome:
    """Log in through the engine; a registry that needs no login (no user, no password) is a no-op.
    The actions front masks the password before anything runs."""
    from .. import engine

    registry, username, password = (v.registry or "").strip(), (v.username or "").strip(), v.password or ""
    if v.password_stdin:
        import sys

        password = sys.stdin.readline().rstrip("\r\n")
    elif password and not io.actions:
        io.warn("--password on the command line is visible to other users of this machine: use --password-stdin")
    if not username and not password:
        return Outcome(
            {"logged_in": False}, f"no credentials given for {registry or 'the registry'}: nothing to log in with"
        )
    if not (registry and username and password):
        raise MlEnvError("inputs 'registry', 'username' and 'password' go together")
    where = _job_docker_config(registry) if io.actions else None
    engine.current().login(registry, username, password)
    data = {"logged_in": True, "registry": registry, "docker_config": str(where) if where else None}
    return Outcome(data, f"logged in to {registry} as {username}" + (f" (for this job only: {where})" if where else ""))


def _job_docker_config(registry: str) -> Path | None:
    """In a GitHub Actions job, the login goes to a docker config of the job's own in
    ``RUNNER_TEMP``, which the runner empties at the end of every job: on a self-hosted runner the
    credentials do not outlive the job (a composite action has no post step to log out). The
    job's later steps get it through ``GITHUB_ENV``; a second login in the job adds to it."""
    import os

    from ..registry.credentials import job_docker_config

    temp, env_file = os.environ.get("RUNNER_TEMP"), os.environ.get("GITHUB_ENV")
    if not (temp and env_file):
        return None
    now = Path(os.environ.get("DOCKER_CONFIG") or "/")
    if now.parent.parent == Path(temp) and now.parent.name.startswith(PREFIX):
        return now  # an earlier login of this job made it
    import tempfile

    d = Path(tempfile.mkdtemp(prefix=PREFIX, dir=temp)) / "docker"
    job_docker_config(d, registry)
    os.environ["DOCKER_CONFIG"] = str(d)
    with open(env_file, "a", encoding="utf-8") as fh:
        fh.write(f"DOCKER_CONFIG={d}\n")
    return d


COMMANDS = {
    "login": Command(
        "login", "log in to a registry through the engine (docker login; the login action)",
        (
            Option("registry", ("registry",), gha="registry", help="Registry host[:port]"),
            Option("username", ("--username", "-u"), gha="username", help="User name (empty: nothing to log in with)"),
            Option("password", ("--password", "-p"), gha="password",
                   help="Password or token (pass a secret; empty: no login)"),
            Option("password_stdin", ("--password-stdin",), kind="flag", default=False, gha=None,
                   help="read the password from standard input"),
        ),
        run_login,
        action=Action(
            "ml-env login",
            "Log in to a registry for the ml-env actions (docker/login-action style inputs). The password is masked "
            "in the log before anything else runs. A registry that needs no login needs no password.",
            secret_inputs=("password",),
        ),
    ),
}  # fmt: skip
