"""Reproducible images: the same environment built again with no cache is the same image."""

from __future__ import annotations

import json

import pytest

from ml_env_tasks.build import BuildOptions, build
from ml_env_tasks.registry import RegistryClient

from .helpers import ml_env

pytestmark = pytest.mark.docker

SPEC = """name = "repro"
[base]
image = "{base}"
[apt]
packages = ["libgomp1"]
[python]
packages = ["six==1.16.0"]
"""


def _image_manifest(client: RegistryClient, repo: str, digest: str) -> str:
    """The image's own manifest in its index (the index also holds provenance, dated by design)."""
    doc = json.loads(client.get_manifest(repo, digest)[1])
    return next(m["digest"] for m in doc["manifests"] if (m.get("platform") or {}).get("os") != "unknown")


def test_a_build_with_no_cache_gives_the_same_image(ws) -> None:
    f = ws.spec(SPEC.format(base=ws.lab["base_image_python"]))
    first = build(str(f), ws.opts())
    again = build(str(f), ws.opts(upgrade=True))  # --upgrade: no build cache at all (pins keep the versions)
    assert again.built and again.hash == first.hash
    client = RegistryClient(ws.lab["registry"])
    assert _image_manifest(client, ws.repo, again.digest) == _image_manifest(client, ws.repo, first.digest)
    cfg = client.image_config(ws.repo, again.digest)
    assert cfg["created"].startswith("1970-01-01") and all(h["created"].startswith("1970") for h in cfg["history"][-3:])


def test_check_reproducible_names_the_files_that_differ(ws) -> None:
    dockerfile = f"FROM {ws.lab['base_image_python']}\nRUN date +%s%N > /built-at\n"
    f = ws.spec(
        'name = "clock"\n[base]\ndockerfile = "Dockerfile"\n[env]\nX = "1"\n', files={"Dockerfile": dockerfile.encode()}
    )
    p = ml_env("build", str(f), *ws.cli_args(), "--check-reproducible", "--quiet")
    assert p.returncode == 1, p.stderr
    assert "differs: /built-at (content" in p.stdout and "not reproducible" in p.stderr
    light = 'name = "light"\n[base]\nimage = "{base}"\n[python]\npackages = ["six==1.16.0"]\n'
    good = ws.spec(light.format(base=ws.lab["base_image_python"]), name="good.toml")
    p = ml_env("build", str(good), *ws.cli_args(), "--check-reproducible", "--quiet", "--json")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["reproducible"]["same"] is True
    assert BuildOptions(check_reproducible=True).check_reproducible
