"""OCI distribution reads: manifest HEAD/GET, blobs, with auth from the docker config.

Answers are three-valued on purpose: a manifest that exists, one that does not (404), or an
error. An error is never taken for "exists" or "missing": it raises, after bounded retries for
what is transient (connection errors, timeouts, 5xx, 429).

Auth: ``auths`` entries (``auth``, ``username``/``password``, ``identitytoken``), ``credHelpers``
and ``credsStore`` of ``$DOCKER_CONFIG/config.json`` (default ``~/.docker/config.json``), or
``ML_ENV_REGISTRY_USERNAME``/``ML_ENV_REGISTRY_PASSWORD``. Basic and Bearer (token) challenges.
Plain HTTP only for loopback registries unless ``insecure``.
"""

from __future__ import annotations

import base64
import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from .errors import RegistryAuthError, RegistryError, RegistryTransient, RegistryUnreachable, SpecError
from .refs import IMAGE_RE

__all__ = ["Reference", "RegistryClient", "ManifestInfo", "parse_ref", "MANIFEST_TYPES"]

MANIFEST_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
)
DOCKER_HUB = "registry-1.docker.io"


@dataclass(frozen=True)
class Reference:
    host: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @property
    def reference(self) -> str:
        """What goes after /manifests/: the digest when known, else the tag."""
        return self.digest or self.tag or "latest"

    def __str__(self) -> str:
        s = f"{self.host}/{self.repository}"
        if self.tag:
            s += f":{self.tag}"
        if self.digest:
            s += f"@{self.digest}"
        return s


def parse_ref(ref: str) -> Reference:
    m = IMAGE_RE.match(ref)
    if not m:
        raise SpecError(f"{ref!r} is not a valid image reference")
    host, path, tag, digest = m.group("host"), m.group("path"), m.group("tag"), m.group("digest")
    if host is None or ("." not in host and ":" not in host and host != "localhost"):
        # docker's rule: the first component is a registry only if it looks like a host
        if host is not None:
            path = f"{host}/{path}"
        host = DOCKER_HUB
        if "/" not in path:
            path = f"library/{path}"
    if tag is None and digest is None:
        tag = "latest"
    return Reference(host, path, tag, digest)


def is_loopback(host: str) -> bool:
    name = host.rsplit(":", 1)[0] if not host.startswith("[") else host.split("]")[0] + "]"
    return name in ("localhost", "[::1]") or name.startswith("127.")


@dataclass(frozen=True)
class ManifestInfo:
    digest: str
    media_type: str
    size: int


# --- credentials --------------------------------------------------------------------------


def docker_config_path() -> Path:
    return Path(os.environ.get("DOCKER_CONFIG", Path.home() / ".docker")) / "config.json"


def credentials_for(host: str) -> tuple[str, str] | None:
    """(username, secret) for a registry host, or None for anonymous."""
    keys = [host]
    if host == DOCKER_HUB:
        keys += ["https://index.docker.io/v1/", "index.docker.io", "docker.io"]
    cfg: dict[str, Any] = {}
    path = docker_config_path()
    if path.exists():
        try:
            cfg = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise RegistryError(f"cannot read docker config {path}: {e}") from None
    helpers = cfg.get("credHelpers") or {}
    for k in keys:
        if k in helpers:
            return _helper(helpers[k], k)
    auths = cfg.get("auths") or {}
    for k in keys + [f"https://{host}", f"http://{host}"]:
        entry = auths.get(k)
        if not entry:
            continue
        if entry.get("identitytoken"):
            return "<token>", entry["identitytoken"]
        if entry.get("auth"):
            user, _, pw = base64.b64decode(entry["auth"]).decode().partition(":")
            return user, pw
        if entry.get("username"):
            return entry["username"], entry.get("password", "")
    if cfg.get("credsStore"):
        found = _helper(cfg["credsStore"], host, missing_ok=True)
        if found:
            return found
    user, pw = os.environ.get("ML_ENV_REGISTRY_USERNAME"), os.environ.get("ML_ENV_REGISTRY_PASSWORD")
    if user and pw:
        return user, pw
    return None


