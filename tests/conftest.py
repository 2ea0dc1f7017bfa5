"""Shared fixtures. Tests marked `docker` need the real lab; under CI=true its absence FAILS them."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_LAB: dict | None = None
_LAB_PROBLEM: str | None = None


def _probe_lab() -> tuple[dict | None, str | None]:
    path = Path(os.environ.get("ML_ENV_LAB", ROOT / ".lab" / "env.json"))
    if not path.exists():
        return None, f"no lab: {path} is missing (run `nox -s lab`)"
    lab = json.loads(path.read_text())
    p = subprocess.run(["docker", "info", "--format", "{{.ServerVersion}}"], capture_output=True, text=True)
    if p.returncode != 0:
        return None, f"no Docker engine answers: {p.stderr.strip()[:200]}"
    return lab, None


def pytest_runtest_setup(item: pytest.Item) -> None:
    global _LAB, _LAB_PROBLEM
    if item.get_closest_marker("docker") is None:
        return
    if _LAB is None and _LAB_PROBLEM is None:
        _LAB, _LAB_PROBLEM = _probe_lab()
    if _LAB_PROBLEM:
        if os.environ.get("CI", "").lower() in ("true", "1", "yes"):
            pytest.fail(f"CI=true and the Docker lab is not available: {_LAB_PROBLEM}", pytrace=False)
        pytest.skip(_LAB_PROBLEM)


@pytest.fixture(scope="session")
def lab() -> dict:
    global _LAB, _LAB_PROBLEM
    if _LAB is None and _LAB_PROBLEM is None:
        _LAB, _LAB_PROBLEM = _probe_lab()
    assert _LAB is not None, _LAB_PROBLEM
    return _LAB
