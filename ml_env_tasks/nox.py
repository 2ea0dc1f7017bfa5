"""``import ml_env_tasks.nox`` in a noxfile: the nox front (``ml_env_tasks.fronts.nox``) under the
name users know. Nothing is registered at import; ``register()`` adds the sessions."""

from .fronts.nox import environments, register, run_cli

__all__ = ["register", "run_cli", "environments"]
