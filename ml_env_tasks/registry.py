"""OCI distribution client: manifests and blobs, read and written, with auth from the docker config.

Answers are three-valued on purpose: a manifest that exists, one that does not (404), or an
error. An error is never taken for "exists" or "missing": it raises, after bounded retries for
what is transient (connection errors, timeouts, 5xx, 429), spaced with exponential backoff and
random jitter (stamina, loaded on the first retry only) so parallel CI jobs do not retry a 429
in lockstep; a ``Retry-After`` is honoured up to 10 s.

The registry is untrusted. Credentials go to the registry's own host and, for a Bearer
challenge, to the token realm it names only if that realm is https or plain http on a loopback
address; never across a redirect to another host. A manifest fetched by digest must hash to
it, a blob streamed for a copy is hashed as it passes and refused if it does not match, bodies
are read with a size bound, and nothing a registry sends is echoed except an error code and a
short, control-character-free message with every credential masked.

Transport: ``http.client`` (stdlib) with one keep-alive connection per thread and host; the
"already built?" HEAD costs a few milliseconds and no heavy import. Plain HTTP only for
loopback registries unless ``insecure``.

Auth: ``auths`` entries (``auth``, ``username``/``password``, ``identitytoken``), ``credHelpers``
and ``credsStore`` of ``$DOCKER_CONFIG/config.json`` (default ``~/.docker/config.json``), or
``ML_ENV_REGISTRY_USERNAME``/``ML_ENV_REGISTRY_PASSWORD``; read only when a registry asks.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import re
import socket
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urljoin, urlsplit

from .errors import (
    BlobIntegrityError,
    RegistryAuthError,
    RegistryError,
    RegistryTransient,
    RegistryUnreachable,
    UsageError,
)
from .grammar import printable
from .refs import DOCKER_HUB, IMAGE_RE

__all__ = [
    "Reference",
    "RegistryClient",
    "ManifestInfo",
    "Response",
    "parse_ref",
    "check_registry_host",
    "is_loopback",
    "MANIFEST_TYPES",
]

MANIFEST_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
)
MAX_MANIFEST = 4 * 2**20  # the OCI distribution spec's minimum a registry must accept
MAX_SMALL_BODY = 1 * 2**20  # tokens, error bodies, tag lists, referrers
MAX_REDIRECTS = 5
CHUNK = 4 << 20
_HOST = re.compile(r"[A-Za-z0-9.-]+(:[0-9]{1,5})?|\[[0-9A-Fa-f:]+\](:[0-9]{1,5})?|localhost(:[0-9]{1,5})?", re.ASCII)
_ERROR_CODE = re.compile(r"[A-Z_]{1,64}", re.ASCII)


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

    def pinned(self, digest: str) -> str:
        """``host/repository@digest``: the one way an image is named once its digest is known."""
        return f"{self.host}/{self.repository}@{digest}"


def parse_ref(ref: str) -> Reference:
    m = IMAGE_RE.fullmatch(ref) if isinstance(ref, str) and len(ref) <= 512 else None
    if not m:
        raise UsageError(
            f"{printable(ref, 100)!r} is not a valid image reference", hint="e.g. registry:5000/team/image:tag"
        )
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


def check_registry_host(value: str, what: str = "--registry") -> str:
    """A registry is ``host[:port]``: no scheme, no path, no credentials (and never echoed if it has them)."""
    if "@" in value or "://" in value:
        raise UsageError(
            f"{what} must be host[:port] without a scheme or credentials",
            hint="log in with `docker login` (or ML_ENV_REGISTRY_USERNAME/PASSWORD) instead",
        )
    if not _HOST.fullmatch(value):
        raise UsageError(f"{what} {printable(value, 80)!r} is not a registry host[:port]")
    return value


def is_loopback(host: str) -> bool:
    name = host.rsplit(":", 1)[0] if not host.startswith("[") else host.split("]")[0] + "]"
    return name in ("localhost", "[::1]") or name.startswith("127.")


@dataclass(frozen=True)
class ManifestInfo:
    digest: str
    media_type: str
    size: int


# --- transport ----------------------------------------------------------------------------


class Response:
    """A registry's answer: status, headers, and the body read (bounded) or left to stream."""

    def __init__(self, status: int, headers: http.client.HTTPMessage, body: bytes | None, raw: Any = None) -> None:
        self.status = status
        self.headers = headers
        self.body = body if body is not None else b""
        self._raw = raw  # an unread http.client.HTTPResponse, for streaming

    @property
    def status_code(self) -> int:
        return self.status

    def header(self, name: str, default: str = "") -> str:
        return self.headers.get(name, default) or default

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")

    def iter_chunks(self, size: int = CHUNK) -> Iterator[bytes]:
        raw = self._raw
        if raw is None:
            yield self.body
            return
        try:
            while chunk := raw.read(size):
                yield chunk
        finally:
            raw.close()

    def close(self) -> None:
        if self._raw is not None:
            self._raw.close()


