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
        # one Engine API call lists this test's images with their tags, filtered by the engine (a
        # whole listing costs seconds on an engine with hundreds); one removed meanwhile is fine
        from ml_env_tasks import engine
        from ml_env_tasks.engine.api import EngineAPIError

        api = engine.current().containers.api
        r = w.repo  # its images: <repo>:tag, <host>/<repo>:tag, and the <repo>-suffix[/...] repositories
        patterns = [f"{r}*", f"*/{r}*", f"{r}*/*", f"*/{r}*/*"]
        for img in api.call("GET", api.path("/images/json", query={"filters": {"reference": patterns}})) or []:
            for tag in img.get("RepoTags") or []:
                if w.repo in tag:
                    try:
                        api.call("DELETE", api.path("/images/{}", tag, query={"force": "1"}))
                    except EngineAPIError:
                        pass  # went with another of its tags
        creds = {lab["auth_registry"]: (lab["auth_user"], lab["auth_password"])}
        for host, repo in [(lab["registry"], w.repo), (lab["auth_registry"], w.repo), *w.extra_repos]:
            delete_repository(host, repo, creds.get(host))
