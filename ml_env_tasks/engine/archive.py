"""Archives from an engine (``GET /containers/{id}/archive``), untrusted, into a local folder.

What a container wrote is the container's to choose: names, links, sizes, modes. The tar is read
as a stream (never held whole), every member must sit under the one folder asked for, and it is
written by the one extraction for untrusted tars (``safetar``): plain relative names only,
regular files (sparse ones stay sparse and count their full length), folders, hard links to a
file already written, and symlinks whose target, resolved on disk once everything is written,
stays inside ``dest``; no device, FIFO, setuid or setgid bit, nothing written through a link.
The total size and the number of members are bounded. Nothing is written outside ``dest``.
"""

from __future__ import annotations

import os
import tarfile
from pathlib import Path
from typing import IO

from ..errors import EngineError
from ..safe.grammar import printable
from ..safe.tars import extract

__all__ = ["MAX_ARCHIVE_BYTES", "MAX_ARCHIVE_MEMBERS", "receive_tar"]

MAX_ARCHIVE_BYTES = int(os.environ.get("ML_ENV_MAX_OUTPUT_BYTES", 64 * 2**30))
MAX_ARCHIVE_MEMBERS = 1_000_000
CHUNK = 1 << 20  # read and written a MiB at a time (tarfile's default is 10 KiB records, 16 KiB copies)


def receive_tar(
    stream: IO[bytes],
    top: str,
    dest: Path,
    *,
    what: str,
    max_bytes: int = MAX_ARCHIVE_BYTES,
    max_members: int = MAX_ARCHIVE_MEMBERS,
) -> tuple[int, int]:
    """Extract the tar ``stream`` whose members all sit under the folder ``top`` (the base name
    the engine gives the folder asked for) into ``dest``: ``top/a/b`` becomes ``dest/a/b``.
    Returns (files, bytes). One refused member stops the extraction with an EngineError."""

    def refuse(name: str | None, why: str) -> EngineError:
        if name is None:
            return EngineError(f"{what}: the engine's archive {why}")
        return EngineError(f"{what}: the engine's archive holds {printable(name, 80)!r}: {why}; refused")

    def under_top(name: str) -> str | None:
        name = name.removeprefix("./")
        if name.rstrip("/") == top:  # the folder itself
            return None
        if not name.startswith(top + "/"):
            raise refuse(name, f"outside {top}/")
        return name[len(top) + 1 :]

    dest.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(fileobj=stream, mode="r|", bufsize=CHUNK) as tar:
            got = extract(tar, dest, name=under_top, refuse=refuse, max_bytes=max_bytes, max_members=max_members,
                          hard_links=True)  # fmt: skip
    except tarfile.TarError as e:
        raise refuse(None, f"is not a valid tar ({printable(str(e), 120)})") from None
    return got.files, got.bytes
