"""Archives from an engine (``GET /containers/{id}/archive``), untrusted, into a local folder.

What a container wrote is the container's to choose: names, links, sizes. The tar is read as a
stream (never held whole), every member must sit under the one folder asked for, only regular
files, folders and symlinks whose target stays inside that folder are written, tarfile's
``data`` filter refuses absolute names, ``..``, devices and special modes, and the total size
and the number of members are bounded. Nothing is written outside ``dest``.
"""

from __future__ import annotations

import os
import posixpath
import tarfile
from pathlib import Path
from typing import IO

from ..errors import EngineError
from ..grammar import printable

__all__ = ["MAX_ARCHIVE_BYTES", "MAX_ARCHIVE_MEMBERS", "receive_tar"]

MAX_ARCHIVE_BYTES = int(os.environ.get("ML_ENV_MAX_OUTPUT_BYTES", 64 * 2**30))
MAX_ARCHIVE_MEMBERS = 1_000_000
CHUNK = 1 << 20  # read and written a MiB at a time (tarfile's default is 10 KiB records, 16 KiB copies)


def _inside(top: str, name: str) -> bool:
    return name == top or name.startswith(top + "/")


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
    dest.mkdir(parents=True, exist_ok=True)
    root = os.path.realpath(dest)
    files = total = members = 0

    def refuse(name: str, why: str) -> EngineError:
        return EngineError(f"{what}: the engine's archive holds {printable(name, 80)!r}: {why}; nothing more written")

    try:
        with tarfile.open(fileobj=stream, mode="r|", bufsize=CHUNK, copybufsize=CHUNK) as tar:  # type: ignore[call-overload]
            for m in tar:
                members += 1
                if members > max_members:
                    raise EngineError(f"{what}: the engine's archive has over {max_members} entries")
                name = posixpath.normpath(m.name)
                if not _inside(top, name):
                    raise refuse(m.name, f"outside {top}/")
                rel = name[len(top) + 1 :]
                if not rel:  # the folder itself
                    continue
                if not (m.isfile() or m.isdir() or m.issym()):
                    raise refuse(m.name, "not a file, folder or symlink")
                if m.issym():
                    target = posixpath.normpath(posixpath.join(posixpath.dirname(rel), m.linkname))
                    if m.linkname.startswith("/") or target == ".." or target.startswith("../"):
                        raise refuse(m.name, "a symlink out of the folder")
                total += m.size
                if total > max_bytes:
                    raise EngineError(f"{what}: the engine's archive is over {max_bytes / 2**30:.0f} GiB")
                m.name = rel
                try:
                    tar.extract(m, root, filter="data")
                except tarfile.FilterError as e:
                    raise refuse(m.name, type(e).__name__) from None
                files += m.isfile()
    except tarfile.TarError as e:
        raise EngineError(f"{what}: the engine's archive is not a valid tar ({printable(str(e), 120)})") from None
    return files, total
