"""HTTP to a registry: connections, retries with jittered backoff, auth challenges, bounds.

The registry is untrusted. Every exchange has an overall deadline (``_Watchdog``: the socket is
shut down when it passes), so a registry that drips bytes cannot stall a command that a per-read
socket timeout would let it hold forever; a streamed blob has one per chunk. Credentials go to the registry's own host and, for a Bearer
challenge, to the token realm it names only if that realm is https or plain http on a loopback
address; never across a redirect to another host. Bodies are read with a size bound, and
nothing a registry sends is echoed except an error code and a short, control-character-free
message with every credential masked. ``http.client`` (stdlib), one keep-alive connection per
thread and host; stamina (jittered backoff) is imported on the first retry only.
"""

from __future__ import annotations

import base64
import functools
import http.client
import re
import threading
from collections.abc import Callable, Iterable
from urllib.parse import urlencode, urljoin, urlsplit

from ..errors import RegistryAuthError, RegistryError, RegistryTransient, RegistryUnreachable
from ..safe.grammar import digits, printable
from ..safe.untrusted import json_loads
from .constants import DEADLINE, ERROR_CODE_RE, MAX_REDIRECTS, MAX_SMALL_BODY, MIN_RATE
from .reference import is_loopback
from .wire import Response, short
from .wire import Transient as _Transient
from .wire import Watchdog as _Watchdog
from .wire import origin as _origin

__all__ = ["Response", "Transport", "short"]


