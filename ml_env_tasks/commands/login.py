"""``login``: ``docker login`` through the command's engine; the login action (docker/login-action's
inputs) is the same command."""

from __future__ import annotations

from ..errors import MlEnvError
from ..settings.options import Option
from . import Action, Command, Console, Outcome, Values

__all__ = ["COMMANDS"]


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
    engine.current().login(registry, username, password)
    return Outcome({"logged_in": True, "registry": registry}, f"logged in to {registry} as {username}")


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
