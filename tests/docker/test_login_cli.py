"""``ml-env login``: the login action's command on the command line, the password from stdin."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.docker


def test_login_reads_the_password_from_stdin_and_says_a_refusal_in_one_line(lab: dict, tmp_path: Path) -> None:
    env = {**os.environ, "DOCKER_CONFIG": str(tmp_path)}  # never the machine's own docker config
    (tmp_path / "config.json").write_text("{}")
    cmd = [sys.executable, "-m", "ml_env_tasks", "login", lab["auth_registry"], "-u", lab["auth_user"]]
    ok = subprocess.run([*cmd, "--password-stdin"], input=lab["auth_password"], env=env, capture_output=True,
                        text=True, timeout=120)  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    assert lab["auth_registry"] in json.loads((tmp_path / "config.json").read_text())["auths"]
    assert lab["auth_password"] not in ok.stdout + ok.stderr
    bad = subprocess.run([*cmd, "--password-stdin", "--json"], input="wrong-" + lab["auth_password"], env=env,
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert bad.returncode == 4 and json.loads(bad.stdout)["exit_code"] == 4
    assert len(bad.stderr.strip().splitlines()) == 1 and "wrong-" not in bad.stderr
