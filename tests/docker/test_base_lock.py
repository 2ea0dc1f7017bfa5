"""What the base brings: a user-managed environment's lock lists the base's own packages, and a
base tag re-pushed since an image was built is said when that image is reused."""

from __future__ import annotations

import io
import json

import pytest

from ml_env_tasks.build import Reporter
from ml_env_tasks.build.flow import build_env, load_env
from ml_env_tasks.registry import RegistryClient
from ml_env_tasks.spec.pins import lock_packages, lock_path_for

from .helpers import ml_env, push_single_image

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


def test_a_re_pushed_base_tag_is_said_when_the_image_is_reused(ws) -> None:
    """It was reused silently: only --pin-base noticed a moved tag."""
    reg = ws.lab["registry"]
    base_repo = f"{ws.repo}-base"
    ws.extra_repos.append((reg, base_repo))
    client = RegistryClient(reg)
    first = push_single_image(client, base_repo, "latest", payload=b"one")
    f = ws.spec(f'name = "moving"\n[base]\nimage = "{reg}/{base_repo}:latest"\n[env]\nX = "1"\n')
    built = ml_env("build", str(f), *ws.cli_args(), "--json")
    assert built.returncode == 0, built.stderr
    b = json.loads(built.stdout)
    labels = client.image_config(ws.repo, b["hash"])["config"]["Labels"]
    assert labels["ml-env.base.digest"] == first
    assert ml_env("hash", str(f)).stdout.strip() == b["hash"]  # the label is not hashed
    again = ml_env("build", str(f), *ws.cli_args(), "--json")
    assert again.returncode == 0 and "moved" not in again.stderr

    second = push_single_image(client, base_repo, "latest", payload=b"two")
    assert second != first
    for _ in range(2):  # said on every reuse, not once
        moved = ml_env("build", str(f), *ws.cli_args(), "--json")
        assert moved.returncode == 0, moved.stderr
        assert json.loads(moved.stdout)["digest"] == b["digest"]
        said = [line for line in moved.stderr.splitlines() if "moved" in line]
        assert len(said) == 1 and "--pin-base" in said[0] and first[:19] in said[0] and second[:19] in said[0], (
            moved.stderr
        )
    out = io.StringIO()  # the full path (a loaded environment), as register and train take it
    r = build_env(load_env(f, ws.opts()), ws.opts(), Reporter(stream_logs=False, out=out))
    assert not r.built and out.getvalue().count("has moved since") == 1
    pinned = ml_env("build", str(f), *ws.cli_args(), "--pin-base", "--json")
    assert pinned.returncode == 0 and "moved" not in pinned.stderr
    assert json.loads(pinned.stdout)["hash"] != b["hash"]
