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
    try:
        yield w
    finally:
        from python_on_whales import docker

        for img in docker.image.list():
            for tag in img.repo_tags:
                if w.repo in tag:
                    docker.image.remove(tag, force=True)
        creds = {lab["auth_registry"]: (lab["auth_user"], lab["auth_password"])}
        for host, repo in [(lab["registry"], w.repo), (lab["auth_registry"], w.repo), *w.extra_repos]:
            delete_repository(host, repo, creds.get(host))
