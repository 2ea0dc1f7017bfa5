"""Shared fixtures. Tests marked `docker` need the real lab; under CI=true its absence FAILS them.

The lab is one per machine (``ci/lab/lab.py``). When a Docker test fails with an engine-side
error, the lab's health check runs once more: a broken lab stops the session with the lab's own
report instead of showing up as forty failing tests.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAB_SCRIPT = Path(os.environ.get("ML_ENV_LAB_SCRIPT", ROOT / "ci/lab/lab.py"))
_LAB: dict | None = None
_LAB_PROBLEM: str | None = None
_LAST_HEALTH_CHECK = [0.0]

# what an engine or lab fault looks like in a failed test's report
ENGINE_SIDE = re.compile(
    r"Cannot connect to the Docker daemon|Docker engine is not reachable|docker0|Device does not exist"
    r"|registry 127\.0\.0\.1:500[01] is unreachable|failed to set up container networking|EngineError"
)


def lab_env_path() -> Path:
    default = Path(os.environ.get("ML_ENV_LAB_STATE", "/var/lib/ml-env-lab")) / "run" / "env.json"
    return Path(os.environ.get("ML_ENV_LAB", default))


def _probe_lab() -> tuple[dict | None, str | None]:
    path = lab_env_path()
    if not path.exists():
        return None, f"no lab: {path} is missing (run `nox -s lab`)"
    lab = json.loads(path.read_text())
    p = subprocess.run(["docker", "info", "--format", "{{.ServerVersion}}"], capture_output=True, text=True)
    if p.returncode != 0:
        return None, f"no Docker engine answers: {p.stderr.strip()[:200]}"
    return lab, None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under pytest-xdist (``--dist loadgroup``) the tests against the engine run one after the
    other in one worker, the rest beside them: two concurrent pushes to the lab's plain-HTTP
    registry can crash this engine (moby/moby#48818, a nil dereference in BuildKit's HTTP fallback
    with the containerd image store), which fails every test in flight."""
    for item in items:
        if item.get_closest_marker("docker") is not None:
            item.add_marker(pytest.mark.xdist_group("engine"))


def lab_unavailable(problem: str) -> NoReturn:
    """A Docker test that cannot run: a failure under CI=true (never a silent skip), else a skip."""
    if os.environ.get("CI", "").lower() in ("true", "1", "yes"):
        pytest.fail(f"CI=true and the Docker lab is not available: {problem}", pytrace=False)
    pytest.skip(problem)


@pytest.fixture(name="lab_unavailable")
def lab_unavailable_fixture() -> Callable[[str], NoReturn]:
    """``lab_unavailable`` for a fixture that finds a part of the lab missing (this file is also
    copied alone into other suites, so it is handed out, not imported)."""
    return lab_unavailable


def pytest_runtest_setup(item: pytest.Item) -> None:
    global _LAB, _LAB_PROBLEM
    if item.get_closest_marker("docker") is None:
        return
    if _LAB is None and _LAB_PROBLEM is None:
        _LAB, _LAB_PROBLEM = _probe_lab()
    if _LAB_PROBLEM:
        lab_unavailable(_LAB_PROBLEM)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    rep = yield
    if (
        rep.failed
        and item.get_closest_marker("docker") is not None
        and ENGINE_SIDE.search(rep.longreprtext or "")
        and time.monotonic() - _LAST_HEALTH_CHECK[0] > 30
    ):
        _LAST_HEALTH_CHECK[0] = time.monotonic()
        p = subprocess.run([sys.executable, str(LAB_SCRIPT), "status"], capture_output=True, text=True, timeout=180)
        if p.returncode != 0:
            report = (p.stdout + p.stderr).strip()
            rep.sections.append(("the lab's health check", report))
            item.session.shouldstop = (
                "the lab is broken, not the code: `nox -s lab` heals what the lab owns.\n" + report
            )
    return rep


@pytest.fixture(scope="session")
def lab() -> dict:
    global _LAB, _LAB_PROBLEM
    if _LAB is None and _LAB_PROBLEM is None:
        _LAB, _LAB_PROBLEM = _probe_lab()
    assert _LAB is not None, _LAB_PROBLEM
    return _LAB
