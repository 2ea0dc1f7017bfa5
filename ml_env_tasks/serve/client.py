"""The host side's HTTP to a scoring container: readiness polls and smoke-test requests.

Plain ``http.client`` to ``127.0.0.1:<port>`` (the only place a service listens): no requests
import on the way to the first request. The answer is read bounded — the scoring server runs
the user's code, and its answer goes into reports.
"""

from __future__ import annotations

import http.client
from urllib.parse import urlsplit

__all__ = ["Answer", "request", "MAX_ANSWER"]

MAX_ANSWER = 16 * 2**20


class Answer:
    def __init__(self, status: int, body: bytes, content_type: str) -> None:
        self.status = status
        self.body = body
        self.content_type = content_type

    @property
    def text(self) -> str:
        charset = "utf-8"
        for part in self.content_type.split(";")[1:]:
            k, _, v = part.strip().partition("=")
            if k.lower() == "charset" and v:
                charset = v.strip('"')
        try:
            return self.body.decode(charset, errors="replace")
        except LookupError:
            return self.body.decode("utf-8", errors="replace")


def request(method: str, url: str, *, body: bytes | None = None, headers: dict[str, str] | None = None,
            timeout: float = 10.0) -> Answer:  # fmt: skip
    """One request; OSError / http.client.HTTPException when there is no answer. A body over
    MAX_ANSWER is cut (and said to be)."""
    u = urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname or "127.0.0.1", u.port or 80, timeout=timeout)
    try:
        conn.request(method, u.path or "/", body=body, headers=headers or {})
        r = conn.getresponse()
        data = r.read(MAX_ANSWER + 1)
        if len(data) > MAX_ANSWER:
            data = data[:MAX_ANSWER] + b"... (answer cut at 16 MiB)"
        return Answer(r.status, data, r.getheader("Content-Type") or "")
    finally:
        conn.close()
