"""One exchange with a registry on the wire: the overall deadline (``Watchdog`` shuts the socket
down when it passes, so a registry that drips bytes cannot hold a command), the response read
with a bound, and the short form of a transport error. ``transport`` does the rest (connections,
retries, auth)."""

from __future__ import annotations

import http.client
import math
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

from ..errors import RegistryError
from ..safe.grammar import printable
from ..safe.untrusted import json_loads
from .constants import CHUNK

__all__ = ["Response", "Watchdog", "Transient", "origin", "short"]


class Watchdog:
    """Shuts a connection's socket down when ``seconds`` have passed, unless cancelled first: the
    read blocked on it returns, and ``fired`` says why. A stream that keeps moving ``extend``s its
    deadline per chunk: one watching thread per exchange, never one per chunk (a thread started per
    64 KiB chunk cost a gigabyte's promotion seconds). (A TCP connect still under way has no
    socket yet; it is bounded by its own timeout, and the watchdog looks again shortly.)"""

    def __init__(self, conn: http.client.HTTPConnection, seconds: float) -> None:
        self.seconds = seconds
        self.fired = False
        self._conn = conn
        self._deadline = time.monotonic() + seconds
        self._done = threading.Event()
        self._lock = threading.Lock()  # once cancel() returns, the socket is never shut down
        threading.Thread(target=self._watch, daemon=True).start()

    def extend(self, seconds: float) -> None:
        """The deadline is ``seconds`` from now (the next chunk's)."""
        self.seconds = seconds
        self._deadline = time.monotonic() + seconds

    def pause(self) -> None:
        """No deadline until the next ``extend`` (while the stream's reader works on a chunk)."""
        self._deadline = math.inf

    def _watch(self) -> None:
        while not self._done.wait(min(3600.0, max(0.0, self._deadline - time.monotonic()))):
            if time.monotonic() < self._deadline:
                continue  # extended meanwhile
            with self._lock:
                if self._done.is_set():
                    return
                self.fired = True
                sock = self._conn.sock
                if sock is None:
                    self._deadline = time.monotonic() + 0.5
                    continue
                try:  # the plain socket's shutdown, also under TLS (SSLSocket's would drop its state mid-read)
                    socket.socket.shutdown(sock, socket.SHUT_RDWR)
                except OSError:
                    pass
                return

    def cancel(self) -> None:
        with self._lock:
            self._done.set()


class Response:
    """A registry's answer: status, headers, and the body read (bounded) or left to stream."""

    def __init__(
        self,
        status: int,
        headers: http.client.HTTPMessage,
        body: bytes | None,
        raw: Any = None,
        *,
        conn: http.client.HTTPConnection | None = None,
        chunk_deadline: Callable[[int], float] | None = None,
        too_slow: Callable[[Watchdog], RegistryError] | None = None,
    ) -> None:
        self.status = status
        self.headers = headers
        self.body = body if body is not None else b""
        self._raw = raw  # an unread http.client.HTTPResponse, for streaming
        self._conn = conn  # its connection, which the per-chunk deadline shuts down
        self._chunk_deadline = chunk_deadline
        self._too_slow = too_slow

    @property
    def status_code(self) -> int:
        return self.status

    def header(self, name: str, default: str = "") -> str:
        return self.headers.get(name, default) or default

    def json(self, what: str = "the registry's answer") -> Any:
        """The body as JSON, its nesting bounded (RegistryError naming ``what``; ValueError when
        it is not JSON)."""
        return json_loads(self.body, error=RegistryError, file=what)

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")

    def iter_chunks(self, size: int = CHUNK) -> Iterator[bytes]:
        raw = self._raw
        if raw is None:
            yield self.body
            return
        dog = None
        if self._conn is not None and self._chunk_deadline is not None:
            dog = Watchdog(self._conn, self._chunk_deadline(size))
        try:
            while True:
                if dog is not None:
                    dog.extend(self._chunk_deadline(size) if self._chunk_deadline else dog.seconds)
                try:
                    chunk = raw.read(size)
                except (OSError, http.client.HTTPException):
                    if dog is not None and dog.fired and self._too_slow is not None:
                        raise self._too_slow(dog) from None
                    raise
                if dog is not None and dog.fired and self._too_slow is not None:
                    raise self._too_slow(dog)
                if not chunk:
                    return
                if dog is not None:
                    dog.pause()  # the deadline is the registry's, not the time the reader takes
                yield chunk
        finally:
            if dog is not None:
                dog.cancel()
            raw.close()

    def close(self) -> None:
        if self._raw is not None:
            self._raw.close()


class Transient(Exception):
    """One attempt failed in a way worth retrying; ``retry_after`` from the registry, if any."""

    def __init__(self, what: str, status: int | None = None, retry_after: float | None = None) -> None:
        super().__init__(what)
        self.what = what
        self.status = status
        self.retry_after = retry_after


def origin(url: str) -> tuple[str, str]:
    p = urlsplit(url)
    port = p.port or (443 if p.scheme == "https" else 80)
    return p.scheme, f"{p.hostname}:{port}"


def short(e: BaseException) -> str:
    if isinstance(e, socket.timeout | TimeoutError):
        return "timed out"
    if isinstance(e, ConnectionRefusedError):
        return "Connection refused"
    if isinstance(e, socket.gaierror):
        return "Name or service not known"
    s = str(e) or type(e).__name__
    m = re.search(r"\[Errno -?\d+\] [^'\")]+|Connection refused|timed out|Name or service not known", s)
    return printable(m.group(0) if m else s, 200)
