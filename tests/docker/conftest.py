from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from .helpers import Workspace, delete_repository

pytestmark = pytest.mark.docker


@pytest.fixture
def ws(lab: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A workspace with its own repository; its images (local and in the registries) go afterwards."""
    monkeypatch.chdir(tmp_path)
    w = Workspace(lab, tmp_path, f"test/{uuid.uuid4().hex[:12]}")
    monkeypatch.setenv("ML_ENV_TEST_REPO", w.repo)  # what this test's containers are made from (helpers.mine)
    try:
        yield w
    finally:
        # removing a test's images and repositories takes a second or two (the image store
        # deletes one at a time): it runs beside the next test, and the session waits for it all
        _CLEANUP.append(_cleaner().submit(_clean, lab, w.repo, list(w.extra_repos)))


_CLEANUP: list = []
_POOL: list = []


def _cleaner():
    from concurrent.futures import ThreadPoolExecutor

    if not _POOL:
        _POOL.append(ThreadPoolExecutor(max_workers=2, thread_name_prefix="ws-cleanup"))
    return _POOL[0]


@pytest.fixture(scope="session", autouse=True)
def _cleanup_at_the_end():
    """Every workspace is cleaned before the session ends; a cleanup that failed fails it."""
    yield
    errors = [f.exception() for f in _CLEANUP if f.exception() is not None]
    if _POOL:
        _POOL[0].shutdown(wait=True)
    assert not errors, f"workspace cleanup failed: {errors[:3]}"


def _clean(lab: dict, repo: str, extra_repos: list) -> None:
    # one Engine API call lists this test's images with their tags, filtered by the engine (a
    # whole listing costs seconds on an engine with hundreds); one removed meanwhile is fine
    from ml_env_tasks import engine
    from ml_env_tasks.engine.api import EngineAPIError

    api = engine.current().containers.api
    patterns = [f"{repo}*", f"*/{repo}*", f"{repo}*/*", f"*/{repo}*/*"]  # <repo>, <host>/<repo>, <repo>-x[/...]
    for img in api.call("GET", api.path("/images/json", query={"filters": {"reference": patterns}})) or []:
        for tag in img.get("RepoTags") or []:
            if repo in tag:
                try:
                    api.call("DELETE", api.path("/images/{}", tag, query={"force": "1"}))
                except EngineAPIError:
                    pass  # went with another of its tags
    creds = {lab["auth_registry"]: (lab["auth_user"], lab["auth_password"])}
    for host, r in [(lab["registry"], repo), (lab["auth_registry"], repo), *extra_repos]:
        delete_repository(host, r, creds.get(host))


@pytest.fixture
def cosign_keys(lab: dict, tmp_path: Path, lab_unavailable):
    """Key pairs made by the real ``cosign generate-key-pair``, each with its own password; the
    lab's own pair (``cosign_key`` in env.json) for the name ``build``."""
    import os
    import secrets
    import shutil
    import subprocess

    if not shutil.which("cosign"):
        lab_unavailable("cosign is not installed (the lab installs it: lab.py up)")

    def make(name: str) -> dict:
        if name == "build" and lab.get("cosign_key"):
            return {"key": lab["cosign_key"], "pub": Path(lab["cosign_pub"]), "password": lab["cosign_password"]}
        d = tmp_path / f"keys-{name}"
        d.mkdir()
        password = secrets.token_urlsafe(16)
        p = subprocess.run(["cosign", "generate-key-pair"], cwd=d, capture_output=True, text=True, timeout=60,
                           env={**os.environ, "COSIGN_PASSWORD": password})  # fmt: skip
        assert p.returncode == 0, p.stderr
        return {"key": str(d / "cosign.key"), "pub": d / "cosign.pub", "password": password}

    return make
