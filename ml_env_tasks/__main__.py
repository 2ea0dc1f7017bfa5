"""``python -m ml_env_tasks ARGS``: the ``ml-env`` command."""

from .fronts.cli import main

main()
