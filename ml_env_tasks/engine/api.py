"""The Docker Engine API, spoken over ``http.client`` on the command's endpoint.

Containers (training runs, scoring services) are a dozen Engine API calls. docker-py makes them
through requests, whose import alone (~0.3 s on a CI runner) costs more than a container start;
a run's overhead over ``docker run`` could not get under 1.3x with it. The calls are few and
documented (https://docs.docker.com/reference/api/engine/), so they are made here directly:

- a ``unix://`` endpoint (the local engine) is a unix-socket connection;
- any other endpoint (``tcp://`` with TLS, ``ssh://``, a named context) goes through
  ``docker system dial-stdio``: the docker CLI connects exactly as it would for itself (its
  context store, TLS material, ssh) and relays the bytes over a socket pair, the way buildx and
  docker-py's ssh client do. No TLS or ssh handling is written here.

Paths are unversioned (the engine answers at its own API version). Every response body read
whole is bounded; streams (logs, pulls) are read in bounded pieces. Error text from the engine
is bounded and made printable before it reaches a message.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode

if TYPE_CHECKING:
    from .context import Endpoint

__all__ = ["EngineAPI", "EngineAPIError", "NotFound", "MAX_BODY"]

MAX_BODY = 64 * 2**20  # an inspect or a container list; a larger answer is not one
DEFAULT_TIMEOUT = 300.0
_CHUNK = 64 * 1024


class EngineAPIError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class NotFound(EngineAPIError):
    """404: no such container or image."""


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float | None) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        try:
            s.connect(self._path)
        except OSError:
            s.close()
            raise
        self.sock = s


class _CLIConnection(http.client.HTTPConnection):
    """HTTP over ``docker [--context NAME] system dial-stdio``: the CLI's own connection."""

    def __init__(self, cli_args: list[str], timeout: float | None) -> None:
        super().__init__("localhost", timeout=timeout)
        self._cli_args = cli_args
        self._proc: Any = None

    def connect(self) -> None:
        import subprocess

        ours, theirs = socket.socketpair()
        try:
            self._proc = subprocess.Popen(
                ["docker", *self._cli_args, "system", "dial-stdio"],
                stdin=theirs.fileno(), stdout=theirs.fileno(), stderr=subprocess.DEVNULL, close_fds=True,
            )  # fmt: skip
        except OSError:
            ours.close()
            raise
        finally:
            theirs.close()
        ours.settimeout(self.timeout)
        self.sock = ours

    def close(self) -> None:
        super().close()
        if self._proc is not None:
            with contextlib.suppress(Exception):
                self._proc.terminate()
                self._proc.wait(5)
            self._proc = None


def _message(status: int, body: bytes) -> str:
    from ..safe.grammar import bounded, printable

    try:
        msg = json.loads(body).get("message")
    except (ValueError, AttributeError):
        msg = None
    if not isinstance(msg, str) or not msg:
        msg = body[:300].decode(errors="replace").strip() or f"HTTP {status}"
    return bounded(printable(msg, 500), 500)


