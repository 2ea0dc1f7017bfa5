"""A registered version with private wheels restores and builds in a checkout that never had them:
``register`` keeps the wheels in the image's registry (an artifact attached to the image),
``get -o DIR`` and ``NAME:VERSION`` bring them back checked against the versions file."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from ml_env_tasks.catalog.wheelstore import ARTIFACT_TYPE, tag_for
from ml_env_tasks.registry import RegistryClient

from .helpers import make_wheel, ml_env

pytestmark = pytest.mark.docker

WHEEL = "privdemo-1.0-py3-none-any.whl"


def _register(ws) -> tuple[dict, Path]:
    proj = ws.dir / "proj"
    (proj / "envs/wheels").mkdir(parents=True)
    (proj / "pyproject.toml").write_text("[project]\nname = 'p'\n")
    make_wheel(proj / "envs/wheels", "privdemo", "1.0", body="VALUE = 'private'\n")
    f = proj / "envs/w.toml"
    f.write_text(f'name = "w"\n[base]\nimage = "{ws.lab["base_image_python"]}"\n'
                 f'[python]\nwheels = ["wheels/{WHEEL}"]\n')  # fmt: skip
    versions = proj / "envs/versions.toml"
    reg = ml_env("register", str(f), *ws.cli_args(), "--versions", str(versions), "--json")
    assert reg.returncode == 0, reg.stderr
    return json.loads(reg.stdout), versions


def test_a_version_with_a_private_wheel_restores_and_builds_in_a_fresh_folder(ws, monkeypatch) -> None:
    entry, versions = _register(ws)
    wheel_sha = entry["wheels"][WHEEL]
    # the artifact beside the image: the wheel's bytes under its own digest, the image as subject
    client = RegistryClient(ws.lab["registry"])
    info, body = client.get_manifest(ws.repo, tag_for(entry["hash"]))
    doc = json.loads(body)
    assert doc["artifactType"] == ARTIFACT_TYPE and doc["subject"]["digest"] == entry["digest"]
    assert [(x["digest"], x["annotations"]["org.opencontainers.image.title"]) for x in doc["layers"]] == [
        (f"sha256:{wheel_sha}", WHEEL)
    ]

    fresh = ws.dir / "fresh"
    fresh.mkdir()
    shutil.copy(versions, fresh / "versions.toml")
    shutil.rmtree(ws.dir / "proj")  # the wheel exists nowhere but in the registry now
    monkeypatch.chdir(fresh)
    got = ml_env("get", "w:1", "-o", "out", "--versions", "versions.toml")
    assert got.returncode == 0, got.stderr
    assert "warning" not in got.stderr
    restored = fresh / "out/wheels" / WHEEL
    assert hashlib.sha256(restored.read_bytes()).hexdigest() == wheel_sha
    built = ml_env("build", "out/w.toml", *ws.cli_args(), "--json", "--quiet")
    assert built.returncode == 0, built.stderr
    b = json.loads(built.stdout)
    assert (b["built"], b["hash"], b["digest"]) == (False, entry["hash"], entry["digest"])
    again = ml_env("get", "w:1", "-o", "out", "--versions", "versions.toml")
    assert again.returncode == 2 and "not overwriting" in again.stderr and WHEEL in again.stderr

    # NAME:VERSION where an environment is expected: its registered image, nothing restored
    monkeypatch.setenv("XDG_CACHE_HOME", str(ws.dir / "cache"))
    from ml_env_tasks.build.resolve import resolve_environment

    r = resolve_environment("w:1", ws.opts(), versions=fresh / "versions.toml")
    assert (r.hash, r.digest, r.built, r.registered) == (entry["hash"], entry["digest"], False, "w:1")
    assert not list((ws.dir / "cache").rglob(WHEEL))
    # --rebuild: the recorded file, restored into the user cache with its wheel, built or reused by hash
    r = resolve_environment("w:1", ws.opts(rebuild=True), versions=fresh / "versions.toml")
    assert (r.hash, r.digest, r.built, r.registered) == (entry["hash"], entry["digest"], False, None)
    assert list((ws.dir / "cache").rglob(WHEEL))


def test_a_wheel_the_registry_swapped_is_refused_in_one_line(ws, monkeypatch) -> None:
    """The artifact names another blob for the wheel (a registry or a writer that lies): the
    versions file's digest decides; one line, nothing written."""
    entry, versions = _register(ws)
    other = make_wheel(ws.dir, "privdemo", "1.0", body="VALUE = 'evil'\n").read_bytes()
    digest = "sha256:" + hashlib.sha256(other).hexdigest()
    client = RegistryClient(ws.lab["registry"])
    client.upload_stream(ws.repo, digest, iter([other]), len(other))
    _, body = client.get_manifest(ws.repo, tag_for(entry["hash"]))
    doc = json.loads(body)
    doc["layers"][0].update(digest=digest, size=len(other))
    client.put_manifest(ws.repo, tag_for(entry["hash"]), json.dumps(doc).encode(), doc["mediaType"])
    monkeypatch.chdir(ws.dir)
    bad = ml_env("get", "w:1", "-o", "out", "--versions", str(versions))
    assert bad.returncode == 4 and "Traceback" not in bad.stderr
    lines = bad.stderr.strip().splitlines()
    assert len(lines) == 1 and WHEEL in lines[0] and "versions file records" in lines[0], bad.stderr
    assert not (ws.dir / "out").exists()
