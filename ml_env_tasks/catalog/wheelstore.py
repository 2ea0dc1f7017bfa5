"""Private wheels of a registered version, kept in the image's registry so the version restores
and builds in a checkout that never had them.

The versions file records each wheel's name and sha256, not its bytes. ``register`` pushes the
bytes: each wheel is a blob of the image's repository (its digest is the wheel's sha256), listed
by one small OCI artifact manifest (``artifactType: application/vnd.ml-env.wheels.v1``, the empty
config, one layer per wheel titled with its file name) whose ``subject`` is the image, and tagged
``wheels-<environment hash>`` in the same repository. The tag is how it is found: it works on a
registry without the referrers API, and the ``subject`` lets one that has it list the artifact as
a referrer of the image (promotion tools that copy referrers carry it along).

``get`` and a ``NAME:VERSION`` restore read it back as untrusted: the manifest is bounded and
must have that shape, each wheel's layer digest must be the one the versions file records, each
blob is hashed as it streams (and not longer than its descriptor says), and each wheel is written
only where the registered spec names it, inside the target folder, through a staging file.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import tomllib
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from ..errors import BlobIntegrityError, RegistryError, UsageError
from ..registry import artifacts as art
from ..safe.grammar import printable
from ..safe.untrusted import toml_loads

if TYPE_CHECKING:
    from ..spec.environment import Environment
    from .versions import VersionEntry

__all__ = ["ARTIFACT_TYPE", "push", "targets", "download", "tag_for"]

ARTIFACT_TYPE = "application/vnd.ml-env.wheels.v1"
WHEEL_TYPE = "application/vnd.ml-env.wheel.v1+zip"
TITLE = "org.opencontainers.image.title"
MAX_WHEEL = 16 * 2**30  # a descriptor claiming more is refused before anything is read


def tag_for(env_hash: str) -> str:
    return f"wheels-{env_hash}"


def _repository(image: str, insecure: bool = False) -> tuple[Any, str, str]:
    """(client, repository, tag or digest) of an image reference."""
    from ..registry import RegistryClient, parse_ref

    r = parse_ref(image)
    return RegistryClient(r.host, insecure=insecure), r.repository, r.reference


def push(env: Environment, image: str, env_hash: str, *, insecure: bool = False) -> str:
    """Put ``env``'s wheels beside ``image`` (``host/repo:tag`` in a registry); the artifact's digest."""
    client, repo, reference = _repository(image, insecure)
    subject = client.head_manifest(repo, reference)
    if subject is None:
        raise RegistryError(f"{image} is not in its registry: its wheels have nothing to be attached to")
    layers = []
    for w in sorted(env.wheels, key=lambda w: w.path.name):
        digest = f"sha256:{w.sha256}"
        if not client.blob_exists(repo, digest):
            # the registry checks the bytes against the digest the spec was parsed with
            client.upload_stream(repo, digest, art.file_chunks(w.real), w.size)
        layers.append({"mediaType": WHEEL_TYPE, "digest": digest, "size": w.size, "annotations": {TITLE: w.path.name}})
    art.put_empty_config(client, repo)
    body = art.manifest(
        ARTIFACT_TYPE, layers, annotations={"ml-env.name": env.name, "ml-env.hash": env_hash},
        subject={"mediaType": subject.media_type or art.OCI_MANIFEST, "digest": subject.digest, "size": subject.size},
    )  # fmt: skip
    return client.put_manifest(repo, tag_for(env_hash), body, art.OCI_MANIFEST) or art.sha256(body)


def targets(entry: VersionEntry, folder: Path) -> dict[str, Path]:
    """Wheel file name -> where the registered spec names it, under ``folder`` (contained)."""
    if not entry.wheels:
        return {}
    from ..safe.paths import check_path_text

    try:
        doc = toml_loads(entry.spec, error=UsageError, file=entry.ref)
    except tomllib.TOMLDecodeError:
        raise UsageError(f"{entry.ref}: the registered environment file is not valid TOML") from None
    named = (doc.get("python") or {}).get("wheels") if isinstance(doc.get("python"), dict) else None
    by_name: dict[str, str] = {}
    for rel in named if isinstance(named, list) else []:
        if isinstance(rel, str):
            by_name[PurePosixPath(rel).name] = rel
    root = folder.resolve()
    out = {}
    for name in sorted(entry.wheels):
        rel = by_name.get(name)
        if rel is None:
            raise UsageError(
                f"{entry.ref}: the versions file records wheel {printable(name, 80)!r}, which its spec does not name"
            )
        check_path_text(rel, file=None, key=entry.ref, what="wheel")
        p = PurePosixPath(rel)
        target = (folder / rel).resolve()
        if p.is_absolute() or not target.is_relative_to(root) or target == root:
            raise UsageError(f"{entry.ref}: wheel {printable(rel, 80)!r} would be written outside {folder}; refused")
        out[name] = folder / rel
    return out


def download(entry: VersionEntry, staging: Path, *, insecure: bool = False) -> tuple[dict[str, Path], str | None]:
    """Each registered wheel, verified, into ``staging``: ({file name: staged file}, None), or
    ({}, why not) when the registry keeps no wheels for this version (an absent registry, an
    artifact that was never pushed). What the registry answers that does not match the versions
    file raises."""
    if not entry.wheels:
        return {}, None
    if not entry.registry:
        return {}, f"{entry.ref} was registered without --registry: its wheels were kept nowhere"
    client, repo, _ = _repository(entry.image, insecure)
    where = f"{client.host}/{repo}:{tag_for(entry.hash)}"
    got = client.get_manifest(repo, tag_for(entry.hash))
    if got is None:
        return {}, f"{client.host}/{repo} keeps no wheels for {entry.ref} (no {tag_for(entry.hash)[:19]}… artifact)"
    layers = _layers(got[1], where)
    staged: dict[str, Path] = {}
    for name in sorted(entry.wheels):
        want = f"sha256:{entry.wheels[name]}"
        layer = layers.get(name)
        if layer is None:
            raise RegistryError(f"{where} has no wheel {printable(name, 80)}")
        if layer["digest"] != want:
            raise BlobIntegrityError(
                f"wheel {printable(name, 80)} in {where} is {layer['digest'][:19]}, "
                f"the versions file records {want[:19]}; refused"
            )
        fd, tmp = tempfile.mkstemp(prefix=".ml-env-wheel-", dir=staging)
        n, h = 0, hashlib.sha256()
        with os.fdopen(fd, "wb") as f:
            for chunk in client.blob_chunks(repo, want):  # hashed as it passes; a mismatch raises
                n += len(chunk)
                if n > layer["size"]:
                    raise BlobIntegrityError(f"wheel {printable(name, 80)} from {where} is longer than its descriptor")
                h.update(chunk)
                f.write(chunk)
        if "sha256:" + h.hexdigest() != want:  # blob_chunks checked it; the versions file is what decides
            raise BlobIntegrityError(f"wheel {printable(name, 80)} from {where} does not match the versions file")
        staged[name] = Path(tmp)
    return staged, None


def _layers(body: bytes, where: str) -> dict[str, dict[str, Any]]:
    """The artifact's wheel layers by title, or RegistryError when it is not that artifact."""
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):
        doc = None
    layers = doc.get("layers") if isinstance(doc, dict) else None
    if not isinstance(doc, dict) or doc.get("artifactType") != ARTIFACT_TYPE or not isinstance(layers, list):
        raise RegistryError(f"{where} is not an ml-env wheels artifact")
    out: dict[str, dict[str, Any]] = {}
    for layer in layers:
        ann = layer.get("annotations") if isinstance(layer, dict) else None
        title = ann.get(TITLE) if isinstance(ann, dict) else None
        digest, size = (layer.get("digest"), layer.get("size")) if isinstance(layer, dict) else (None, None)
        if (
            not isinstance(title, str)
            or not isinstance(digest, str)
            or isinstance(size, bool)
            or not isinstance(size, int)
            or not 0 <= size <= MAX_WHEEL
            or title in out
        ):
            raise RegistryError(f"{where} is not an ml-env wheels artifact (a layer without a title, digest or size)")
        out[title] = {"digest": digest, "size": size}
    return out
