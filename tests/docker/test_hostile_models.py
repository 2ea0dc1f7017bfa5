"""``ml-env model download`` of a hostile model version from the lab's registry: nothing is
written outside the destination (CVE-2025-4517's link chain on this machine's 3.11.7, a link
that only leaves once the tree is moved into place), and a destination that cannot be a folder
is one line with the usage exit code, before anything is fetched."""

from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path

import pytest

from ml_env_tasks import models
from ml_env_tasks.registry import RegistryClient
from ml_env_tasks.registry import artifacts as art

from ..unit.test_untrusted_tars import PREFIX, add, path_max_chain
from .helpers import ml_env

pytestmark = pytest.mark.docker


def push_model(reg: str, repo: str, layer: bytes) -> None:
    """A model version as ``register`` writes one, around a layer written by hand."""
    client = RegistryClient(reg)
    digest = "sha256:" + hashlib.sha256(layer).hexdigest()
    art.put_empty_config(client, repo)
    client.upload_stream(repo, digest, iter([layer]), len(layer))
    annotations = {"ml-env.model.name": "evil", "ml-env.model.version": "1"}
    client.put_manifest(repo, "1", models._manifest(digest, len(layer), annotations), art.OCI_MANIFEST)


def layer_of(build) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        build(t)
    return buf.getvalue()


def download(reg: str, repo: str, dest: Path):
    return ml_env("model", "download", "evil:1", str(dest), "--registry", reg, "--repository", repo)


def test_a_hostile_model_version_writes_nothing_outside_its_folder(ws, tmp_path: Path) -> None:
    reg = ws.lab["registry"]
    repo = f"{ws.repo}-models/evil"
    ws.extra_repos.append((reg, repo))
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = tmp_path / "dl"
    # download() extracts into <dest's parent>/ml-env-model-XXXXXXXX/files; the chain's top is
    # its var/azureml-models: four folders up is tmp_path
    staging_len = len(str(tmp_path)) + len("/ml-env-model-12345678/files")
    push_model(reg, repo, layer_of(lambda t: path_max_chain(t, staging_len, PREFIX, "../../../../outside", hard=False)))
    p = download(reg, repo, dest)
    assert p.returncode == 4, p.stderr
    assert len(p.stderr.strip().splitlines()) == 1 and "Traceback" not in p.stderr
    assert list(outside.iterdir()) == []
    assert list(dest.iterdir()) == []

    # a link that resolves inside the staging folder but outside the model once moved into dest
    def up(t: tarfile.TarFile) -> None:
        add(t, PREFIX + "weights.bin", data=b"w")
        add(t, PREFIX + "up", tarfile.SYMTYPE, link="..")

    repo2 = repo + "2"
    ws.extra_repos.append((reg, repo2))
    push_model(reg, repo2, layer_of(up))
    p = download(reg, repo2, dest)
    assert p.returncode == 4 and "resolves outside" in p.stderr, p.stderr
    assert not (dest / "up").is_symlink()

    # a link that stays inside the model, dangling, until it lands next to a link of the folder's
    # own (--force keeps what the model does not replace): checked again on the final folder
    def through(t: tarfile.TarFile) -> None:
        add(t, PREFIX + "weights.bin", data=b"w")
        add(t, PREFIX + "secret", tarfile.SYMTYPE, link="data/victim")

    repo3 = repo + "3"
    ws.extra_repos.append((reg, repo3))
    push_model(reg, repo3, layer_of(through))
    (outside / "victim").write_text("mine")
    (dest / "data").symlink_to(outside)
    p = ml_env("model", "download", "evil:1", str(dest), "--registry", reg, "--repository", repo3, "--force")
    assert p.returncode == 4 and "'secret'" in p.stderr and "resolves outside" in p.stderr, p.stderr
    assert not (dest / "secret").is_symlink() and (dest / "weights.bin").read_bytes() == b"w"


def test_a_destination_under_a_file_is_one_usage_line(ws, tmp_path: Path) -> None:
    reg = ws.lab["registry"]
    repo = f"{ws.repo}-models/evil"
    ws.extra_repos.append((reg, repo))
    push_model(reg, repo, layer_of(lambda t: add(t, PREFIX + "weights.bin", data=b"w")))
    (tmp_path / "notdir").write_text("a file")
    p = download(reg, repo, tmp_path / "notdir" / "x")
    assert p.returncode == 2, p.stderr
    assert p.stderr.strip().splitlines() == [p.stderr.strip()] and "notdir is not a folder" in p.stderr
    p = download(reg, repo, tmp_path / "ok")
    assert p.returncode == 0 and (tmp_path / "ok" / "weights.bin").read_bytes() == b"w"
