"""The README's quick start on a pristine Debian bookworm (python3, no pip, no venv module), in
a container of the lab's debootstrapped image, up to the point where the engine is needed.

Packages come from this machine's pip configuration, mounted read-only where pip looks for it
(and the paths it names), as a user's own mirror would be configured on their machine."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from .helpers import copy_checkout

pytestmark = pytest.mark.docker
ROOT = Path(__file__).resolve().parents[2]
PIP_FILES = ("/etc/pip.conf", "/etc/xdg/pip", "/root/.config/pip")
# the machine's own extra CAs (a corporate proxy's): Debian's ca-certificates, installed with
# python3-venv, builds the container's bundle from them; the bundle itself is not mounted
LOCAL_CAS = "/usr/local/share/ca-certificates"


def machine_pip_paths() -> list[str]:
    """pip's config files on this machine and the local paths their values name."""
    out = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True).stdout
    paths = {p for p in PIP_FILES if os.path.exists(p)}
    for line in out.splitlines():
        for word in line.split("=", 1)[-1].strip("'\" ").split():
            word = word.removeprefix("file://").rstrip("/")
            if word.endswith("/simple"):  # a local index links to files beside it
                word = word.rsplit("/", 1)[0]
            if word.startswith("/") and not word.startswith("/etc/ssl/") and os.path.exists(word):
                paths.add(word)
    for k, v in os.environ.items():
        if k.startswith("PIP_") and v.startswith("/") and not v.startswith("/etc/ssl/") and os.path.exists(v):
            paths.add(v)
    if os.path.isdir(LOCAL_CAS):
        paths.add(LOCAL_CAS)
    return sorted(paths)


def test_quick_start_on_a_pristine_bookworm(tmp_path: Path, lab: dict) -> None:
    made = subprocess.run([sys.executable, str(ROOT / "ci/lab/lab.py"), "pristine-image"],
                          capture_output=True, text=True, timeout=900)  # fmt: skip
    assert made.returncode == 0, made.stdout + made.stderr
    image = made.stdout.strip().splitlines()[-1]
    repo = copy_checkout(tmp_path / "repo")
    mounts = [f"--volume={repo}:/src"] + [f"--volume={p}:{p}:ro" for p in machine_pip_paths()]
    env = [f"--env={k}={v}" for k, v in os.environ.items() if k.startswith("PIP_")]
    script = (
        "set -e; cd /src; "
        "if python3 -c 'import pip' 2>/dev/null; then echo 'not pristine: pip is there'; exit 9; fi; "
        "./dev --list; "
        "echo hash=$(.venv/bin/ml-env hash envs/sklearn.toml); "
        "python3 -c 'import pip' 2>/dev/null && echo 'pip in the system python' || echo 'system python untouched'"
    )
    cidfile = tmp_path / "cid"
    try:
        p = subprocess.run(
            ["docker", "run", f"--cidfile={cidfile}", "--network=host", *mounts, *env, image, "sh", "-c", script],
            capture_output=True, text=True, timeout=900,
        )  # fmt: skip
        assert p.returncode == 0, (p.stdout + p.stderr)[-4000:]
        assert "installing python3.11-venv with apt" in p.stderr, p.stderr[-2000:]
        assert "- demo ->" in p.stdout and "tests ->" in p.stdout, p.stdout[-2000:]
        assert p.stdout.strip().endswith("system python untouched")
        there = next(x for x in p.stdout.splitlines() if x.startswith("hash="))[5:]
        here = subprocess.run([sys.executable, "-m", "ml_env_tasks", "hash", "envs/sklearn.toml"], cwd=ROOT,
                              capture_output=True, text=True).stdout.strip()  # fmt: skip
        assert len(there) == 64 and there == here, "the same environment hashes the same on another machine"
    finally:
        if cidfile.exists():
            subprocess.run(["docker", "rm", "-f", cidfile.read_text().strip()], capture_output=True)
