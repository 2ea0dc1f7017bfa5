"""OCI artifacts: the one way ml-env writes and reads the things it keeps in a registry beside
its images (the release ledger, model versions, a version's private wheels, smoke-test records).

An artifact is an OCI image manifest with an ``artifactType``, the empty config and its layers;
it may name a ``subject`` (OCI 1.1 referrers). Manifests are canonical JSON (sorted keys, no
spaces), so the same artifact always has the same digest. What a registry answers is untrusted:
``single_layer`` checks the one-layer shape the ledger and model artifacts have, and bounds the
size before anything is read.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .client import RegistryClient

__all__ = [
    "OCI_MANIFEST",
    "OCI_INDEX",
    "OCI_CONFIG",
    "EMPTY_TYPE",
    "EMPTY",
    "EMPTY_DIGEST",
    "LAYER_TAR",
    "sha256",
    "canonical",
    "put_blob",
    "file_chunks",
    "manifest",
    "put_empty_config",
    "single_layer",
]

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
EMPTY_TYPE = "application/vnd.oci.empty.v1+json"
EMPTY = b"{}"
EMPTY_DIGEST = "sha256:" + hashlib.sha256(EMPTY).hexdigest()
LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def canonical(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()


def put_blob(client: RegistryClient, repo: str, data: bytes) -> str:
    """A small blob (a config, a record), uploaded unless the repository has it: its digest."""
    d = sha256(data)
    if not client.blob_exists(repo, d):
        client.upload_stream(repo, d, iter([data]), len(data))
    return d


def file_chunks(path: Path, size: int = 1 << 20) -> Iterator[bytes]:
    """A file read in fixed-size pieces, for a streamed blob upload."""
    with open(path, "rb") as f:
        while chunk := f.read(size):
            yield chunk


def put_empty_config(client: RegistryClient, repo: str) -> None:
    put_blob(client, repo, EMPTY)


def manifest(
    artifact_type: str,
    layers: Iterable[dict[str, Any]],
    *,
    annotations: dict[str, str] | None = None,
    subject: dict[str, Any] | None = None,
) -> bytes:
    """An artifact manifest (the empty config), canonical JSON."""
    doc: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": artifact_type,
        "config": {"mediaType": EMPTY_TYPE, "digest": EMPTY_DIGEST, "size": len(EMPTY), "data": "e30="},
        "layers": list(layers),
    }
    if annotations is not None:
        doc["annotations"] = annotations
    if subject is not None:
        doc["subject"] = subject
    return canonical(doc)


def single_layer(
    body: bytes, layer_type: str, max_size: int, *, artifact_type: str | None = None
) -> dict[str, Any] | None:
    """The parsed manifest when it is an artifact with exactly one layer of ``layer_type`` (and
    ``artifact_type``, when given) whose digest is a sha256 and whose size is at most ``max_size``;
    None for anything else."""
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):
        return None
    if not isinstance(doc, dict) or (artifact_type is not None and doc.get("artifactType") != artifact_type):
        return None
    layers = doc.get("layers")
    if not isinstance(layers, list) or len(layers) != 1 or not isinstance(layers[0], dict):
        return None
    layer = layers[0]
    digest, size = layer.get("digest"), layer.get("size")
    if layer.get("mediaType") != layer_type or not (isinstance(digest, str) and digest.startswith("sha256:")):
        return None
    if len(digest) != 71 or not all(c in "0123456789abcdef" for c in digest[7:]):
        return None
    if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= max_size:
        return None
    return doc