def _helper(name: str, host: str, missing_ok: bool = False) -> tuple[str, str] | None:
    from .engine import credential_helper_get

    return credential_helper_get(name, host, missing_ok=missing_ok)


# --- client -------------------------------------------------------------------------------


class BlobIntegrityError(RegistryError):
    """A streamed blob's bytes did not hash to its digest."""


def _push_scope(repository: str, extra_pull: str | None = None) -> str:
    scope = f"repository:{repository}:pull,push"
    if extra_pull and extra_pull != repository:
        scope += f" repository:{extra_pull}:pull"
    return scope


def _absolute(base: str, location: str) -> str:
    return location if location.startswith("http") else base + location


class RegistryClient:
    """One registry host. Keeps tokens per scope for the life of the client."""

    def __init__(
        self,
        host: str,
        *,
        insecure: bool = False,
        credentials: tuple[str, str] | None | bool = True,
        retries: int = 4,
        backoff: float = 0.25,
        timeout: float = 30.0,
    ) -> None:
        self.host = host
        self.scheme = "http" if (insecure or is_loopback(host)) else "https"
        self.base = f"{self.scheme}://{host}"
        self._creds = credentials_for(host) if credentials is True else (credentials or None)
        self.retries = retries
        self.backoff = backoff
        self.timeout = timeout
        self.session = requests.Session()
        self.session.headers["User-Agent"] = "ml-env-tasks"
        self._auth: dict[str, str] = {}  # scope -> Authorization header value

    # low level
    def request(
        self, method: str, path: str, *, scope: str, ok: tuple[int, ...] = (200,), retry: bool = True, **kw: Any
    ) -> requests.Response:
        """One HTTP request with auth and, unless ``retry`` is False (a streamed body cannot be
        sent twice), bounded retries of transient failures."""
        url = path if path.startswith("http") else self.base + path
        headers = dict(kw.pop("headers", {}) or {})
        retries = self.retries if retry else 0
        attempt = 0
        authed_once = False
        while True:
            if scope in self._auth:
                headers["Authorization"] = self._auth[scope]
            try:
                resp = self.session.request(
                    method, url, headers=headers, timeout=self.timeout, allow_redirects=True, **kw
                )
            except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError) as e:
                # a reset, a timeout, or a body cut off halfway: transient
                attempt += 1
                if attempt > retries:
                    raise RegistryUnreachable(
                        f"registry {self.host} is unreachable after {attempt} attempts: {_short(e)}",
                        hint="is it running, and is the address right?",
                    ) from None
                self._sleep(attempt)
                continue
            if resp.status_code == 401 and not authed_once:
                authed_once = True
                self._authenticate(resp, scope)
                continue
            if resp.status_code == 401 or resp.status_code == 403:
                who = f"as {self._creds[0]!r}" if self._creds and self._creds[0] != "<token>" else "anonymously"
                raise RegistryAuthError(
                    f"registry {self.host} refused access {who} ({resp.status_code}) to {scope}",
                    hint="check `docker login` for this registry or ML_ENV_REGISTRY_USERNAME/PASSWORD",
                )
            if resp.status_code in ok:
                return resp
            if resp.status_code >= 500 or resp.status_code == 429:
                attempt += 1
                if attempt > retries:
                    raise RegistryTransient(
                        f"registry {self.host} answered {resp.status_code} to {method} {path} after {attempt} attempts"
                    )
                self._sleep(attempt, resp.headers.get("Retry-After"))
                continue
            return resp

    def _sleep(self, attempt: int, retry_after: str | None = None) -> None:
        delay = self.backoff * (2 ** (attempt - 1))
        if retry_after and retry_after.isdigit():
            delay = max(delay, min(float(retry_after), 10.0))
        time.sleep(min(delay, 5.0))

    def _authenticate(self, resp: requests.Response, scope: str) -> None:
        challenge = resp.headers.get("WWW-Authenticate", "")
        scheme, _, params_s = challenge.partition(" ")
        params = dict(re.findall(r'(\w+)="([^"]*)"', params_s))
        if scheme.lower() == "basic":
            if not self._creds:
                return  # the retry gets 401 again and raises a clear error
            token = base64.b64encode(f"{self._creds[0]}:{self._creds[1]}".encode()).decode()
            self._auth[scope] = f"Basic {token}"
        elif scheme.lower() == "bearer":
            realm = params.get("realm")
            if not realm:
                raise RegistryError(f"registry {self.host} sent a Bearer challenge without a realm")
            q = [("service", params.get("service", ""))] + [("scope", one) for one in scope.split()]
            auth = None
            if self._creds and self._creds[0] != "<token>":
                auth = (self._creds[0], self._creds[1])
            try:
                tr = self.session.get(realm, params=q, auth=auth, timeout=self.timeout)
            except requests.RequestException as e:
                raise RegistryUnreachable(f"token service of {self.host} is unreachable: {_short(e)}") from None
            if tr.status_code in (401, 403):
                raise RegistryAuthError(f"token service of {self.host} refused the credentials ({tr.status_code})")
            if tr.status_code != 200:
                raise RegistryError(f"token service of {self.host} answered {tr.status_code}")
            body = tr.json()
            token = body.get("token") or body.get("access_token")
            if not token:
                raise RegistryError(f"token service of {self.host} returned no token")
            self._auth[scope] = f"Bearer {token}"
        else:
            raise RegistryError(f"registry {self.host} asks for unsupported auth {scheme!r}")

    # manifests
    def _manifest(self, method: str, repository: str, reference: str) -> requests.Response:
        return self.request(
            method,
            f"/v2/{repository}/manifests/{reference}",
            scope=f"repository:{repository}:pull",
            ok=(200, 404),
            headers={"Accept": ", ".join(MANIFEST_TYPES)},
        )

    def head_manifest(self, repository: str, reference: str) -> ManifestInfo | None:
        """The manifest's digest if it exists, None if the registry says it does not; raises otherwise."""
        r = self._manifest("HEAD", repository, reference)
        if r.status_code == 404:
            return None
        digest = r.headers.get("Docker-Content-Digest")
        if not digest:
            # some registries omit it on HEAD: read the manifest to know its digest
            got = self.get_manifest(repository, reference)
            return got[0] if got else None
        return ManifestInfo(digest, r.headers.get("Content-Type", ""), int(r.headers.get("Content-Length") or 0))

    def get_manifest(self, repository: str, reference: str) -> tuple[ManifestInfo, bytes] | None:
        import hashlib

        r = self._manifest("GET", repository, reference)
        if r.status_code == 404:
            return None
        body = r.content
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        return ManifestInfo(digest, r.headers.get("Content-Type", ""), len(body)), body

    def get_blob(self, repository: str, digest: str) -> bytes:
        r = self.request(
            "GET", f"/v2/{repository}/blobs/{digest}", scope=f"repository:{repository}:pull", ok=(200, 404)
        )
        if r.status_code == 404:
            raise RegistryError(f"blob {digest} not found in {self.host}/{repository}")
        return r.content

    def image_config(self, repository: str, reference: str) -> dict[str, Any] | None:
        """The image config of a manifest (for an index: its first non-attestation manifest)."""
        got = self.get_manifest(repository, reference)
        if got is None:
            return None
        doc = json.loads(got[1])
        if "manifests" in doc:
            for m in doc["manifests"]:
                plat = m.get("platform") or {}
                if plat.get("os") != "unknown":
                    return self.image_config(repository, m["digest"])
            return None
        return json.loads(self.get_blob(repository, doc["config"]["digest"]))

    # --- the write side, for promotion -----------------------------------------------------

    def blob_exists(self, repository: str, digest: str) -> bool:
        r = self.request(
            "HEAD", f"/v2/{repository}/blobs/{digest}", scope=f"repository:{repository}:pull", ok=(200, 404)
        )
        return r.status_code == 200

    def mount_blob(self, repository: str, digest: str, from_repository: str) -> bool:
        """Cross-repository mount inside one registry: True when the registry linked the blob."""
        r = self.request(
            "POST",
            f"/v2/{repository}/blobs/uploads/",
            scope=_push_scope(repository, from_repository),
            ok=(201, 202),
            params={"mount": digest, "from": from_repository},
        )
        if r.status_code == 201:
            return True
        if r.status_code == 202 and r.headers.get("Location"):
            # not mounted: the registry opened an upload instead; cancel it, the caller streams the blob
            loc = _absolute(self.base, r.headers["Location"])
            self.request("DELETE", loc, scope=_push_scope(repository), ok=(204, 404, 405, 202))
            return False
        raise RegistryError(f"registry {self.host} answered {r.status_code} to a blob mount in {repository}")

    def upload_stream(self, repository: str, digest: str, chunks: Any) -> None:
        """Upload a blob from an iterator of byte chunks (PATCH streamed, PUT to finish): no whole
        blob is held in memory. The registry checks the bytes against ``digest`` when the upload
        is finished; a mismatch (a truncated or corrupted stream) is a BlobIntegrityError."""
        r = self.request("POST", f"/v2/{repository}/blobs/uploads/", scope=_push_scope(repository), ok=(202,))
        if r.status_code != 202 or not r.headers.get("Location"):
            raise RegistryError(f"registry {self.host} did not open an upload in {repository} ({r.status_code})")
        location = _absolute(self.base, r.headers["Location"])
        r = self.request(
            "PATCH",
            location,
            scope=_push_scope(repository),
            ok=(202, 204),
            data=chunks,
            headers={"Content-Type": "application/octet-stream"},
            retry=False,
        )
        if r.status_code not in (202, 204):
            raise RegistryError(f"registry {self.host} answered {r.status_code} while receiving blob {digest[:19]}")
        location = _absolute(self.base, r.headers.get("Location") or location)
        sep = "&" if "?" in location else "?"
        r = self.request(
            "PUT",
            f"{location}{sep}digest={digest}",
            scope=_push_scope(repository),
            ok=(201, 400),
            data=b"",
            retry=False,
        )
        if r.status_code == 400 and "DIGEST_INVALID" in r.text:
            raise BlobIntegrityError(
                f"blob {digest[:19]} arrived with other content (truncated or corrupted in transit)"
            )
        if r.status_code != 201:
            raise RegistryError(f"registry {self.host} refused blob {digest[:19]} ({r.status_code}): {r.text[:200]}")

    def blob_chunks(self, repository: str, digest: str, size: int = 4 << 20) -> Any:
        r = self.request(
            "GET", f"/v2/{repository}/blobs/{digest}", scope=f"repository:{repository}:pull", ok=(200,), stream=True
        )
        if r.status_code != 200:
            raise RegistryError(f"blob {digest} not readable from {self.host}/{repository} ({r.status_code})")
        try:
            yield from r.iter_content(size)
        except requests.RequestException as e:
            raise RegistryUnreachable(
                f"the connection to {self.host} broke while reading blob {digest[:19]}: {_short(e)}"
            ) from None
        finally:
            r.close()

    def put_manifest(self, repository: str, reference: str, body: bytes, media_type: str) -> str:
        r = self.request(
            "PUT",
            f"/v2/{repository}/manifests/{reference}",
            scope=_push_scope(repository),
            ok=(201,),
            data=body,
            headers={"Content-Type": media_type},
        )
        if r.status_code != 201:
            raise RegistryError(
                f"registry {self.host} refused manifest {reference} in {repository} ({r.status_code}): {r.text[:300]}"
            )
        return r.headers.get("Docker-Content-Digest", "")

    def referrers(self, repository: str, digest: str) -> list[dict[str, Any]] | None:
        """OCI referrers of a manifest, or None when the registry has no referrers API."""
        r = self.request(
            "GET",
            f"/v2/{repository}/referrers/{digest}",
            scope=f"repository:{repository}:pull",
            ok=(200, 404, 400, 405),
        )
        if r.status_code != 200 or "json" not in r.headers.get("Content-Type", ""):
            return None
        try:
            return list(r.json().get("manifests") or [])
        except ValueError:
            return None


def _short(e: Exception) -> str:
    s = str(e)
    m = re.search(r"\[Errno -?\d+\] [^'\")]+|Connection refused|timed out|Name or service not known", s)
    return m.group(0) if m else s[:200]