class EngineAPI:
    """One endpoint's Engine API. A connection per call: calls may come from several threads
    (a timer stopping a run while its log is followed)."""

    def __init__(self, endpoint: Endpoint, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.endpoint = endpoint
        self.timeout = timeout

    def _connection(self, timeout: float | None) -> http.client.HTTPConnection:
        host = self.endpoint.host
        if host.startswith("unix://"):
            return _UnixConnection(host[len("unix://") :], timeout)
        return _CLIConnection(self.endpoint.cli_args(), timeout)

    @staticmethod
    def path(template: str, *parts: str, query: Mapping[str, Any] | None = None) -> str:
        """``template`` with each ``{}`` filled by a quoted part (an id or an image reference,
        never able to add a path segment or a query), and the query encoded."""
        p = template.format(*(quote(x, safe="/:@") for x in parts))
        q = {k: (json.dumps(v) if isinstance(v, dict) else str(v)) for k, v in (query or {}).items() if v is not None}
        return p + ("?" + urlencode(q) if q else "")

    @contextlib.contextmanager
    def open(
        self,
        method: str,
        path: str,
        *,
        body: bytes | Iterable[bytes] | None = None,
        json_body: Any = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = DEFAULT_TIMEOUT,
    ) -> Iterator[http.client.HTTPResponse]:
        """The response of one call, for reading as a stream; a status >= 400 raises."""
        h = {"Host": "docker", **(headers or {})}
        if json_body is not None:
            body = json.dumps(json_body).encode()
            h["Content-Type"] = "application/json"
        conn = self._connection(timeout)
        try:
            try:
                conn.request(
                    method, path, body=body, headers=h, encode_chunked=body is not None and not isinstance(body, bytes)
                )
                resp = conn.getresponse()
            except (OSError, http.client.HTTPException) as e:
                from ..errors import EngineError

                raise EngineError(
                    f"the Docker engine ({self.endpoint.describe()}) is not reachable",
                    hint="start it, or run `nox -s lab`", details=f"{type(e).__name__}: {e}"[:500],
                ) from None  # fmt: skip
            if resp.status >= 400:
                err = resp.read(MAX_BODY)
                cls = NotFound if resp.status == 404 else EngineAPIError
                raise cls(resp.status, _message(resp.status, err))
            yield resp
        finally:
            conn.close()

    def call(self, method: str, path: str, **kw: Any) -> Any:
        """One call whose answer is read whole (bounded): parsed JSON, or None when empty."""
        with self.open(method, path, **kw) as resp:
            data = resp.read(MAX_BODY + 1)
        if len(data) > MAX_BODY:
            raise EngineAPIError(200, f"the engine's answer to {method} {path.split('?')[0]} is too large")
        if not data.strip():
            return None
        try:
            return json.loads(data)
        except ValueError:
            raise EngineAPIError(200, f"the engine's answer to {method} {path.split('?')[0]} is not JSON") from None

    def json_lines(self, method: str, path: str, **kw: Any) -> Iterator[dict[str, Any]]:
        """A stream of JSON messages (a pull's progress); a message with an error raises."""
        with self.open(method, path, **kw) as resp:
            buf = b""
            while chunk := resp.read1(_CHUNK):
                buf += chunk
                if len(buf) > MAX_BODY:
                    raise EngineAPIError(200, "a progress message from the engine is too large")
                *lines, buf = buf.split(b"\n")
                for line in lines:
                    if line.strip():
                        msg = json.loads(line)
                        if isinstance(msg, dict) and msg.get("error"):
                            raise EngineAPIError(500, _message(500, json.dumps({"message": msg["error"]}).encode()))
                        if isinstance(msg, dict):
                            yield msg

    def output(self, cid: str, *, follow: bool, tail: str = "all") -> Iterator[bytes]:
        """A container's stdout and stderr as they come (``follow``) or as they are, in bounded
        pieces: the multiplexed stream's 8-byte frame headers taken off, a raw stream passed."""
        path = self.path(
            "/containers/{}/logs", cid, query={"follow": int(follow), "stdout": 1, "stderr": 1, "tail": tail}
        )
        with self.open("GET", path, timeout=None if follow else self.timeout) as resp:
            # containers made here never have a TTY: the stream is always multiplexed (engines
            # before API 1.42 label it raw-stream all the same)
            while True:
                head = _read_exactly(resp, 8)
                if len(head) < 8:
                    return
                size = int.from_bytes(head[4:8], "big")
                while size > 0:
                    piece = resp.read(min(size, _CHUNK))
                    if not piece:
                        return
                    size -= len(piece)
                    yield piece


def _read_exactly(resp: http.client.HTTPResponse, n: int) -> bytes:
    out = b""
    while len(out) < n:
        got = resp.read(n - len(out))
        if not got:
            break
        out += got
    return out
