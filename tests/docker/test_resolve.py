"""Resolve once: what a build decided (the pinned base, the interpreter) is what every front uses."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ml_env_tasks.spec import load
from ml_env_tasks.spec.hashing import env_hash

from .helpers import ml_env

pytestmark = pytest.mark.docker


def test_register_with_pin_base_records_the_hash_it_built(ws) -> None:
    """It loaded the spec again without --pin-base: the version named another environment."""
    f = ws.spec(f'name = "pinned"\n[base]\nimage = "{ws.lab["base_image_tiny"]}"\n[env]\nP = "{ws.repo}"\n')
    versions = ws.dir / "versions.toml"
    built = json.loads(ml_env("build", str(f), *ws.cli_args(), "--pin-base", "--json", "--quiet").stdout)
    reg = ml_env("register", str(f), *ws.cli_args(), "--pin-base", "--versions", str(versions), "--json")
    assert reg.returncode == 0, reg.stderr
    entry = json.loads(reg.stdout)
    assert entry["hash"] == built["hash"] and entry["image"] == built["image"]
    assert entry["hash"] != env_hash(load(f))  # the unpinned environment is another one


def test_a_conda_installer_environment_trains_with_its_own_interpreter(ws) -> None:
    """It trained with /opt/ml-env/bin/python, which a conda-installer image does not have.

    No conda channel is reachable here, so the base stands in for a conda image: a ``micromamba``
    that only reports what it was asked, and conda's ``python`` on PATH (not externally managed)."""
    conda = ws.dir / "conda.yml"
    conda.write_text("dependencies:\n  - python=3.11\n  - zlib\n  - pip:\n    - six==1.16.0\n")
    base = (
        f"FROM {ws.lab['base_image_python']}\n"
        "RUN printf '#!/bin/sh\\necho micromamba stand-in: \"$*\"\\n' > /usr/local/bin/micromamba \\\n"
        "    && chmod +x /usr/local/bin/micromamba && ln -s /usr/bin/python3 /usr/local/bin/python \\\n"
        "    && rm -f /usr/lib/python3*/EXTERNALLY-MANAGED\n"
    )
    f = ws.spec(
        "name = 'condainstaller'\n[base]\ndockerfile_text = '''" + base + "'''\n"
        '[python]\nconda_file = "conda.yml"\nconda_installer = "conda"\n'
    )
    src = ws.dir / "src"
    src.mkdir()
    (src / "which.py").write_text("import sys, six\nprint('EXE', sys.executable, six.__version__)\n")
    p = ml_env("train", "--env", str(f), "--source", str(src), "--script", "which.py",
               "--runs-dir", str(ws.dir / "runs"), *ws.cli_args(), "--json")  # fmt: skip
    assert p.returncode == 0, p.stderr
    rec = json.loads(p.stdout)
    assert rec["command"][0] == "python" and rec["status"] == "completed"
    log = (Path(ws.dir / "runs" / rec["run_id"] / "log.txt")).read_text()
    assert "EXE /usr/local/bin/python 1.16.0" in log
