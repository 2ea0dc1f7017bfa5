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
        from python_on_whales.exceptions import NoSuchImage

        for _ in range(3):  # another process removing an image between `ls` and `inspect`
            try:
                images = docker.image.list()
                break
            except NoSuchImage:
                images = []
        for img in images:
            try:
                tags = list(img.repo_tags)  # (read from the engine: the image may be gone by now)
            except NoSuchImage:
                continue
            for tag in tags:
                if w.repo in tag:
                    try:
                        docker.image.remove(tag, force=True)
                    except NoSuchImage:  # went with another of its tags
                        pass
        creds = {lab["auth_registry"]: (lab["auth_user"], lab["auth_password"])}
        for host, repo in [(lab["registry"], w.repo), (lab["auth_registry"], w.repo), *w.extra_repos]:
            delete_repository(host, repo, creds.get(host))
