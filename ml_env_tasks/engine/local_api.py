"""One Engine API question over the local socket, for the fast paths.

A no-op build of an unpushed environment asks the engine one thing: does this image exist, and
what is its id. Through python-on-whales that is a ``docker`` process and pydantic (~0.2 s);
through docker-py it is requests (~0.13 s of imports). The answer is one ``GET
/images/{name}/json`` on the unix socket, as the docker CLI itself sends it. Only a clear answer
is taken here (200 with an id, 404); anything else — no socket, a remote endpoint, an error, an
odd body — returns ``UNKNOWN`` and the caller asks through the full client, which explains
failures properly.
"""

from __future__ import annotations

import http.client
import json
import re
import socket
from typing import Final
from urllib.parse import quote

__all__ = ["UNKNOWN", "image_id"]

UNKNOWN: Final = "?"
_MAX_BODY = 1 << 20  # an image inspect is a few KiB; more is not an answer we take
_TIMEOUT = 5.0
_ID = re.compile(r"sha256:[0-9a-f]{64}", re.ASCII)


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=_TIMEOUT)
        self._path = path

    def connect(self) -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(_TIMEOUT)
        try:
            s.connect(self._path)
        except OSError:
            s.close()
            raise
        self.sock = s


def image_id(host: str, ref: str) -> str | None:
    """The id of image ``ref`` on the engine at ``host`` (``unix://``), None if it has none,
    ``UNKNOWN`` when this path cannot tell."""
    if not host.startswith("unix://"):
        return UNKNOWN
    conn = _UnixConnection(host[len("unix://") :])
    try:
        conn.request("GET", f"/images/{quote(ref, safe='/:@')}/json", headers={"Host": "docker"})
        resp = conn.getresponse()
        body = resp.read(_MAX_BODY + 1)
        if resp.status == 404:
            return None
        if resp.status != 200 or len(body) > _MAX_BODY:
            return UNKNOWN
        got = json.loads(body).get("Id")
    except (OSError, http.client.HTTPException, ValueError, AttributeError):
        return UNKNOWN
    finally:
        conn.close()
    return got if isinstance(got, str) and _ID.fullmatch(got) else UNKNOWN
