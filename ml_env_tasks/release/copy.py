"""Copying an image registry to registry: manifests children first, blobs a few at a time.

Blobs the destination has are skipped, blobs inside one registry are mounted across
repositories, others are streamed (no whole layer in memory) and hashed as they pass; a
copy cut off or corrupted is tried again, a bounded number of times. Manifests are validated
before they are walked and put by digest once every blob they need is there.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

from ..errors import BlobIntegrityError, RegistryError, RegistryTransient, RegistryUnreachable
from ..registry import RegistryClient
from ..safe.digests import counted, is_digest

__all__ = ["Progress", "Tree", "Copied", "collect", "copy_blobs", "copy_referrers", "validate_manifest", "INDEX_TYPES"]

INDEX_TYPES = ("application/vnd.oci.image.index.v1+json", "application/vnd.docker.distribution.manifest.list.v2+json")
DIGEST_TAG_SUFFIXES = (".sig", ".att", ".sbom", "")  # "": the OCI 1.1 referrers fallback index
BLOB_ATTEMPTS = 3


@dataclass(frozen=True)
class Progress:
    """How far a copy is: bytes and blobs done of those that have to move."""

    bytes_done: int
    bytes_total: int
    blobs_done: int
    blobs_total: int


@dataclass
class Tree:
    """What one promotion has to move: manifests children first, and the blobs they name."""

    manifests: list[tuple[str, bytes, str]] = field(default_factory=list)  # (digest, body, media type)
    blobs: dict[str, int] = field(default_factory=dict)  # digest -> size


class Copied(Protocol):
    """What a copy counts (a promotion's result has these)."""

    copied_blobs: int
    mounted_blobs: int
    skipped_blobs: int
    copied_bytes: int
    referrers: list[str]


def validate_manifest(body: bytes, what: str) -> dict[str, Any]:
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):
        raise RegistryError(f"{what} is not valid JSON (not a manifest)") from None
    ok = isinstance(doc, dict)
    if ok and ("manifests" in doc or doc.get("mediaType") in INDEX_TYPES):
        ms = doc.get("manifests")
        ok = isinstance(ms, list) and all(isinstance(m, dict) and is_digest(m.get("digest")) for m in ms)
    elif ok:
        cfg, layers = doc.get("config"), doc.get("layers", [])
        ok = (
            isinstance(cfg, dict)
            and is_digest(cfg.get("digest"))
            and isinstance(layers, list)
            and all(isinstance(x, dict) and is_digest(x.get("digest")) for x in layers)
        )
    if not ok:
        raise RegistryError(f"{what} is not an OCI/Docker image manifest or index")
    return cast(dict[str, Any], doc)


def collect(sc: RegistryClient, repo: str, digest: str, body: bytes, media_type: str, tree: Tree) -> None:
    """Walk a manifest: children first, then the manifest itself; blobs gathered once."""
    if any(d == digest for d, _, _ in tree.manifests):
        return
    doc = validate_manifest(body, f"{sc.host}/{repo}@{digest[:19]}")
    mt = media_type or doc.get("mediaType", "")
    if "manifests" in doc:
        for child in doc["manifests"]:
            got = sc.get_manifest(repo, child["digest"])
            if got is None:
                raise RegistryError(
                    f"the index {digest[:19]} names {child['digest'][:19]}, which the source does not have"
                )
            collect(sc, repo, child["digest"], got[1], child.get("mediaType") or got[0].media_type, tree)
    else:
        for b in [doc["config"], *(doc.get("layers") or [])]:
            size = b.get("size")
            tree.blobs.setdefault(b["digest"], size if isinstance(size, int) and size >= 0 else 0)
    tree.manifests.append((digest, body, mt))


def copy_blobs(
    sc: RegistryClient,
    dc: RegistryClient,
    src_repo: str,
    dst_repo: str,
    blobs: dict[str, int],
    jobs: int,
    result: Copied,
    progress: Callable[[Progress], None] | None,
) -> None:
    """Copy what the destination lacks, ``jobs`` blobs at a time."""
    todo = [(d, s) for d, s in blobs.items()]
    lock = threading.Lock()
    total = sum(s for _, s in todo)
    done = {"bytes": 0, "blobs": 0}

    def tick(n: int, blob_done: bool) -> None:
        with lock:
            done["bytes"] += n
            done["blobs"] += blob_done
            if progress:
                progress(Progress(done["bytes"], total, done["blobs"], len(todo)))

    def one(item: tuple[str, int]) -> None:
        d, size = item
        if dc.blob_exists(dst_repo, d):
            with lock:
                result.skipped_blobs += 1
            tick(size, True)
            return
        if sc.host == dc.host and dc.mount_blob(dst_repo, d, src_repo):
            with lock:
                result.mounted_blobs += 1
            tick(size, True)
            return
        _stream_blob(sc, dc, src_repo, dst_repo, d, size, lambda n: tick(n, False))
        with lock:
            result.copied_blobs += 1
            result.copied_bytes += size
        tick(0, True)

    if len(todo) <= 1 or jobs == 1:
        for item in todo:
            one(item)
        return
    from concurrent.futures import ThreadPoolExecutor  # logging and more: only when there is a copy to do

    with ThreadPoolExecutor(max_workers=min(jobs, len(todo)), thread_name_prefix="ml-env-promote") as pool:
        for f in [pool.submit(one, item) for item in todo]:
            f.result()


