"""The fronts, side by side over ``ml_env_tasks.commands``: ``cli`` (the ``ml-env`` command),
``nox`` (sessions for a user's noxfile), ``gha`` (the composite actions' steps) and ``actions``
(their ``action.yml`` files, rendered). None imports another; the core imports none of them."""
