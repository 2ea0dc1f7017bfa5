"""The reusable nox sessions, run as a user would: a temp project with its own noxfile."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from ml_env_tasks import spec
from ml_env_tasks.hashing import env_hash


def nox(project: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "nox", *args], cwd=project, capture_output=True, text=True, timeout=120
    )


def test_import_gives_sessions_that_call_the_core(tmp_path: Path) -> None:
    (tmp_path / "noxfile.py").write_text("import ml_env_tasks.nox  # noqa: F401\n")
    (tmp_path / "envs").mkdir()
    f = tmp_path / "envs" / "tiny.toml"
    f.write_text('name = "tiny"\n[base]\nimage = "127.0.0.1:5000/base/busybox:1"\n')
    # not default sessions (a bare `nox` must not start a build): the ml-env tag selects them
    assert json.loads(nox(tmp_path, "-l", "--json").stdout) == []
    listing = json.loads(nox(tmp_path, "-l", "--json", "-t", "ml-env").stdout)
    names = {s["session"]: s for s in listing}
    assert {"env_build", "env_plan", "env_hash"} <= set(names)
    assert names["env_build"]["description"].startswith("Build an environment image")
    assert "ml-env" in names["env_build"]["tags"]
    p = nox(tmp_path, "-s", "env_hash", "--", "envs/tiny.toml")
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == env_hash(spec.load(f))


def test_user_error_fails_the_session_with_one_clear_line(tmp_path: Path) -> None:
    (tmp_path / "noxfile.py").write_text("import ml_env_tasks.nox  # noqa: F401\n")
    (tmp_path / "bad.toml").write_text('name = "x"\n[base]\nimage = "a/b:1"\n[apt]\npackages = ["Bad"]\n')
    p = nox(tmp_path, "-s", "env_plan", "--", "bad.toml")
    assert p.returncode != 0
    assert "ml-env: error: bad.toml: apt.packages[0]:" in p.stderr
    assert "Traceback" not in p.stderr