def _stream_blob(
    sc: RegistryClient,
    dc: RegistryClient,
    src_repo: str,
    dst_repo: str,
    digest: str,
    size: int,
    moved: Callable[[int], None],
) -> None:
    for attempt in range(1, BLOB_ATTEMPTS + 1):
        sent = [0]
        try:
            stream = counted(sc.blob_chunks(src_repo, digest), sent, moved)
            dc.upload_stream(dst_repo, digest, stream, size=size if size > 0 else None)
            break
        except (RegistryUnreachable, BlobIntegrityError, RegistryTransient) as e:
            moved(-sent[0])
            if attempt == BLOB_ATTEMPTS:
                raise RegistryError(f"copying blob {digest[:19]} failed {attempt} times: {e.message}") from None
            time.sleep(0.2 * attempt)
    if not dc.blob_exists(dst_repo, digest):
        raise RegistryError(f"blob {digest[:19]} is not in {dc.host}/{dst_repo} after its upload")


def copy_referrers(
    sc: RegistryClient,
    dc: RegistryClient,
    src_repo: str,
    dst_repo: str,
    digest: str,
    jobs: int,
    result: Copied,
    say: Callable[[str], None],
    *,
    suffixes: tuple[str, ...] = DIGEST_TAG_SUFFIXES,
    referrers: bool = True,
) -> None:
    """The digest's signatures, attestations and records, copied beside it (``suffixes``: which
    digest tags to look for; ``referrers``: ask the referrers API too). A tag the destination
    already has the same is left; one it has different (signed there too, records attached
    there) is merged, never replaced: cosign's ``.sig``/``.att`` by their layers (signatures),
    the referrers fallback index by its entries."""
    algo, hexd = digest.split(":", 1)
    refs: list[tuple[str | None, str, bytes, str]] = []  # (tag, digest, body, media type)
    tag: str | None
    for suffix in suffixes:
        tag = f"{algo}-{hexd}{suffix}"
        got = sc.get_manifest(src_repo, tag)
        if got is not None:
            refs.append((tag, got[0].digest, got[1], got[0].media_type))
    for ref in (sc.referrers(src_repo, digest) if referrers else None) or []:
        got = sc.get_manifest(src_repo, ref["digest"])
        if got is not None:
            refs.append((None, ref["digest"], got[1], got[0].media_type))
    for tag, d, body, mt in refs:
        have = dc.get_manifest(dst_repo, tag) if tag else None
        if have is not None and have[0].digest == d or tag is None and dc.head_manifest(dst_repo, d) is not None:
            continue  # already there, the same
        tree = Tree()
        collect(sc, src_repo, d, body, mt, tree)
        copy_blobs(sc, dc, src_repo, dst_repo, tree.blobs, jobs, result, None)
        for md, mb, mmt in tree.manifests:
            if dc.head_manifest(dst_repo, md) is None:
                dc.put_manifest(dst_repo, md, mb, mmt)
        if tag:
            if have is not None:
                body, mt = _merged(dc, dst_repo, have[1], body, mt)
            dc.put_manifest(dst_repo, tag, body, mt)
        result.referrers.append(tag or d)
        say(f"copied {tag or d[:19]}" + (" (merged with the destination's)" if tag and have is not None else ""))


def _merged(dc: RegistryClient, repo: str, have: bytes, new: bytes, media_type: str) -> tuple[bytes, str]:
    """The destination's signature manifest or referrers index with the source's entries added."""
    from ..registry import artifacts as art

    try:
        old_doc, new_doc = json.loads(have), json.loads(new)
    except ValueError:
        return new, media_type  # the destination's is not JSON: it is replaced
    if not (isinstance(old_doc, dict) and isinstance(new_doc, dict)):
        return new, media_type
    key = "manifests" if media_type in INDEX_TYPES else "layers"
    old_items, new_items = old_doc.get(key), new_doc.get(key)
    if not (isinstance(old_items, list) and isinstance(new_items, list)):
        return new, media_type
    seen = {m.get("digest") for m in old_items if isinstance(m, dict)}
    items = [*old_items, *(m for m in new_items if isinstance(m, dict) and m.get("digest") not in seen)]
    if len(items) == len(old_items):
        return have, media_type
    doc = {**old_doc, key: items}
    if key == "layers":  # cosign's signature image: its config lists the layers as diff ids
        config = {
            "architecture": "", "created": "0001-01-01T00:00:00Z", "os": "", "config": {},
            "history": [{"created": "0001-01-01T00:00:00Z"} for _ in items],
            "rootfs": {"type": "layers", "diff_ids": [m.get("digest") for m in items]},
        }  # fmt: skip
        data = art.canonical(config)
        doc["config"] = {**old_doc.get("config", {}), "digest": art.put_blob(dc, repo, data), "size": len(data)}
    return art.canonical(doc), media_type