class Transport:
    """HTTP to one registry host: tokens per scope, one connection per thread, retries."""

    def __init__(
        self,
        host: str,
        *,
        insecure: bool = False,
        credentials: tuple[str, str] | None | bool = True,
        retries: int = 4,
        backoff: float = 0.25,
        timeout: float = 30.0,
        deadline: float = DEADLINE,
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
        self.deadline = deadline
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

    def _deadline(self, size: int) -> float:
        """Seconds an exchange that may carry ``size`` bytes has, connect to last byte."""
        return self.deadline + size / MIN_RATE

    def _too_slow(self, method: str, url: str, dog: _Watchdog) -> RegistryUnreachable:
        what = printable(urlsplit(url).path, 120)
        return RegistryUnreachable(
            f"registry {self.host} did not complete {method} {what} within {dog.seconds:.0f} s: refused",
            hint="it answers too slowly (a byte at a time?); every request has an overall deadline",
        )

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
            try:
                p = urlsplit(url)
                p.port  # noqa: B018 - a port that is not a number raises here
            except ValueError:
                raise RegistryError(f"registry {self.host} pointed at a URL that does not parse") from None
            if "@" in p.netloc:
                raise RegistryError(f"registry {self.host} pointed at a URL with credentials in it: refused")
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
            streamed_body = body is not None and not isinstance(body, (bytes, bytearray))
            # the deadline covers the whole exchange; for an upload, the answer once its body is sent
            dog = None if streamed_body else _Watchdog(conn, self._deadline(limit))
            try:
                try:
                    if streamed_body:
                        # a streamed body goes chunked, unless its length was given
                        conn.request(method, path, body=body, headers=h, encode_chunked="Content-Length" not in h)
                        dog = _Watchdog(conn, self._deadline(limit))
                    else:
                        conn.request(method, path, body=body, headers=h)
                    resp = conn.getresponse()
                except (OSError, http.client.HTTPException) as e:
                    self._drop(scheme, netloc)
                    if dog is not None and dog.fired:
                        raise self._too_slow(method, url, dog) from None
                    raise _Transient(short(e)) from None
                except BaseException:  # a streamed body that failed (its source broke or did not verify)
                    self._drop(scheme, netloc)
                    raise
                if resp.status in (301, 302, 303, 307, 308) and resp.getheader("Location") and body is None:
                    resp.read(MAX_SMALL_BODY)
                    try:
                        url = urljoin(url, resp.getheader("Location", ""))
                    except ValueError:
                        raise RegistryError(f"registry {self.host} pointed at a URL that does not parse") from None
                    if resp.status == 303:
                        method = "GET"
                    continue
                if stream and resp.status == 200 and method != "HEAD":
                    return Response(
                        resp.status, resp.headers, None, raw=resp, conn=conn, chunk_deadline=self._deadline,
                        too_slow=functools.partial(self._too_slow, method, url),
                    )  # fmt: skip
                try:
                    data = resp.read(limit + 1)  # for HEAD this is b"" and frees the connection
                except (OSError, http.client.HTTPException) as e:
                    self._drop(scheme, netloc)
                    if dog is not None and dog.fired:
                        raise self._too_slow(method, url, dog) from None
                    raise _Transient(short(e)) from None
                if dog is not None and dog.fired:  # a body cut short when the socket was shut down
                    self._drop(scheme, netloc)
                    raise self._too_slow(method, url, dog)
                if len(data) > limit:
                    self._drop(scheme, netloc)
                    raise RegistryError(
                        f"registry {self.host} answered {method} with a body over {limit} bytes: refused"
                    )
                if resp.will_close:
                    self._drop(scheme, netloc)
                return Response(resp.status, resp.headers, data)
            finally:
                if dog is not None:
                    dog.cancel()
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
                raise _Transient(f"HTTP {resp.status}", resp.status, float(after) if digits(after) else None)
            return resp

    def error_text(self, resp: Response) -> str:
        """A registry's error, as codes and a short message, masked and bounded (never the raw body)."""
        try:
            doc = json_loads(resp.body[:MAX_SMALL_BODY], error=RegistryError, file=None)
            errs = doc.get("errors") if isinstance(doc, dict) else None
            if isinstance(errs, list) and errs:
                parts = []
                for e in errs[:3]:
                    code = e.get("code") if isinstance(e, dict) else None
                    code = code if isinstance(code, str) and ERROR_CODE_RE.fullmatch(code) else "ERROR"
                    msg = e.get("message") if isinstance(e, dict) else None
                    parts.append(f"{code}: {self._mask(str(msg))[:120]}" if msg else code)
                return "; ".join(parts)
        except (ValueError, AttributeError, RegistryError):
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
            try:
                p = urlsplit(realm)
                p.port  # noqa: B018
            except ValueError:
                raise RegistryError(f"registry {self.host} sent a Bearer challenge without a usable realm") from None
            if not realm or "@" in p.netloc or p.scheme not in ("http", "https") or not p.hostname:
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
        dog = _Watchdog(conn, self._deadline(MAX_SMALL_BODY))
        try:
            conn.request(method, (p.path or "/") + (f"?{p.query}" if p.query else ""), body=body, headers=headers)
            r = conn.getresponse()
            data = r.read(MAX_SMALL_BODY + 1)
        except (OSError, http.client.HTTPException) as e:
            self._drop(p.scheme, p.netloc)
            if dog.fired:
                raise self._too_slow(method, f"token service of {self.host}", dog) from None
            raise RegistryUnreachable(f"token service of {self.host} is unreachable: {short(e)}") from None
        finally:
            dog.cancel()
        if dog.fired:
            self._drop(p.scheme, p.netloc)
            raise self._too_slow(method, f"token service of {self.host}", dog)
        if r.status in (401, 403):
            raise RegistryAuthError(f"token service of {self.host} refused the credentials ({r.status})")
        if r.status != 200 or len(data) > MAX_SMALL_BODY:
            raise RegistryError(f"token service of {self.host} answered {r.status}")
        try:
            doc = json_loads(data, error=RegistryError, file=f"token service of {self.host}")
            token = doc.get("token") or doc.get("access_token")
        except (ValueError, AttributeError):
            token = None
        if not isinstance(token, str) or not token or not token.isprintable():
            raise RegistryError(f"token service of {self.host} returned no usable token")
        return token
