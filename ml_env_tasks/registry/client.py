"""The OCI distribution operations a promotion and a build need, on top of the transport.

Answers are three-valued on purpose: a manifest that exists, one that does not (404), or an
error. An error is never taken for "exists" or "missing": it raises, after bounded retries for
what is transient. A manifest fetched by digest must hash to it; a blob streamed for a copy is
hashed as it passes and refused if it does not match.
"""

from __future__ import annotations

import hashlib
import http.client
import re
from collections.abc import Iterable, Iterator
from typing import Any
from urllib.parse import urljoin

from ..errors import BlobIntegrityError, RegistryError, RegistryUnreachable
from ..safe.digests import is_digest
from ..safe.grammar import digits, printable
from ..safe.untrusted import check_depth, json_loads
from .constants import CHUNK, MANIFEST_TYPES, MAX_MANIFEST
from .reference import ManifestInfo
from .transport import Response, Transport, short

__all__ = ["RegistryClient"]


class RegistryClient(Transport):
    """One registry host: manifests and blobs, read and written."""

    # manifests
    def _manifest(self, method: str, repository: str, reference: str) -> Response:
        return self.request(
            method,
            f"/v2/{repository}/manifests/{reference}",
            scope=f"repository:{repository}:pull",
            ok=(200, 404),
            headers={"Accept": ", ".join(MANIFEST_TYPES)},
            limit=MAX_MANIFEST,
        )

    def head_manifest(self, repository: str, reference: str) -> ManifestInfo | None:
        """The manifest's digest if it exists (200 with a manifest's media type and digest), None
        if the registry says it does not (404); anything else raises, never "exists"."""
        r = self._manifest("HEAD", repository, reference)
        if r.status == 404:
            return None
        self._expect_manifest(r, "HEAD", repository, reference)
        digest = r.header("Docker-Content-Digest")
        valid = re.fullmatch(r"sha256:[0-9a-f]{64}", digest)
        if valid and reference.startswith("sha256:") and digest != reference:
            raise RegistryError(f"registry {self.host} says {repository}@{reference[:19]} is {digest[:19]}")
        if not valid or _media_type(r) not in MANIFEST_TYPES:
            # some registries omit them on HEAD: read the manifest to know its digest and type
            got = self.get_manifest(repository, reference)
            return got[0] if got else None
        length = r.header("Content-Length", "0")
        return ManifestInfo(digest, _media_type(r), int(length) if digits(length) and len(length) < 16 else 0)

    def get_manifest(self, repository: str, reference: str) -> tuple[ManifestInfo, bytes] | None:
        """The manifest and its bytes if it exists (200 with a manifest's media type, hashing to
        the digest asked for), None for 404; anything else raises."""
        r = self._manifest("GET", repository, reference)
        if r.status == 404:
            return None
        self._expect_manifest(r, "GET", repository, reference)
        body = r.body
        # every manifest is JSON that callers parse: its nesting is bounded here, once
        check_depth(body, toml=False, error=RegistryError, file=f"{self.host}/{repository}:{printable(reference, 80)}")
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        if reference.startswith("sha256:") and digest != reference:
            raise RegistryError(
                f"registry {self.host} served {repository}@{reference[:19]} with content whose digest is {digest[:19]}"
            )
        media_type = _media_type(r)
        if media_type not in MANIFEST_TYPES:
            # a registry may answer a generic JSON type: the manifest's own mediaType must name one
            doc = _json_object(body, f"{self.host}/{repository}:{printable(reference, 80)}")
            media_type = str(doc.get("mediaType") or "")
            if media_type not in MANIFEST_TYPES:
                raise RegistryError(
                    f"registry {self.host} answered {repository}:{printable(reference, 80)} with something "
                    "that is not an image manifest or index (media type)"
                )
        return ManifestInfo(digest, media_type, len(body)), body

    def _expect_manifest(self, r: Response, method: str, repository: str, reference: str) -> None:
        """Only 200 is an answer about a manifest: a 400 (or any other status) is an error, whatever
        its body (it is never hashed as if it were the manifest)."""
        if r.status != 200:
            raise RegistryError(
                f"registry {self.host} answered {r.status} to {method} of manifest "
                f"{repository}:{printable(reference, 80)} ({self.error_text(r)})",
                hint="an error from the registry is never taken for 'exists' or 'missing'",
            )

    def get_blob(self, repository: str, digest: str, limit: int = MAX_MANIFEST) -> bytes:
        """A small blob (an image config), read whole and checked against its digest."""
        r = self.request(
            "GET", f"/v2/{repository}/blobs/{digest}", scope=f"repository:{repository}:pull", ok=(200, 404), limit=limit
        )
        if r.status == 404:
            raise RegistryError(f"blob {digest[:19]} not found in {self.host}/{repository}")
        if r.status != 200:
            raise RegistryError(
                f"registry {self.host} answered {r.status} to blob {digest[:19]} ({self.error_text(r)})"
            )
        if "sha256:" + hashlib.sha256(r.body).hexdigest() != digest:
            raise BlobIntegrityError(f"blob {digest[:19]} from {self.host}/{repository} does not match its digest")
        return r.body

    def config_digest(self, repository: str, reference: str) -> str | None:
        """The digest of a manifest's image config, the image ID (for an index: of its first
        non-attestation manifest); None when there is no such image."""
        got = self.get_manifest(repository, reference)
        if got is None:
            return None
        doc = _json_object(got[1], f"{self.host}/{repository}@{got[0].digest[:19]}")
        if "manifests" in doc:
            for m in doc.get("manifests") or []:
                plat = m.get("platform") or {} if isinstance(m, dict) else {}
                if isinstance(m, dict) and plat.get("os") != "unknown" and is_digest(m.get("digest")):
                    return self.config_digest(repository, m["digest"])
            return None
        cfg = doc.get("config")
        if not isinstance(cfg, dict) or not is_digest(cfg.get("digest")):
            raise RegistryError(f"{self.host}/{repository}@{got[0].digest[:19]} is not an image manifest (no config)")
        return str(cfg["digest"])

    def image_config(self, repository: str, reference: str) -> dict[str, Any] | None:
        """The image config of a manifest (for an index: its first non-attestation manifest)."""
        digest = self.config_digest(repository, reference)
        if digest is None:
            return None
        return _json_object(self.get_blob(repository, digest), f"config {digest[:19]}")

    # --- the write side, for promotion -----------------------------------------------------

    def blob_exists(self, repository: str, digest: str) -> bool:
        r = self.request(
            "HEAD", f"/v2/{repository}/blobs/{digest}", scope=f"repository:{repository}:pull", ok=(200, 404)
        )
        if r.status not in (200, 404):
            raise RegistryError(
                f"registry {self.host} answered {r.status} to HEAD of blob {digest[:19]} in {repository}"
            )
        return r.status == 200

    def mount_blob(self, repository: str, digest: str, from_repository: str) -> bool:
        """Cross-repository mount inside one registry: True when the registry linked the blob."""
        r = self.request(
            "POST",
            f"/v2/{repository}/blobs/uploads/",
            scope=_push_scope(repository, from_repository),
            ok=(201, 202),
            params={"mount": digest, "from": from_repository},
            body=b"",
        )
        if r.status == 201:
            return True
        if r.status == 202 and r.header("Location"):
            # not mounted: the registry opened an upload instead; cancel it, the caller streams the blob
            self.request("DELETE", self._location(r), scope=_push_scope(repository), ok=(204, 404, 405, 202))
            return False
        raise RegistryError(f"registry {self.host} answered {r.status} to a blob mount in {repository}")

    def _location(self, r: Response) -> str:
        return urljoin(self.base + "/", r.header("Location"))

    def upload_stream(self, repository: str, digest: str, chunks: Iterable[bytes], size: int | None = None) -> None:
        """Upload a blob from an iterator of byte chunks: no whole blob is held in memory. With its
        ``size`` known, one PUT carries the bytes (a monolithic upload, the distribution spec's
        POST-then-PUT); without it, a chunked PATCH then a PUT. The registry checks the bytes
        against ``digest`` when the upload completes; a mismatch (a truncated or corrupted stream)
        is a BlobIntegrityError."""
        r = self.request("POST", f"/v2/{repository}/blobs/uploads/", scope=_push_scope(repository), ok=(202,), body=b"")
        if r.status != 202 or not r.header("Location"):
            raise RegistryError(f"registry {self.host} did not open an upload in {repository} ({r.status})")
        location = self._location(r)
        body: bytes | Iterable[bytes] = b""
        headers = {"Content-Type": "application/octet-stream"}
        if size is None:
            r = self.request("PATCH", location, scope=_push_scope(repository), ok=(202, 204), body=chunks,
                             headers=headers, retry=False)  # fmt: skip
            if r.status not in (202, 204):
                raise RegistryError(f"registry {self.host} answered {r.status} while receiving blob {digest[:19]}")
            location = self._location(r) if r.header("Location") else location
        else:
            body = _exactly(chunks, size, digest)
            headers["Content-Length"] = str(size)
        sep = "&" if "?" in location else "?"
        r = self.request(
            "PUT", f"{location}{sep}digest={digest}", scope=_push_scope(repository), ok=(201, 400), body=body,
            headers=headers, retry=False,
        )  # fmt: skip
        if r.status == 400 and "DIGEST_INVALID" in r.text:
            raise BlobIntegrityError(
                f"blob {digest[:19]} arrived with other content (truncated or corrupted in transit)"
            )
        if r.status != 201:
            raise RegistryError(f"registry {self.host} refused blob {digest[:19]} ({self.error_text(r)})")

    def blob_chunks(self, repository: str, digest: str, size: int = CHUNK) -> Iterator[bytes]:
        """Stream a blob, hashing it as it passes: the last chunk raises BlobIntegrityError when
        the bytes do not match ``digest`` (a corrupted or hostile source), before anything uses them."""
        r = self.request(
            "GET", f"/v2/{repository}/blobs/{digest}", scope=f"repository:{repository}:pull", ok=(200,), stream=True
        )
        if r.status != 200:
            raise RegistryError(f"blob {digest[:19]} not readable from {self.host}/{repository} ({r.status})")
        h = hashlib.sha256()
        try:
            for chunk in r.iter_chunks(size):
                h.update(chunk)
                yield chunk
        except (OSError, http.client.HTTPException) as e:
            self._local.__dict__.get("pool", {}).clear()
            raise RegistryUnreachable(
                f"the connection to {self.host} broke while reading blob {digest[:19]}: {short(e)}"
            ) from None
        if "sha256:" + h.hexdigest() != digest:
            raise BlobIntegrityError(f"blob {digest[:19]} from {self.host}/{repository} does not match its digest")

    def put_manifest(self, repository: str, reference: str, body: bytes, media_type: str) -> str:
        r = self.request(
            "PUT",
            f"/v2/{repository}/manifests/{reference}",
            scope=_push_scope(repository),
            ok=(201,),
            body=body,
            headers={"Content-Type": media_type},
        )
        if r.status != 201:
            raise RegistryError(
                f"registry {self.host} refused manifest {reference[:40]} in {repository} ({self.error_text(r)})"
            )
        return r.header("Docker-Content-Digest")

    def delete_manifest(self, repository: str, digest: str) -> None:
        self.request(
            "DELETE",
            f"/v2/{repository}/manifests/{digest}",
            scope=f"repository:{repository}:delete,pull,push",
            ok=(202, 404),
        )

    def tags(self, repository: str) -> list[str]:
        r = self.request("GET", f"/v2/{repository}/tags/list", scope=f"repository:{repository}:pull", ok=(200, 404))
        if r.status == 404:
            return []
        if r.status != 200:
            raise RegistryError(f"registry {self.host} answered {r.status} to the tag list of {repository}")
        try:
            tags = r.json(f"the tag list of {self.host}/{repository}").get("tags") or []
        except (ValueError, AttributeError):
            raise RegistryError(f"registry {self.host} sent a tag list that is not JSON") from None
        return [t for t in tags if isinstance(t, str)]

    def referrers(self, repository: str, digest: str) -> list[dict[str, Any]] | None:
        """OCI referrers of a manifest, or None when the registry has no referrers API."""
        r = self.request(
            "GET",
            f"/v2/{repository}/referrers/{digest}",
            scope=f"repository:{repository}:pull",
            ok=(200, 404, 400, 405),
        )
        if r.status != 200 or "json" not in r.header("Content-Type"):
            return None
        try:
            found = r.json(f"the referrers of {self.host}/{repository}@{digest[:19]}").get("manifests") or []
        except (ValueError, AttributeError):
            return None
        return [m for m in found if isinstance(m, dict) and is_digest(m.get("digest"))]


def _json_object(data: bytes, what: str) -> dict[str, Any]:
    try:
        doc = json_loads(data, error=RegistryError, file=what)
    except ValueError:
        raise RegistryError(f"{what} is not valid JSON") from None
    if not isinstance(doc, dict):
        raise RegistryError(f"{what} is not a JSON object")
    return doc


def _media_type(r: Response) -> str:
    return r.header("Content-Type").split(";", 1)[0].strip()


def _push_scope(repository: str, extra_pull: str | None = None) -> str:
    scope = f"repository:{repository}:pull,push"
    if extra_pull and extra_pull != repository:
        scope += f" repository:{extra_pull}:pull"
    return scope


def _exactly(chunks: Iterable[bytes], size: int, digest: str) -> Iterator[bytes]:
    """The stream, checked to be ``size`` bytes long (the Content-Length already sent): a source
    that sends more or fewer bytes is an integrity error before the request is complete."""
    n = 0
    for chunk in chunks:
        n += len(chunk)
        if n > size:
            raise BlobIntegrityError(f"blob {digest[:19]} is longer than its manifest says ({size} bytes)")
        yield chunk
    if n != size:
        raise BlobIntegrityError(f"blob {digest[:19]} is {n} bytes, its manifest says {size}")
