"""File digests: streamed in fixed memory, remembered by (path, size, mtime, inode).

A 1 GB wheel is hashed once at disk speed with a 1 MiB buffer; later builds find its digest in
the user cache (one small file per key) as long as the file's size, modification time, inode and
device are unchanged — the same rule ``make`` and ``git`` trust. Any doubt means hashing again.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

__all__ = ["file_sha256", "stream_sha256", "cache_dir", "counted", "is_digest", "BUFFER"]

BUFFER = 1 << 20
RACY_SECONDS = 2.0


def is_digest(v: object) -> bool:
    """A sha256 digest as registries write them (``sha256:`` and 64 lower-case hex digits); anything
    else read from a registry or a record is not one."""
    return (
        isinstance(v, str) and len(v) == 71 and v.startswith("sha256:") and all(c in "0123456789abcdef" for c in v[7:])
    )


def cache_dir() -> Path:
    """The user cache folder of ml-env (``$XDG_CACHE_HOME/ml-env``, ``~/.cache/ml-env``)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "ml-env"


def stream_sha256(f: io.BufferedIOBase) -> str:
    """sha256 hex of an open binary file, read in fixed-size chunks."""
    h = hashlib.sha256()
    buf = bytearray(BUFFER)
    view = memoryview(buf)
    while True:
        n = f.readinto(buf)
        if not n:
            break
        h.update(view[:n])
    return h.hexdigest()


def file_sha256(path: Path, *, use_cache: bool = True) -> str:
    """sha256 hex of a file's bytes; cached under the user cache folder by its identity."""
    st = path.stat()
    key = hashlib.sha256(
        f"{path.resolve()}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ino}\0{st.st_dev}".encode()
    ).hexdigest()
    entry = cache_dir() / "digests" / key[:2] / key
    if use_cache:
        with contextlib.suppress(OSError):
            got = entry.read_text().strip()
            if len(got) == 64:
                return got
    with open(path, "rb") as f:
        digest = stream_sha256(f)
    # a file modified in the last seconds could change again within the same timestamp tick
    # ("racy git"): its digest is not remembered
    if use_cache and time.time() - st.st_mtime > RACY_SECONDS:
        with contextlib.suppress(OSError):
            entry.parent.mkdir(parents=True, exist_ok=True)
            tmp = entry.with_name(f".{key}.{os.getpid()}")
            tmp.write_text(digest)
            os.replace(tmp, entry)
    return digest


def counted(chunks: Iterator[bytes], sent: list[int], on_chunk: Callable[[int], None] | None = None) -> Iterator[bytes]:
    """The chunks as they go, their total kept in ``sent[0]`` (and each size told to ``on_chunk``):
    a stream measured without being held."""
    for chunk in chunks:
        sent[0] += len(chunk)
        if on_chunk is not None:
            on_chunk(len(chunk))
        yield chunk
