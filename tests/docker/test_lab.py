"""One lab per machine: any checkout sees the same lab, reports what is broken and heals it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.docker, pytest.mark.exclusive]  # it restarts the engine


def _lab(script: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=600)


def test_another_checkout_sees_checks_and_heals_the_same_lab(tmp_path: Path, lab: dict) -> None:
    # a second checkout (only what the lab needs: lab.py and the modules beside it), somewhere else
    other = tmp_path / "clone"
    shutil.copytree(ROOT / "ci", other / "ci")
    script = other / "ci/lab/lab.py"
    assert len(list(script.parent.glob("lab_*.py"))) > 1
    before = json.loads(Path(_lab(script, "env-path").stdout.strip()).read_text())
    assert before["owns_engine"] and before["dockerd_pid"]

    # the fault seen in the wild: the docker0 bridge disappears under a running engine
    subprocess.run(["ip", "link", "delete", "docker0"], check=True)
    st = _lab(script, "status")
    assert st.returncode == 1, st.stdout
    assert "FAIL docker0" in st.stdout and "UNHEALTHY" in st.stdout

    # a test session that meets the broken lab stops with the lab's report, not N failures
    suite = tmp_path / "suite"
    suite.mkdir()
    shutil.copy(ROOT / "tests/conftest.py", suite / "conftest.py")
    (suite / "test_containers.py").write_text(
        "import subprocess, pytest\n"
        "pytestmark = pytest.mark.docker\n"
        "@pytest.mark.parametrize('i', range(5))\n"
        "def test_container(i, lab):\n"
        "    p = subprocess.run(['docker', 'run', '--rm', lab['base_image_tiny'], 'true'], capture_output=True, text=True)\n"
        "    assert p.returncode == 0, p.stderr\n"
    )
    inner = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-o", "markers=docker", str(suite)],
        capture_output=True, text=True, timeout=600, cwd=suite,
        env={**os.environ, "ML_ENV_LAB_SCRIPT": str(script)},
    )  # fmt: skip
    assert "the lab is broken, not the code" in inner.stdout, inner.stdout[-3000:]
    assert "1 failed" in inner.stdout and "FAIL docker0" in inner.stdout

    up = _lab(script, "up")
    assert up.returncode == 0, up.stdout + up.stderr
    assert "restarting the lab's dockerd: the docker0 bridge is missing" in up.stdout
    after = json.loads(Path(_lab(script, "env-path").stdout.strip()).read_text())
    assert after["owns_engine"] and after["dockerd_pid"] != before["dockerd_pid"]
    assert _lab(script, "status").returncode == 0
    # and containers start again on the default bridge
    p = subprocess.run(["docker", "run", "--rm", lab["base_image_tiny"], "true"], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