class _Transient(Exception):
    """One attempt failed in a way worth retrying; ``retry_after`` from the registry, if any."""

    def __init__(self, what: str, status: int | None = None, retry_after: float | None = None) -> None:
        super().__init__(what)
        self.what = what
        self.status = status
        self.retry_after = retry_after


def _origin(url: str) -> tuple[str, str]:
    p = urlsplit(url)
    port = p.port or (443 if p.scheme == "https" else 80)
    return p.scheme, f"{p.hostname}:{port}"


class RegistryClient:
    """One registry host. Keeps tokens per scope and one connection per thread."""

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
        self._creds_given = credentials
        self._creds: tuple[str, str] | None = None if credentials is True else (credentials or None)
        self._creds_loaded = credentials is not True
        self.retries = retries
        self.backoff = backoff
        self.timeout = timeout
        self._auth: dict[str, str] = {}  # scope -> Authorization header value
        self._lock = threading.Lock()
        self._local = threading.local()

    # credentials, read only when asked for
    def credentials(self) -> tuple[str, str] | None:
        if not self._creds_loaded:
            from .credentials import credentials_for

            self._creds = credentials_for(self.host)
            self._creds_loaded = True
        return self._creds

    def secrets(self) -> list[str]:
        """What must never appear in a message: the password and every Authorization value."""
        c = self._creds
        out = [c[1]] if c and c[1] else []
        with self._lock:
            out += list(self._auth.values()) + [v.split(" ", 1)[-1] for v in self._auth.values()]
        return out

    def _mask(self, text: str) -> str:
        for s in sorted(self.secrets(), key=len, reverse=True):
            if len(s) >= 4:
                text = text.replace(s, "***")
        return printable(text, 300)

    # connections
    def _conn(self, scheme: str, netloc: str, *, fresh: bool = False) -> http.client.HTTPConnection:
        """This thread's keep-alive connection to ``netloc``; ``fresh`` for one of its own (a
        streamed response holds its connection until it is read)."""
        pool: dict[tuple[str, str], http.client.HTTPConnection] = self._local.__dict__.setdefault("pool", {})
        conn = None if fresh else pool.get((scheme, netloc))
        if conn is None:
            if scheme == "https":
                import ssl

                conn = http.client.HTTPSConnection(netloc, timeout=self.timeout, context=ssl.create_default_context())
            else:
                conn = http.client.HTTPConnection(netloc, timeout=self.timeout)
            if not fresh:
                pool[(scheme, netloc)] = conn
        return conn

    def _drop(self, scheme: str, netloc: str) -> None:
        pool = self._local.__dict__.get("pool", {})
        conn = pool.pop((scheme, netloc), None)
        if conn is not None:
            conn.close()

    def close(self) -> None:
        for conn in self._local.__dict__.get("pool", {}).values():
            conn.close()
        self._local.__dict__["pool"] = {}

    def _send(
        self,
        method: str,
        url: str,
        headers: dict[str, str],
        body: bytes | Iterable[bytes] | None,
        stream: bool,
        limit: int,
    ) -> Response:
        """One HTTP exchange, following redirects for requests without a streamed body."""
        for _ in range(MAX_REDIRECTS + 1):
            p = urlsplit(url)
            if p.scheme not in ("http", "https") or not p.hostname:
                raise RegistryError(f"registry {self.host} pointed at a URL that is not http(s)")
            if p.scheme == "http" and not (is_loopback(p.netloc) or (self.scheme == "http" and p.netloc == self.host)):
                raise RegistryError(f"registry {self.host} redirected to plain http on another host: refused")
            scheme, netloc = p.scheme, p.netloc
            path = (p.path or "/") + (f"?{p.query}" if p.query else "")
            h = dict(headers)
            if _origin(url) != _origin(self.base):
                h.pop("Authorization", None)  # credentials never leave the registry's own host
            conn = self._conn(scheme, netloc, fresh=stream)
            try:
                if body is not None and not isinstance(body, (bytes, bytearray)):
                    conn.request(method, path, body=body, headers=h, encode_chunked=True)
                else:
                    conn.request(method, path, body=body, headers=h)
                resp = conn.getresponse()
            except (OSError, http.client.HTTPException) as e:
                self._drop(scheme, netloc)
                raise _Transient(_short(e)) from None
            except BaseException:  # a streamed body that failed (its source broke or did not verify)
                self._drop(scheme, netloc)
                raise
            if resp.status in (301, 302, 303, 307, 308) and resp.getheader("Location") and body is None:
                resp.read(MAX_SMALL_BODY)
                url = urljoin(url, resp.getheader("Location", ""))
                if resp.status == 303:
                    method = "GET"
                continue
            if stream and resp.status == 200 and method != "HEAD":
                return Response(resp.status, resp.headers, None, raw=resp)
            try:
                data = resp.read(limit + 1)  # for HEAD this is b"" and frees the connection
            except (OSError, http.client.HTTPException) as e:
                self._drop(scheme, netloc)
                raise _Transient(_short(e)) from None
            if len(data) > limit:
                self._drop(scheme, netloc)
                raise RegistryError(f"registry {self.host} answered {method} with a body over {limit} bytes: refused")
            if resp.will_close:
                self._drop(scheme, netloc)
            return Response(resp.status, resp.headers, data)
        raise RegistryError(f"registry {self.host} redirected more than {MAX_REDIRECTS} times")

    def request(
        self,
        method: str,
        path: str,
        *,
        scope: str,
        ok: tuple[int, ...] = (200,),
        retry: bool = True,
        headers: dict[str, str] | None = None,
        body: bytes | Iterable[bytes] | None = None,
        params: dict[str, str] | None = None,
        stream: bool = False,
        limit: int = MAX_SMALL_BODY,
    ) -> Response:
        """One request with auth and, unless ``retry`` is False (a streamed body cannot be sent
        twice), bounded retries of transient failures with jittered backoff."""
        url = path if path.startswith(("http://", "https://")) else self.base + path
        if params:
            url += ("&" if "?" in url else "?") + urlencode(params)
        base_headers = {"User-Agent": "ml-env-tasks", **(headers or {})}

        def attempt() -> Response:
            return self._attempt(method, url, scope, ok, base_headers, body, stream, limit)

        try:
            return attempt()
        except _Transient as first:
            if not retry or self.retries <= 0:
                raise self._gave_up(first, 1, method, path) from None
            return self._retry(attempt, first, method, path)

    def _retry(self, attempt: Callable[[], Response], first: _Transient, method: str, path: str) -> Response:
        import stamina  # only when something failed: the happy path never pays for it
        import stamina.instrumentation

        # no log records of its own: a retry is ours to report (and the CLI prints one line)
        stamina.instrumentation.set_on_retry_hooks([])

        last = first

        def backoff(e: Exception) -> bool | float:
            if isinstance(e, _Transient):
                return min(e.retry_after, 10.0) if e.retry_after else True
            return False

        n = 0
        try:
            for one in stamina.retry_context(
                on=backoff,
                attempts=self.retries + 1,  # the first attempt, already failed, is replayed as one
                timeout=None,
                wait_initial=self.backoff,
                wait_max=5.0,
                wait_jitter=self.backoff,
            ):
                with one:
                    n += 1
                    if n == 1:
                        raise first  # so stamina waits (jittered, or Retry-After) before the retry
                    return attempt()
        except _Transient as e:
            last = e
        raise self._gave_up(last, n, method, path)

    def _gave_up(self, e: _Transient, attempts: int, method: str, path: str) -> RegistryError:
        if e.status is None:
            return RegistryUnreachable(
                f"registry {self.host} is unreachable after {attempts} attempt(s): {e.what}",
                hint="is it running, and is the address right?",
            )
        return RegistryTransient(
            f"registry {self.host} answered {e.status} to {method} {path} after {attempts} attempt(s)"
        )

    def _attempt(
        self,
        method: str,
        url: str,
        scope: str,
        ok: tuple[int, ...],
        headers: dict[str, str],
        body: bytes | Iterable[bytes] | None,
        stream: bool,
        limit: int,
    ) -> Response:
        authed_once = False
        while True:
            h = dict(headers)
            with self._lock:
                auth = self._auth.get(scope)
            if auth:
                h["Authorization"] = auth
            resp = self._send(method, url, h, body, stream, limit)
            if resp.status == 401 and not authed_once and (body is None or isinstance(body, (bytes, bytearray))):
                authed_once = True
                self._authenticate(resp, scope)
                continue
            if resp.status in (401, 403):
                creds = self._creds
                who = f"as {creds[0]!r}" if creds and creds[0] != "<token>" else "anonymously"
                raise RegistryAuthError(
                    f"registry {self.host} refused access {who} ({resp.status}) to {scope}",
                    hint="check `docker login` for this registry or ML_ENV_REGISTRY_USERNAME/PASSWORD",
                )
            if resp.status in ok:
                return resp
            if resp.status >= 500 or resp.status == 429:
                resp.close()
                after = resp.header("Retry-After")
                raise _Transient(f"HTTP {resp.status}", resp.status, float(after) if after.isdigit() else None)
            return resp

    def error_text(self, resp: Response) -> str:
        """A registry's error, as codes and a short message, masked and bounded (never the raw body)."""
        try:
            doc = json.loads(resp.body[:MAX_SMALL_BODY])
            errs = doc.get("errors") if isinstance(doc, dict) else None
            if isinstance(errs, list) and errs:
                parts = []
                for e in errs[:3]:
                    code = e.get("code") if isinstance(e, dict) else None
                    code = code if isinstance(code, str) and _ERROR_CODE.fullmatch(code) else "ERROR"
                    msg = e.get("message") if isinstance(e, dict) else None
                    parts.append(f"{code}: {self._mask(str(msg))[:120]}" if msg else code)
                return "; ".join(parts)
        except (ValueError, AttributeError):
            pass
        return f"HTTP {resp.status}"

    def _authenticate(self, resp: Response, scope: str) -> None:
        challenge = resp.header("WWW-Authenticate")
        scheme, _, params_s = challenge.strip().partition(" ")
        params = dict(re.findall(r'(\w+)="([^"]*)"', params_s))
        if scheme.lower() == "basic":
            creds = self.credentials()
            if not creds or creds[0] == "<token>":
                return  # the retry gets 401 again and raises a clear error
            token = base64.b64encode(f"{creds[0]}:{creds[1]}".encode()).decode()
            with self._lock:
                self._auth[scope] = f"Basic {token}"
        elif scheme.lower() == "bearer":
            realm = params.get("realm", "")
            p = urlsplit(realm)
            if not realm or p.scheme not in ("http", "https") or not p.hostname:
                raise RegistryError(f"registry {self.host} sent a Bearer challenge without a usable realm")
            if p.scheme == "http" and not is_loopback(p.netloc):
                raise RegistryAuthError(
                    f"registry {self.host} names a token service over plain http on {printable(p.netloc, 80)}: "
                    "credentials are only sent to an https realm (or a loopback one)"
                )
            token = self._fetch_token(realm, params.get("service", ""), scope)
            with self._lock:
                self._auth[scope] = f"Bearer {token}"
        else:
            raise RegistryError(f"registry {self.host} asks for unsupported auth {printable(scheme, 20)!r}")

    def _fetch_token(self, realm: str, service: str, scope: str) -> str:
        creds = self.credentials()
        headers = {"User-Agent": "ml-env-tasks"}
        if creds and creds[0] == "<token>":
            # an identity token is an OAuth2 refresh token: POST it (distribution's token spec)
            form = [("grant_type", "refresh_token"), ("refresh_token", creds[1]), ("service", service),
                    ("client_id", "ml-env-tasks")] + [("scope", s) for s in scope.split()]  # fmt: skip
            body = urlencode(form).encode()
            method, url = "POST", realm
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        else:
            q = urlencode([("service", service)] + [("scope", s) for s in scope.split()])
            method, url, body = "GET", realm + ("&" if "?" in realm else "?") + q, None
            if creds:
                headers["Authorization"] = "Basic " + base64.b64encode(f"{creds[0]}:{creds[1]}".encode()).decode()
        p = urlsplit(url)
        conn = self._conn(p.scheme, p.netloc)
        try:
            conn.request(method, (p.path or "/") + (f"?{p.query}" if p.query else ""), body=body, headers=headers)
            r = conn.getresponse()
            data = r.read(MAX_SMALL_BODY + 1)
        except (OSError, http.client.HTTPException) as e:
            self._drop(p.scheme, p.netloc)
            raise RegistryUnreachable(f"token service of {self.host} is unreachable: {_short(e)}") from None
        if r.status in (401, 403):
            raise RegistryAuthError(f"token service of {self.host} refused the credentials ({r.status})")
        if r.status != 200 or len(data) > MAX_SMALL_BODY:
            raise RegistryError(f"token service of {self.host} answered {r.status}")
        try:
            doc = json.loads(data)
            token = doc.get("token") or doc.get("access_token")
        except (ValueError, AttributeError):
            token = None
        if not isinstance(token, str) or not token or not token.isprintable():
            raise RegistryError(f"token service of {self.host} returned no usable token")
        return token

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
        """The manifest's digest if it exists, None if the registry says it does not; raises otherwise."""
        r = self._manifest("HEAD", repository, reference)
        if r.status == 404:
            return None
        digest = r.header("Docker-Content-Digest")
        if not re.fullmatch(r"sha256:[0-9a-f]{64}", digest):
            # some registries omit it on HEAD: read the manifest to know its digest
            got = self.get_manifest(repository, reference)
            return got[0] if got else None
        if reference.startswith("sha256:") and digest != reference:
            raise RegistryError(f"registry {self.host} says {repository}@{reference[:19]} is {digest[:19]}")
        return ManifestInfo(digest, r.header("Content-Type"), int(r.header("Content-Length", "0") or 0))

    def get_manifest(self, repository: str, reference: str) -> tuple[ManifestInfo, bytes] | None:
        r = self._manifest("GET", repository, reference)
        if r.status == 404:
            return None
        body = r.body
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        if reference.startswith("sha256:") and digest != reference:
            raise RegistryError(
                f"registry {self.host} served {repository}@{reference[:19]} with content whose digest is {digest[:19]}"
            )
        return ManifestInfo(digest, r.header("Content-Type"), len(body)), body

    def get_blob(self, repository: str, digest: str, limit: int = MAX_MANIFEST) -> bytes:
        """A small blob (an image config), read whole and checked against its digest."""
        r = self.request(
            "GET", f"/v2/{repository}/blobs/{digest}", scope=f"repository:{repository}:pull", ok=(200, 404), limit=limit
        )
        if r.status == 404:
            raise RegistryError(f"blob {digest[:19]} not found in {self.host}/{repository}")
        if "sha256:" + hashlib.sha256(r.body).hexdigest() != digest:
            raise BlobIntegrityError(f"blob {digest[:19]} from {self.host}/{repository} does not match its digest")
        return r.body

    def image_config(self, repository: str, reference: str) -> dict[str, Any] | None:
        """The image config of a manifest (for an index: its first non-attestation manifest)."""
        got = self.get_manifest(repository, reference)
        if got is None:
            return None
        doc = _json_object(got[1], f"{self.host}/{repository}@{got[0].digest[:19]}")
        if "manifests" in doc:
            for m in doc.get("manifests") or []:
                plat = m.get("platform") or {} if isinstance(m, dict) else {}
                if isinstance(m, dict) and plat.get("os") != "unknown" and _is_digest(m.get("digest")):
                    return self.image_config(repository, m["digest"])
            return None
        cfg = doc.get("config")
        if not isinstance(cfg, dict) or not _is_digest(cfg.get("digest")):
            raise RegistryError(f"{self.host}/{repository}@{got[0].digest[:19]} is not an image manifest (no config)")
        return _json_object(self.get_blob(repository, cfg["digest"]), f"config {cfg['digest'][:19]}")

    # --- the write side, for promotion -----------------------------------------------------

    def blob_exists(self, repository: str, digest: str) -> bool:
        r = self.request(
            "HEAD", f"/v2/{repository}/blobs/{digest}", scope=f"repository:{repository}:pull", ok=(200, 404)
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

    def upload_stream(self, repository: str, digest: str, chunks: Iterable[bytes]) -> None:
        """Upload a blob from an iterator of byte chunks (PATCH streamed, PUT to finish): no whole
        blob is held in memory. The registry checks the bytes against ``digest`` when the upload
        is finished; a mismatch (a truncated or corrupted stream) is a BlobIntegrityError."""
        r = self.request("POST", f"/v2/{repository}/blobs/uploads/", scope=_push_scope(repository), ok=(202,), body=b"")
        if r.status != 202 or not r.header("Location"):
            raise RegistryError(f"registry {self.host} did not open an upload in {repository} ({r.status})")
        location = self._location(r)
        r = self.request(
            "PATCH",
            location,
            scope=_push_scope(repository),
            ok=(202, 204),
            body=chunks,
            headers={"Content-Type": "application/octet-stream"},
            retry=False,
        )
        if r.status not in (202, 204):
            raise RegistryError(f"registry {self.host} answered {r.status} while receiving blob {digest[:19]}")
        location = self._location(r) if r.header("Location") else location
        sep = "&" if "?" in location else "?"
        r = self.request(
            "PUT",
            f"{location}{sep}digest={digest}",
            scope=_push_scope(repository),
            ok=(201, 400),
            body=b"",
            retry=False,
        )
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
                f"the connection to {self.host} broke while reading blob {digest[:19]}: {_short(e)}"
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
        try:
            tags = r.json().get("tags") or []
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
            found = r.json().get("manifests") or []
        except (ValueError, AttributeError):
            return None
        return [m for m in found if isinstance(m, dict) and _is_digest(m.get("digest"))]


def _is_digest(v: Any) -> bool:
    return isinstance(v, str) and re.fullmatch(r"sha256:[0-9a-f]{64}", v) is not None


def _json_object(data: bytes, what: str) -> dict[str, Any]:
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError):
        raise RegistryError(f"{what} is not valid JSON") from None
    if not isinstance(doc, dict):
        raise RegistryError(f"{what} is not a JSON object")
    return doc


def _push_scope(repository: str, extra_pull: str | None = None) -> str:
    scope = f"repository:{repository}:pull,push"
    if extra_pull and extra_pull != repository:
        scope += f" repository:{extra_pull}:pull"
    return scope


def _short(e: BaseException) -> str:
    if isinstance(e, socket.timeout | TimeoutError):
        return "timed out"
    if isinstance(e, ConnectionRefusedError):
        return "Connection refused"
    if isinstance(e, socket.gaierror):
        return "Name or service not known"
    s = str(e) or type(e).__name__
    m = re.search(r"\[Errno -?\d+\] [^'\")]+|Connection refused|timed out|Name or service not known", s)
    return printable(m.group(0) if m else s, 200)
