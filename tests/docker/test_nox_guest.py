"""The nox front as a guest in a user's noxfile, building on the real lab: the user's own
sessions stay, and under nox's verbose log no third-party debug line reaches the output."""

from __future__ import annotations

import subprocess
import sys
import uuid

import pytest

pytestmark = pytest.mark.docker


def test_a_build_session_is_quiet_and_leaves_the_users_sessions(ws) -> None:
    (ws.dir / "noxfile.py").write_text(
        "import nox\n\n@nox.session(venv_backend='none')\ndef build(session):\n    print('users own build')\n\n"
        "import ml_env_tasks.nox\nml_env_tasks.nox.register(prefix='ml-', only=['env_build'])\n"
    )
    (ws.dir / "envs").mkdir()
    (ws.dir / "envs/tiny.toml").write_text(
        f'name = "tiny"\n[base]\nimage = "{ws.lab["base_image_tiny"]}"\n[env]\nGUEST = "{uuid.uuid4().hex}"\n'
    )
    p = subprocess.run(
        [sys.executable, "-m", "nox", "-v", "-s", "ml-env_build(env='tiny')", "--", *ws.cli_args()],
        cwd=ws.dir, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr[-3000:]
    out = p.stdout + p.stderr
    assert ws.repo in out  # it built (or reused) the image in this test's repository
    for noisy in ("python_on_whales", "py_serializable", "Running command"):
        assert noisy not in out, noisy
    mine = subprocess.run([sys.executable, "-m", "nox", "-s", "build"], cwd=ws.dir, capture_output=True, text=True)
    assert mine.returncode == 0 and "users own build" in mine.stdout + mine.stderr
