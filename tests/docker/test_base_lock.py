"""What the base brings: a user-managed environment's lock lists the base's own packages, and a
base tag re-pushed since an image was built is said when that image is reused."""

from __future__ import annotations

import json

import pytest

from ml_env_tasks.pins import lock_packages, lock_path_for
from ml_env_tasks.registry import RegistryClient

from .helpers import ml_env

pytestmark = pytest.mark.docker


def test_a_user_managed_environment_locks_what_the_base_python_has(ws) -> None:
    """It wrote an empty lock: nothing was installed, so nothing was asked of the interpreter."""
    f = ws.spec(f'name = "um"\n[base]\nimage = "{ws.lab["base_image_python"]}"\n'
                "[python]\nuser_managed_dependencies = true\n")  # fmt: skip
    p = ml_env("build", str(f), *ws.cli_args(), "--json", "--quiet")
    assert p.returncode == 0, p.stderr
    lock = lock_path_for(f).read_text()
    assert "pip" in lock_packages(lock), lock
    # the same list travels in the image's label (a fresh checkout's lock comes from it)
    cfg = RegistryClient(ws.lab["registry"]).image_config(ws.repo, json.loads(p.stdout)["hash"])
    assert cfg["config"]["Labels"]["ml-env.lock"] == lock
    # a base without that interpreter: an empty lock, not a failed build
    g = ws.spec(f'name = "umtiny"\n[base]\nimage = "{ws.lab["base_image_tiny"]}"\n'
                "[python]\nuser_managed_dependencies = true\n", name="tiny.toml")  # fmt: skip
    q = ml_env("build", str(g), *ws.cli_args(), "--json", "--quiet")
    assert q.returncode == 0, q.stderr
    assert lock_packages(lock_path_for(g).read_text()) == {}
